"""Classifier KD: a bag-of-embeddings student learns the teacher's `label_probs` (and/or its hard labels).

Students: `static_embedding` (token vectors distilled from the teacher's own encoder,
trainer/static_student.py) or `hashed_bag` (hashed n-grams learned from scratch).

loss = alpha * KL(teacher_T || student_T) * T² + (1 - alpha) * CE(student, label);
alpha = 0 is the hard-label baseline. After training, a calibration temperature is
fitted on held-out rows (NLL of the dataset's labels) and saved with the model. Rows
are held out by lineage (a row with every row derived from it, via parent_id), and the
temperature is fitted on the held-out rows that are not derived (augmented or evolved
copies are not the inputs the model will see), so nothing leaks from training into it.
"""

from __future__ import annotations

import copy
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch

from curation.store import DatasetVersion
from factory.errors import StillhouseError
from factory.teachers.classifier import fit_temperature, length_batches
from trainer.augment import perturbed_copies
from trainer.bag_model import BagClassifier, BagNet
from trainer.config import HashedBagStudent, StaticEmbeddingStudent, TrainConfig
from trainer.evaluation import read_text_table
from trainer.loop import LoopResult, epoch_order, run_loop, seed_everything
from trainer.losses import classifier_kd_loss
from trainer.static_student import (
    TeacherSpace,
    TokenFeaturizer,
    TokenVectors,
    distill_token_embeddings,
    encoder_of,
    teacher_encoder_path,
)

MATCH_LR = 3e-3  # Adam, matching the teacher's embeddings (quickstart: 1e-2 and 40 epochs overfit)
HEAD_LR = 1e-3  # Adam, the matched student's head on the labels
# Ridge penalty of the map that starts matching. Plain least squares nearly interpolates a small
# transfer set (257 unknowns per target dimension): on 352 quickstart rows it started matching at
# macro-F1 0.43 and ended at 0.67; with this penalty 0.74 and 0.78. On 1,000+ rows it changes nothing.
MATCH_INIT_RIDGE = 1.0
# Weight of the token-vector loss beside the sentence loss (context layers only). Chosen on the quickstart's
# held-out training rows: cosine to the teacher 0.939 at 0.3, 0.937 at 1.0 (0.925 without the layer).
TOKEN_MATCH_WEIGHT = 0.3
# Share of a batch's token positions whose teacher vectors are matched in a step (a fresh random draw each step)
TOKEN_MATCH_SHARE = 0.25
MAX_COPIES = 16  # perturbed copies per text at most: the most measured (SST-2 held-out cosine still rose to it)


def classification_frame(version: DatasetVersion, needs_probs: bool) -> tuple[list[str], pl.DataFrame]:
    """The label set and a frame with text, label index and teacher probs; bad rows raise naming the row."""
    labels = version.label_set
    if not labels:
        raise StillhouseError(f"{version.ref}: the manifest has no label_set; classifier training needs one")
    frame = version.read(columns=["id", "instruction", "input", "parent_id", "label", "label_probs"])
    if frame.height == 0:
        raise StillhouseError(f"{version.ref}: no kept rows to train on")
    frame = frame.with_columns(
        text=pl.when(pl.col("input").fill_null("") != "").then(pl.col("input")).otherwise(pl.col("instruction")),
        label_index=pl.col("label").replace_strict(labels, list(range(len(labels))), default=-1, return_dtype=pl.Int64),
    )
    unknown = frame["label_index"] == -1
    if unknown.any():
        row = int(unknown.arg_true()[0])
        raise StillhouseError(
            f"{version.ref}: column 'label' row {row} (id {frame['id'][row]}): {frame['label'][row]!r} is not in the "
            f"label_set"
        )
    if needs_probs:
        bad = frame["label_probs"].is_null() | (frame["label_probs"].list.len() != len(labels))
        if bad.any():
            row = int(bad.arg_true()[0])
            raise StillhouseError(
                f"{version.ref}: column 'label_probs' row {row} (id {frame['id'][row]}): needs {len(labels)} "
                f"probabilities for KD (alpha > 0); use alpha: 0 to train on hard labels only"
            )
    return labels, frame


def calibration_split(frame: pl.DataFrame, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(calibration rows, training rows): whole lineage groups held out; calibrate on their non-derived rows."""
    groups = frame["parent_id"].fill_null(frame["id"])
    names = groups.unique(maintain_order=True)
    n_held = int(round(fraction * len(names))) if frame.height >= 20 else 0
    held = set(names.gather(epoch_order(len(names), seed, epoch=-1)[:n_held]).to_list())
    in_held = groups.is_in(list(held)).to_list()
    derived = frame["parent_id"].is_not_null().to_list()
    calibration = [i for i in range(frame.height) if in_held[i] and not derived[i]]
    if n_held and not calibration:  # everything is derived: calibrate on what was held out
        calibration = [i for i in range(frame.height) if in_held[i]]
    return calibration, [i for i in range(frame.height) if not in_held[i]]


def recorded_teacher(version: DatasetVersion) -> str | None:
    """The `teacher.model` of the version's rows (the classifier teacher that labelled them), if recorded."""
    import pyarrow.parquet as pq

    if "teacher" not in pq.read_schema(version.data_path).names:
        return None
    models = version.read(columns=["teacher"], verify=False)["teacher"].struct.field("model").drop_nulls().unique()
    return models[0] if len(models) == 1 else None


def build_student(
    student: HashedBagStudent | StaticEmbeddingStudent, labels: list[str], version: DatasetVersion
) -> tuple[BagClassifier, str | None, TeacherSpace | None]:
    """The untrained student, the encoder its static vectors were distilled from, and the
    teacher space it will match (static students of a dataset an encoder_head teacher labelled)."""
    if isinstance(student, HashedBagStudent):
        model = BagClassifier.create(labels, student.buckets, student.dim, student.word_ngrams, student.char_ngrams)
        return model, None, None
    if student.encoder and not Path(student.encoder).exists():
        raise StillhouseError(f"student.encoder: {student.encoder} does not exist (from {Path.cwd()})")
    teacher = str(student.encoder) if student.encoder else recorded_teacher(version)
    if not student.encoder and teacher and not Path(teacher).exists():
        # a relative teacher path recorded by a run resolves from that run's directory only
        print(
            f"student: {version.ref} was labelled by {teacher}, which is not found from {Path.cwd()}; the static "
            f"vectors come from the offline MiniLM and the student learns the labels alone (set student.encoder "
            f"to the teacher's directory to match it)",
            file=sys.stderr,
        )
        teacher = None
    encoder = encoder_of(Path(student.encoder)) if student.encoder else teacher_encoder_path(teacher)
    space = TeacherSpace.of(teacher) if student.match_teacher == "auto" else None
    head = space.head_for(labels) if space is not None else None
    if head is None:
        space = None
    tokenizer, vectors = distill_token_embeddings(encoder, student.dim)
    model = BagClassifier.from_static_embeddings(
        labels,
        TokenFeaturizer(tokenizer),
        vectors,
        space.dim if space else None,
        student.hidden,
        student.pooling if space else "mean",
        student.context_heads if space else 0,  # trained on the teacher's token vectors, so matched students only
        student.context_width,
    )
    if space is not None:
        with torch.no_grad():
            model.net.output.weight.copy_(head[0])
            model.net.output.bias.copy_(head[1])
    return model, str(encoder), space


def copies_per_text(student: StaticEmbeddingStudent, n_texts: int) -> int:
    """Perturbed copies of each of `n_texts` training texts that bring the matching set to about
    `student.match_texts` (SST-2, 1,800 texts: held-out cosine to the teacher 0.81 without copies,
    0.83 / 0.84 / 0.85 with 4 / 8 / 16, so more copies keep helping on the training split's own rows)."""
    if n_texts == 0:
        return 0
    return max(0, min(MAX_COPIES, math.ceil(student.match_texts / n_texts) - 1))


def match_data_texts(student: StaticEmbeddingStudent, exclude: set[str]) -> list[str]:
    """The distinct non-empty texts of `student.match_data` that are not in `exclude` (the dataset's own)."""
    if student.match_data is None:
        return []
    column = student.match_text_column
    frame = read_text_table(student.match_data, [column], "student.match_data")
    texts = [text for text in frame[column].drop_nulls().unique(maintain_order=True) if text.strip()]
    return [text for text in texts if text not in exclude]


def token_match_loss(predicted: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cosine between the student's [B, P, dim] token predictions and the teacher's token vectors
    [B, P, dim] over the [B, P] `mask` (tokens both models have: the teacher may truncate sooner, and padding
    is left out)."""
    cosine = torch.nn.functional.cosine_similarity(predicted, targets, dim=-1)
    return ((1.0 - cosine) * mask).sum() / mask.sum().clamp(min=1)


def match_teacher_space(
    net: BagNet,
    ids_for: Callable[[list[int]], torch.Tensor],
    targets: torch.Tensor,
    train_rows: list[int],
    held_rows: list[int],
    epochs: int,
    batch_size: int,
    seed: int,
    token_targets: TokenVectors | None = None,
) -> dict[str, float]:
    """Train embeddings and the map into the teacher's space so that the student's unit vector points where
    the teacher's does (loss: 1 - cosine); keep the epoch with the lowest held-out loss (every epoch without
    held-out rows). A net with a context layer also learns, through the same linear map, the teacher's
    contextual vector of every token (`token_targets`, weight TOKEN_MATCH_WEIGHT): 20 or so targets per
    text where the sentence gives one, which is what teaches the layer word order."""
    with torch.no_grad():  # start from the ridge map of the pooled vectors onto the targets
        pooled = net.pool(ids_for(train_rows))
        design = torch.cat([pooled, torch.ones(len(train_rows), 1)], dim=1)
        penalty = MATCH_INIT_RIDGE * torch.eye(design.shape[1])
        penalty[-1, -1] = 0.0  # the bias is not shrunk
        solution = torch.linalg.solve(design.T @ design + penalty, design.T @ targets[train_rows])
        net.projection.weight.copy_(solution[:-1].T)
        net.projection.bias.copy_(solution[-1])
    # sparse embedding gradients: SparseAdam touches only the tokens a batch has
    sparse = torch.optim.SparseAdam(list(net.embedding.parameters()), lr=MATCH_LR)
    dense = torch.optim.Adam(net.space_parameters(), lr=MATCH_LR)

    by_tokens = token_targets is not None and net.context is not None

    def cosine_loss(features: torch.Tensor, rows: list[int]) -> torch.Tensor:
        return 1.0 - (features * targets[rows]).sum(-1).mean()

    def sentence_loss(rows: list[int]) -> torch.Tensor:
        return cosine_loss(net.features(ids_for(rows)), rows)

    def loss_on(rows: list[int]) -> torch.Tensor:
        if not by_tokens:
            return sentence_loss(rows)
        ids = net.clip(ids_for(rows))
        vectors = net.token_vectors(ids)
        sentence = cosine_loss(net.features_of(vectors, ids), rows)
        # a random share of the positions: neighbouring tokens' targets say much the same, at a quarter of the cost
        length = ids.shape[1]
        positions = torch.randperm(length)[: max(1, round(length * TOKEN_MATCH_SHARE))].sort().values
        teacher, present = token_targets.at(rows, positions)
        tokens = token_match_loss(net.projection(vectors[:, positions]), teacher, present & (ids[:, positions] > 0))
        return sentence + TOKEN_MATCH_WEIGHT * tokens

    def held_loss() -> float:
        with torch.no_grad():
            return float(sentence_loss(held_rows)) if held_rows else 0.0

    best, best_state, best_epoch = held_loss(), copy.deepcopy(net.state_dict()), 0
    from tqdm.auto import tqdm

    for epoch in tqdm(range(epochs), desc="student: matching the teacher's embeddings", unit="epoch", leave=False):
        if by_tokens:  # attention's cost grows with the padded length (the teacher has a token per student id)
            generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
            batches = length_batches(token_targets.lengths[train_rows].tolist(), batch_size, generator)
            batches = [[train_rows[i] for i in batch] for batch in batches]
        else:
            order = [train_rows[i] for i in epoch_order(len(train_rows), seed, epoch)]
            batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        for rows in batches:
            loss = loss_on(rows)
            sparse.zero_grad()
            dense.zero_grad()
            loss.backward()
            sparse.step()
            dense.step()
        current = held_loss()
        if not held_rows or current < best:
            best, best_state, best_epoch = current, copy.deepcopy(net.state_dict()), epoch + 1
    net.load_state_dict(best_state)
    return {"epochs": best_epoch, "held_out_cosine": 1.0 - best} if held_rows else {"epochs": best_epoch}


def train_classifier(config: TrainConfig, version: DatasetVersion, model_dir: Path) -> tuple[LoopResult, dict]:
    student = config.student
    seed_everything(config.seed)
    labels, frame = classification_frame(version, needs_probs=config.alpha > 0)
    model, distilled_from, space = build_student(student, labels, version)

    features = model.featurizer.ids_list(frame["text"].to_list())
    hard = torch.tensor(frame["label_index"].to_numpy(), dtype=torch.long)
    soft = torch.tensor(np.stack(frame["label_probs"].to_numpy()), dtype=torch.float32) if config.alpha > 0 else None

    val_rows, train_rows = calibration_split(frame, student.val_fraction, config.seed)

    def ids_for(rows: list[int]) -> torch.Tensor:
        width = max(len(features[r]) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(features[r])] = torch.tensor(features[r])
        return ids

    def batches_for_epoch(epoch: int) -> list[list[int]]:
        shuffled = [train_rows[i] for i in epoch_order(len(train_rows), config.seed, epoch)]
        return [shuffled[i : i + config.batch_size] for i in range(0, len(shuffled), config.batch_size)]

    def loss_fn(rows: list[int]) -> torch.Tensor:
        logits = model.net(ids_for(rows))
        teacher = soft[rows] if soft is not None else None
        if teacher is None:
            return torch.nn.functional.cross_entropy(logits, hard[rows])
        return classifier_kd_loss(logits, teacher, hard[rows], config.temperature, config.alpha)

    matched = {}
    if space is not None:
        texts = frame["text"].to_list()
        extra = match_data_texts(student, exclude=set(texts))
        # the teacher's embeddings of perturbed copies of the training texts are targets too: matching
        # needs no labels, and 1,800 texts leave most of 8M embedding weights to overfit
        originals = [texts[r] for r in train_rows] + extra
        n_copies = copies_per_text(student, len(originals))
        copies = [text for text, _ in perturbed_copies(originals, n_copies, config.seed)]
        # rows frame.height.. of ids_for and targets are the match_data texts, then the copies
        features += model.featurizer.ids_list(extra + copies)
        if model.net.context is not None:
            targets, token_targets = space.embeddings_and_tokens(texts + extra + copies)
        else:
            targets, token_targets = space.embeddings(texts + extra + copies), None
        match_rows = train_rows + list(range(frame.height, frame.height + len(extra) + len(copies)))
        matched = match_teacher_space(
            model.net,
            ids_for,
            targets,
            match_rows,
            val_rows,
            student.match_epochs,
            config.batch_size,
            config.seed,
            token_targets,
        )
        del token_targets  # 400 MB or so on 20,000 texts
        matched.update(match_data_texts=len(extra), copies=len(copies))
        # then only the head learns the dataset's labels (a reviewer's corrections among them): training
        # the matched vectors on 12 probabilities a row undoes what 384 numbers a row taught them
        lr = config.lr or HEAD_LR
        model.net.requires_grad_(False)  # no gradients to compute (or pile up) below the head
        model.net.output.requires_grad_(True)
        optimizer = torch.optim.Adam(model.net.output.parameters(), lr=lr)
    else:
        if isinstance(student, StaticEmbeddingStudent) and student.match_data is not None:
            print("student: no encoder_head teacher to match, so student.match_data is not used", file=sys.stderr)
        # sparse embedding gradients: Adagrad updates only the n-grams a batch touched (fastText's trick)
        lr = config.learning_rate
        optimizer = torch.optim.Adagrad(model.net.parameters(), lr=lr)
    with warnings.catch_warnings():  # Adagrad on sparse grads warns about skipped invariant checks
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        result = run_loop(
            model.net,
            optimizer,
            batches_for_epoch,
            loss_fn,
            epochs=config.epochs,
            lr=lr,
            output_dir=config.output_dir,
            checkpoint_every=config.checkpoint_every,
            resume=config.resume,
            fingerprint=config.fingerprint(),
            description=f"classifier {'KD' if config.alpha > 0 else 'CE'}",
            max_grad_norm=0.0,
        )
    held_out = {}
    if val_rows:
        with torch.inference_mode():
            val_logits = model.net(ids_for(val_rows))
        # calibrated to the teacher's own probabilities where the dataset has them: the hard labels are
        # the teacher's argmax, and fitting to them makes the student surer than the teacher ever was.
        # A matched student has the teacher's head and embeddings, so it fits to the teacher's
        # calibrated probabilities rather than to the ones it labelled with (SST-2: T = 2.65 for the teacher).
        if space is not None:
            calibration_target = space.calibrated_probs(targets[val_rows], labels)
        else:
            calibration_target = soft[val_rows] if soft is not None else hard[val_rows]
        model.temperature = fit_temperature(val_logits, calibration_target)
        # how well the student follows the dataset's labels on rows it never saw (for choosing knobs)
        held_out = {
            "agreement": float((val_logits.argmax(-1) == hard[val_rows]).float().mean()),
            "nll": float(torch.nn.functional.cross_entropy(val_logits / model.temperature, hard[val_rows])),
        }
    model.save_pretrained(model_dir)
    model.export_onnx(model_dir / "model.onnx", check_texts=list(frame["text"].head(8)))
    details = {
        "labels": labels,
        "rows": {"train": len(train_rows), "calibration": len(val_rows)},
        "calibration_temperature": model.temperature,
        "held_out": held_out,
        "num_parameters": model.num_parameters,
        "student_type": student.type,
        "distilled_from": distilled_from,
        "matched_teacher": {"teacher_dim": space.dim, **matched} if space is not None else None,
        "onnx": "model.onnx",
    }
    return result, details
