"""Bag-of-embeddings text classifiers: ids -> averaged embeddings -> one linear layer.

Two featurizers turn text into ids: hashed word and character n-grams (fastText-style,
embeddings learned from scratch), or the teacher encoder's own tokenizer, whose
embeddings start from static vectors distilled from the teacher's encoder
(trainer/static_student.py). Either way a prediction is one tokenisation, one
embedding lookup and one matrix-vector product, far cheaper than a transformer. The
featurizer is part of the saved model (its settings go in config.json, a tokenizer in
tokenizer/), so a directory fully describes how text becomes ids; the ONNX export
takes those ids and returns calibrated probabilities.

    <dir>/config.json      architecture, featurizer settings, calibration temperature
    <dir>/labels.json      class names in output order
    <dir>/model.safetensors weights
    <dir>/tokenizer/       the tokenizer (static-embedding students only)
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import xxhash
from safetensors.torch import load_file, save_file
from torch import nn

from factory.errors import StillhouseError

MODEL_TYPE = "stillhouse_hashed_bag"
STATIC_MODEL_TYPE = "stillhouse_static_bag"
MODEL_TYPES = (MODEL_TYPE, STATIC_MODEL_TYPE)
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


@dataclass(frozen=True)
class Featurizer:
    """Text -> hashed n-gram ids in [1, buckets); 0 is padding."""

    buckets: int = 1 << 18
    word_ngrams: int = 2
    char_min: int = 3
    char_max: int = 5
    kind = "hashed"

    @property
    def vocab_size(self) -> int:
        return self.buckets

    def settings(self) -> dict:
        return asdict(self)

    def save(self, directory: Path) -> None:
        """Nothing beyond config.json: the settings define the hashing."""

    def grams(self, text: str) -> list[str]:
        words = WORD.findall(text.lower())
        grams = [f"w:{w}" for w in words]
        for n in range(2, self.word_ngrams + 1):
            grams += [f"w{n}:" + " ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
        for word in words:
            padded = f"<{word}>"
            for n in range(self.char_min, self.char_max + 1):
                grams += [f"c:{padded[i : i + n]}" for i in range(len(padded) - n + 1)]
        return grams

    def ids(self, text: str) -> list[int]:
        ids = [xxhash.xxh32_intdigest(gram.encode("utf-8")) % (self.buckets - 1) + 1 for gram in self.grams(text)]
        return ids or [0]

    def ids_list(self, texts: list[str]) -> list[list[int]]:
        return [self.ids(text) for text in texts]

    def batch(self, texts: list[str]) -> torch.Tensor:
        """[B, L] int64, right-padded with 0."""
        rows = [self.ids(text) for text in texts]
        width = max(len(row) for row in rows)
        out = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return torch.from_numpy(out)


Pooling = Literal["mean", "attention"]
# tokens a static student reads (TokenFeaturizer's max_length), so positions a context layer learns
MAX_POSITIONS = 256


class ContextAttention(nn.Module):
    """One pre-norm multi-head self-attention layer with a residual and learned positions, no feed-forward:
    it lets a token's vector depend on its neighbours and their order ("not good", "charged twice") at a
    few small ops per prediction. Queries, keys and values are `width` wide (narrower than the token
    vectors: the layer adds a low-rank correction to them, at a quarter of the matmuls). The output
    projection starts at zero, so the layer starts as the static vectors plus their small learned
    positions. Written with plain matmuls so that it exports to ONNX as it runs in torch."""

    def __init__(self, dim: int, heads: int, width: int) -> None:
        super().__init__()
        if width % heads:
            raise StillhouseError(f"student.context_width: {width} is not a multiple of student.context_heads {heads}")
        self.heads = heads
        self.positions = nn.Embedding(MAX_POSITIONS, dim)
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * width)
        self.out = nn.Linear(width, dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.zero_()

    def forward(self, vectors: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """[B, L, dim] token vectors of [B, L] ids (0: padding) -> [B, L, dim] in context."""
        x = vectors + self.positions.weight[: vectors.shape[1]]
        # [B, L, 3 * width] -> [3, B, heads, L, width / heads]; shapes by -1 and flatten so an ONNX export stays dynamic
        qkv = self.qkv(self.norm(x)).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        scores = scores.masked_fill((ids == 0)[:, None, None, :], -1e4)  # padding is never attended to
        attended = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).flatten(2)
        return x + self.out(attended)


class BagNet(nn.Module):
    """Pooled n-gram (or token) embeddings -> linear layer -> logits.

    Pooling is the plain mean, or attention with one learned query: each token weighs
    exp(query . vector), so the weight is a function of the token's vector and carries over
    to tokens the training texts never had (a greeting's words can count less than the ones
    that name the problem, which the teacher's contextual encoder does on its own).

    With `space_dim`, the pooled vector is first mapped into a teacher encoder's embedding space
    (a linear map plus, with `hidden`, a residual one-hidden-layer MLP; unit length) and the
    output layer is a head over that space: a student trained to point where the teacher's
    sentence embeddings point can use the teacher's own head (trainer/static_student.py).

    With `context_heads`, one self-attention layer (ContextAttention) puts the token vectors in
    context before pooling; a matched student trains it to reproduce the teacher's own contextual
    token vectors, which carry word order that a bag of vectors cannot.
    """

    def __init__(
        self,
        buckets: int,
        dim: int,
        n_labels: int,
        space_dim: int | None = None,
        hidden: int = 0,
        pooling: Pooling = "mean",
        context_heads: int = 0,
        context_width: int = 64,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(buckets, dim, padding_idx=0, sparse=True)
        self.context = ContextAttention(dim, context_heads, context_width) if context_heads else None
        # starts at zero: uniform weights, the plain mean
        self.query = nn.Parameter(torch.zeros(dim)) if pooling == "attention" else None
        self.projection = nn.Linear(dim, space_dim) if space_dim else None
        self.residual = (
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, space_dim))
            if space_dim and hidden
            else None
        )
        self.output = nn.Linear(space_dim or dim, n_labels)
        nn.init.uniform_(self.embedding.weight, -1.0 / dim, 1.0 / dim)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
            if self.residual is not None:  # starts as the linear map alone
                self.residual[2].weight.zero_()
                self.residual[2].bias.zero_()

    @property
    def pooling(self) -> Pooling:
        return "mean" if self.query is None else "attention"

    @property
    def context_heads(self) -> int:
        return self.context.heads if self.context is not None else 0

    @property
    def context_width(self) -> int:
        return self.context.out.in_features if self.context is not None else 0

    def clip(self, ids: torch.Tensor) -> torch.Tensor:
        """The ids a context layer has positions for (all of them without one)."""
        return ids[:, :MAX_POSITIONS] if self.context is not None else ids

    def token_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] clipped ids -> [B, L, dim]: the embeddings, in context when the net has a context layer."""
        embedded = self.embedding(ids)
        return self.context(embedded, ids) if self.context is not None else embedded

    def pool(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] ids (0: padding) -> [B, dim]: the mean of the token vectors, or their attention-weighted sum."""
        ids = self.clip(ids)
        return self.pool_vectors(self.token_vectors(ids), ids)

    def pool_vectors(self, embedded: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if self.query is None:
            mask = (ids > 0).unsqueeze(-1).to(embedded.dtype)
            return (embedded * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        # finite, not -inf: a row of padding alone gets uniform weights over zero vectors, not NaN
        scores = (embedded @ self.query).masked_fill(ids == 0, -1e4)
        return (embedded * torch.softmax(scores, dim=-1).unsqueeze(-1)).sum(1)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """What the output layer reads: the pooled vector, or its unit-length image in the teacher's space."""
        ids = self.clip(ids)
        return self.features_of(self.token_vectors(ids), ids)

    def features_of(self, vectors: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """features() from the [B, L, dim] token vectors of `ids` (so a caller can reuse them)."""
        pooled = self.pool_vectors(vectors, ids)
        if self.projection is None:
            return pooled
        mapped = self.projection(pooled)
        if self.residual is not None:
            mapped = mapped + self.residual(pooled)
        return nn.functional.normalize(mapped, dim=-1)

    def space_parameters(self) -> list[nn.Parameter]:
        """The dense parameters before the output layer: context layer, pooling query, map into the teacher's space."""
        modules = [m for m in (self.context, self.projection, self.residual) if m is not None]
        query = [self.query] if self.query is not None else []
        return query + [p for module in modules for p in module.parameters()]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(ids))


class CalibratedProbs(nn.Module):
    """What the ONNX export computes: softmax(logits / temperature)."""

    def __init__(self, net: BagNet, temperature: float) -> None:
        super().__init__()
        self.net, self.temperature = net, temperature

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(ids) / self.temperature, dim=-1)


class BagClassifier:
    """Featurizer + BagNet + labels + calibration temperature; save/load as a directory."""

    def __init__(self, featurizer: Any, net: BagNet, labels: list[str], temperature: float = 1.0) -> None:
        self.featurizer, self.net, self.labels, self.temperature = featurizer, net, list(labels), temperature

    @classmethod
    def create(cls, labels: list[str], buckets: int, dim: int, word_ngrams: int, char_ngrams: tuple[int, int]):
        featurizer = Featurizer(buckets, word_ngrams, char_ngrams[0], char_ngrams[1])
        return cls(featurizer, BagNet(buckets, dim, len(labels)), labels)

    @classmethod
    def from_static_embeddings(
        cls,
        labels: list[str],
        featurizer: Any,
        vectors: np.ndarray,
        space_dim: int | None = None,
        hidden: int = 0,
        pooling: Pooling = "mean",
        context_heads: int = 0,
        context_width: int = 64,
    ) -> BagClassifier:
        """A student whose token embeddings start from `vectors` [vocab + 1, dim] (row 0: padding)."""
        net = BagNet(
            vectors.shape[0], vectors.shape[1], len(labels), space_dim, hidden, pooling, context_heads, context_width
        )
        with torch.no_grad():
            net.embedding.weight.copy_(torch.from_numpy(vectors))
        return cls(featurizer, net, labels)

    @property
    def model_type(self) -> str:
        return MODEL_TYPE if self.featurizer.kind == "hashed" else STATIC_MODEL_TYPE

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    @torch.inference_mode()
    def logits(self, texts: list[str]) -> np.ndarray:
        """Raw class logits [len(texts), labels] (before the calibration temperature)."""
        self.net.eval()
        return self.net(self.featurizer.batch(texts)).numpy()

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        logits = torch.from_numpy(self.logits(texts))
        return torch.softmax(logits / self.temperature, dim=-1).numpy()

    def save_pretrained(self, directory: Path | str) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "model_type": self.model_type,
            "featurizer": self.featurizer.settings(),
            "vocab_size": self.net.embedding.num_embeddings,
            "dim": self.net.embedding.embedding_dim,
            "n_labels": len(self.labels),
            "space_dim": self.net.projection.out_features if self.net.projection is not None else None,
            "hidden": self.net.residual[0].out_features if self.net.residual is not None else 0,
            "pooling": self.net.pooling,
            "context_heads": self.net.context_heads,
            "context_width": self.net.context_width,
            "temperature": self.temperature,
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (directory / "labels.json").write_text(json.dumps(self.labels, indent=2) + "\n", encoding="utf-8")
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(directory / "model.safetensors"))
        self.featurizer.save(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: Path | str) -> BagClassifier:
        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise StillhouseError(f"{directory}: not a model directory (no config.json)")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("model_type") not in MODEL_TYPES:
            raise StillhouseError(f"{config_path}: model_type {config.get('model_type')!r} is not one of {MODEL_TYPES}")
        if config["model_type"] == STATIC_MODEL_TYPE:
            from trainer.static_student import TokenFeaturizer

            featurizer = TokenFeaturizer.load(directory, config["featurizer"])
        else:
            featurizer = Featurizer(**config["featurizer"])
        labels = json.loads((directory / "labels.json").read_text(encoding="utf-8"))
        net = BagNet(
            config.get("vocab_size", featurizer.vocab_size),
            config["dim"],
            config["n_labels"],
            config.get("space_dim"),
            config.get("hidden", 0),
            config.get("pooling", "mean"),
            config.get("context_heads", 0),
            config.get("context_width") or config["dim"],  # models saved before the width was a setting: the full width
        )
        net.load_state_dict(load_file(str(directory / "model.safetensors")))
        net.eval()
        return cls(featurizer, net, labels, float(config["temperature"]))

    def export_onnx(self, path: Path | str, check_texts: list[str] | None = None, atol: float = 1e-5) -> Path:
        """Write an ONNX graph (ids [batch, n_grams] -> probs [batch, labels]) and check it against onnxruntime."""
        import onnxruntime

        path = Path(path)
        module = CalibratedProbs(self.net, self.temperature).eval()
        example = self.featurizer.batch(check_texts or ["an example text", "a second, longer example text"])
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["ids"],
            output_names=["probs"],
            dynamic_axes={"ids": {0: "batch", 1: "n_grams"}, "probs": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (onnx_probs,) = session.run(["probs"], {"ids": example.numpy()})
        with torch.inference_mode():
            torch_probs = module(example).numpy()
        error = float(np.abs(onnx_probs - torch_probs).max())
        if error > atol:
            raise StillhouseError(f"{path}: ONNX export differs from torch by {error:.2e} (> {atol:.0e})")
        return path
