"""Static token embeddings distilled from the teacher's own encoder (Model2Vec-style).

Every token of the encoder's vocabulary is passed through the encoder on its own
([CLS] token [SEP]) and its pooled output becomes that token's vector; PCA reduces
the vectors to the student's width. A student that averages these vectors and
applies a linear layer starts from the teacher's notion of what words mean, so it
generalises to phrasings the transfer set lacks, at the cost of one tokenizer call
and one embedding lookup per prediction (Tulkens & van Dongen, Model2Vec, 2024).

The vectors depend only on the encoder's weights and the width, so they are cached
under $STILLHOUSE_CACHE (default ~/.cache/stillhouse)/token_embeddings/.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from factory.atomic import atomic_path
from factory.errors import StillhouseError
from factory.teachers.errors import ModelNotFoundError
from trainer.bag_model import MAX_POSITIONS

TOKENIZER_SUBDIR = "tokenizer"


class TokenFeaturizer:
    """Text -> the tokenizer's ids shifted by one (0 is padding); no special tokens."""

    kind = "tokens"

    def __init__(self, tokenizer: Any, max_length: int = MAX_POSITIONS) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer) + 1

    def ids_list(self, texts: list[str]) -> list[list[int]]:
        if not texts:  # a fast tokenizer fails on an empty batch
            return []
        rows = self.tokenizer(
            texts, add_special_tokens=False, truncation=True, max_length=self.max_length, return_attention_mask=False
        )["input_ids"]
        return [[i + 1 for i in row] or [0] for row in rows]

    def batch(self, texts: list[str]) -> torch.Tensor:
        """[B, L] int64, right-padded with 0."""
        rows = self.ids_list(texts)
        width = max(1, max(len(row) for row in rows))
        out = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return torch.from_numpy(out)

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_length": self.max_length}

    def save(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(str(directory / TOKENIZER_SUBDIR))

    @classmethod
    def load(cls, directory: Path, settings: dict[str, Any]) -> TokenFeaturizer:
        from transformers import AutoTokenizer

        path = directory / TOKENIZER_SUBDIR
        if not path.is_dir():
            raise StillhouseError(f"{directory}: static-embedding student without its {TOKENIZER_SUBDIR}/ directory")
        return cls(AutoTokenizer.from_pretrained(str(path)), settings.get("max_length", MAX_POSITIONS))


def teacher_encoder_path(teacher_model: str | None) -> Path:
    """The sentence encoder inside a classifier teacher directory (encoder_head), else the default MiniLM."""
    from factory.teachers.classifier import default_encoder_path

    default = default_encoder_path()
    return encoder_of(Path(teacher_model), otherwise=default) if teacher_model else default


def encoder_of(directory: Path, otherwise: Path | None = None) -> Path:
    """The encoder inside an encoder_head teacher directory; for any other directory `otherwise`, by default
    the directory itself (a sentence encoder the user named, or any model sentence-transformers can load)."""
    from factory.teachers.classifier import ENCODER_HEAD_CONFIG, read_encoder_head

    if (directory / ENCODER_HEAD_CONFIG).is_file():
        return read_encoder_head(directory).encoder
    return directory if otherwise is None else otherwise


def _cache_file(encoder_path: Path, dim: int) -> Path:
    files = sorted((p.name, p.stat().st_size) for p in encoder_path.rglob("*.safetensors"))
    digest = hashlib.sha256(json.dumps([str(encoder_path.resolve()), files, dim]).encode()).hexdigest()[:16]
    root = Path(os.environ.get("STILLHOUSE_CACHE", Path.home() / ".cache" / "stillhouse"))
    return root / "token_embeddings" / f"{digest}.npy"


def distill_token_embeddings(encoder_path: Path, dim: int, batch_size: int = 1024) -> tuple[Any, np.ndarray]:
    """(tokenizer, vectors [vocab + 1, width]): row 0 is padding, row id + 1 the vector of token id.

    The table is computed once per encoder and width, in a fresh process: the caller's process
    may have run an in-process vLLM engine, which binds its OpenMP threads and replaces
    torch.set_num_threads for good, and the encoder's weights are freed with the child. In a
    pytest process that had run ~450 other tests, this computation (10-17 s on its own) ran past
    900 s on two CI machines; that was not reproduced here, so its cause is not known."""
    from transformers import AutoTokenizer

    cache = _cache_file(Path(encoder_path), dim)
    if not cache.is_file():  # cached: no need to import sentence-transformers (~10 s) or load weights
        if not Path(encoder_path).exists():
            raise ModelNotFoundError(f"sentence encoder directory {encoder_path} does not exist")
        # a fresh interpreter, not multiprocessing: spawn would re-run a caller's unguarded script
        command = [sys.executable, "-m", "trainer.static_student", str(encoder_path), str(dim), str(batch_size)]
        done = subprocess.run([*command, str(cache)], stdin=subprocess.DEVNULL)
        if done.returncode != 0 or not cache.is_file():
            raise StillhouseError(
                f"static token vectors of {encoder_path}: the process computing them exited with "
                f"{done.returncode} (its error is above); run the same command again"
            )
    return AutoTokenizer.from_pretrained(str(encoder_path)), np.load(cache)


def token_table(encoder_path: str, dim: int, batch_size: int) -> np.ndarray:
    """Every token of the encoder's vocabulary through the encoder on its own ([CLS] token [SEP]),
    mean-pooled, centred, reduced to `dim` by PCA, scaled to unit spread; row 0 (padding) is zeros."""
    from tqdm.auto import tqdm

    from factory.teachers.classifier import load_encoder

    encoder = load_encoder(encoder_path)
    tokenizer = encoder.tokenizer
    vocab = len(tokenizer)
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    vectors = []
    encoder.eval()
    starts = range(0, vocab, batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc="static student: token vectors from the encoder", unit="batch", leave=False):
            ids = torch.arange(start, min(start + batch_size, vocab)).unsqueeze(1)
            if cls_id is not None and sep_id is not None:
                ids = torch.cat([torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], dim=1)
            features = {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "token_type_ids": torch.zeros_like(ids),
            }
            vectors.append(encoder(features)["token_embeddings"].mean(dim=1).float().numpy())
    table = np.concatenate(vectors)
    table = table - table.mean(axis=0, keepdims=True)
    if dim < table.shape[1]:  # PCA: the directions that carry most of the vocabulary's variance
        _, _, components = np.linalg.svd(table, full_matrices=False)
        table = table @ components[:dim].T
    # unit scale per coordinate: the student's optimiser then treats every direction alike
    table = (table / table.std()).astype(np.float32)
    return np.concatenate([np.zeros((1, table.shape[1]), dtype=np.float32), table])


def write_token_table(encoder_path: str, dim: int, batch_size: int, out: Path) -> None:
    table = token_table(encoder_path, dim, batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as temporary, open(temporary, "wb") as handle:
        np.save(handle, table)


@dataclass(frozen=True)
class TokenVectors:
    """Every text's token vectors in one float16 tensor [all tokens, dim], text after text (one tensor, not
    20,000: a batch's targets are one gather)."""

    vectors: torch.Tensor
    lengths: torch.Tensor  # [texts]: tokens of each text
    starts: torch.Tensor  # [texts]: row of each text's first token in `vectors`

    @classmethod
    def of(cls, per_text: list[torch.Tensor]) -> TokenVectors:
        lengths = torch.tensor([t.shape[0] for t in per_text], dtype=torch.long)
        return cls(torch.cat(per_text), lengths, torch.cumsum(lengths, 0) - lengths)

    def at(self, rows: list[int], positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The vectors of `rows` at token `positions` [P]: ([len(rows), P, dim] float32, [len(rows), P] present),
        zeros where a text has fewer tokens."""
        rows_ = torch.tensor(rows, dtype=torch.long)
        present = positions[None, :] < self.lengths[rows_, None]
        index = torch.where(present, self.starts[rows_, None] + positions[None, :], 0)
        return self.vectors[index].float() * present[..., None], present


class TeacherSpace:
    """An encoder_head classifier teacher's encoder and head: the space a static student can learn to match.

    Matching the teacher's sentence embeddings (384 numbers per text) carries far more of
    what the teacher knows than its class probabilities do, and a student that matches
    them can reuse the teacher's head as its own output layer (Model2Vec's tokenlearn:
    static vectors trained to reproduce a sentence encoder). Measured on the quickstart:
    held-out macro-F1 0.79 against 0.71 for KD on the soft labels alone.
    """

    def __init__(self, directory: Path) -> None:
        from factory.teachers.classifier import read_encoder_head

        files = read_encoder_head(directory)
        self.encoder, self.normalize, self.labels = files.encoder, files.normalize, files.labels
        self.weight, self.bias = files.head["weight"], files.head["bias"]
        self.temperature = files.calibration_temperature

    @classmethod
    def of(cls, teacher_model: str | None) -> TeacherSpace | None:
        """The space of an encoder_head teacher directory; None for any other teacher (or none recorded)."""
        from factory.teachers.classifier import ENCODER_HEAD_CONFIG, HEAD_FILE, LABELS_FILE

        if not teacher_model:
            return None
        directory = Path(teacher_model)
        if not all((directory / name).is_file() for name in (ENCODER_HEAD_CONFIG, HEAD_FILE, LABELS_FILE)):
            return None
        space = cls(directory)
        return space if space.normalize else None  # a head over raw embeddings expects their lengths too

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def head_for(self, labels: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The head's rows in the order of `labels`; None when the teacher knows other classes."""
        if sorted(labels) != sorted(self.labels):
            return None
        order = [self.labels.index(label) for label in labels]
        return self.weight[order].clone(), self.bias[order].clone()

    def calibrated_probs(self, embeddings: torch.Tensor, labels: list[str]) -> torch.Tensor:
        """The teacher's probabilities at its own calibration temperature, classes in `labels` order."""
        weight, bias = self.head_for(labels)
        return torch.softmax((embeddings @ weight.T + bias) / self.temperature, dim=-1)

    def embeddings_and_tokens(self, texts: list[str], batch_size: int = 64) -> tuple[torch.Tensor, TokenVectors]:
        """The teacher's unit-length sentence embeddings [len(texts), dim] and every text's contextual token
        vectors without [CLS] and [SEP] (a token per id of the student's featurizer)."""
        from factory.teachers.classifier import load_encoder

        encoder = load_encoder(self.encoder)
        outputs = encoder.encode(texts, batch_size=batch_size, output_value=None, show_progress_bar=len(texts) > 2000)
        sentences = torch.stack([out["sentence_embedding"].float().cpu() for out in outputs])
        tokens = []
        for out in outputs:  # batches are padded: the attention mask says where each text ends
            length = int(out["attention_mask"].sum())
            tokens.append(out["token_embeddings"][1 : length - 1].detach().cpu().half())
        return torch.nn.functional.normalize(sentences, dim=-1), TokenVectors.of(tokens)

    def embeddings(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """The teacher's sentence embedding of every text, unit length: [len(texts), dim]."""
        from factory.teachers.classifier import load_encoder

        encoder = load_encoder(self.encoder)
        vectors = encoder.encode(
            texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=len(texts) > 2000
        )
        return torch.nn.functional.normalize(vectors.float().cpu(), dim=-1)


if __name__ == "__main__":  # python -m trainer.static_student ENCODER DIM BATCH_SIZE OUT (distill_token_embeddings)
    try:
        write_token_table(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    except (StillhouseError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
