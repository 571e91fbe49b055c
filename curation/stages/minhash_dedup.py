"""MinHash near-duplicates: batched signatures, LSH banding, every candidate verified by true Jaccard.

LSH only proposes candidates: a pair is a duplicate when the Jaccard similarity of its
shingle sets, computed exactly, reaches the threshold. Verified pairs are joined into
clusters by union-find and each cluster keeps its best row under `keep_order` (judge
score, then consistency, then length by default), not whichever came first.

Signatures use the multiply-shift family h(x) = (a*x + b) >> 32 over 32-bit shingle
hashes (a odd 64-bit, b 64-bit), evaluated for a whole batch of shingles and all
permutations in one numpy operation, then reduced per document with `minimum.reduceat`.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from curation.config import MinHashDedupConfig
from curation.stages.base import (
    Stage,
    active,
    keep_best_of_groups,
    keep_rank,
    progress,
    union_find,
    with_drop_columns,
)
from curation.text import Shingles, joined, shingle

EMPTY = np.uint32(0xFFFFFFFF)
SIGNATURE_COLUMN = "_minhash"


def lsh_shape(threshold: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows): the most selective banding that still proposes a pair at `threshold` with `recall`.

    Every candidate is verified exactly, so a false candidate costs one set intersection
    while a missed one is a duplicate kept: bias the banding towards recall.
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            best = (bands, rows)
    return best


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
    b = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
    return a, b


def signatures(shingles: Shingles, num_perm: int, seed: int, batch_docs: int = 128, show: bool = True) -> np.ndarray:
    """(documents, num_perm) uint32 MinHash signatures; a document without shingles is all 0xFFFFFFFF."""
    a, b = permutations(num_perm, seed)
    docs = len(shingles)
    result = np.full((docs, num_perm), EMPTY, dtype=np.uint32)
    counts = shingles.counts()
    batches = range(0, docs, batch_docs)
    for start in progress(batches, total=len(batches), description="minhash signatures") if show else batches:
        stop = min(start + batch_docs, docs)
        nonempty = np.flatnonzero(counts[start:stop] > 0) + start
        if len(nonempty) == 0:
            continue
        lo, hi = shingles.offsets[start], shingles.offsets[stop]
        values = np.multiply.outer(shingles.hashes[lo:hi].astype(np.uint64), a)  # wraps mod 2^64 by design
        values += b
        # the hash is the high 32 bits; shifting is monotonic, so shift the minimum rather than every value
        result[nonempty] = np.minimum.reduceat(values, shingles.offsets[nonempty] - lo, axis=0) >> np.uint64(32)
    return result


def band_candidates(sigs: np.ndarray, docs: np.ndarray, bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique (left, right) pairs of `docs` (left < right) that share all rows of at least one band."""
    lefts, rights = [], []
    for band in range(bands):
        block = sigs[docs, band * rows : (band + 1) * rows].astype(np.uint64)
        key = np.zeros(len(docs), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for column in range(rows):
                key = (key ^ block[:, column]) * np.uint64(0x100000001B3)
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        run_start = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        run_size = np.diff(np.r_[run_start, len(docs)])
        # every member pairs with each later member of its bucket
        position = np.arange(len(docs))
        later = np.repeat(run_start + run_size, run_size) - position - 1
        left = np.repeat(position, later)
        step = np.arange(len(left)) - np.repeat(np.cumsum(later) - later, later) + 1
        lefts.append(docs[order[left]])
        rights.append(docs[order[left + step]])
    if not lefts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    left, right = np.concatenate(lefts), np.concatenate(rights)
    low, high = np.minimum(left, right).astype(np.int64), np.maximum(left, right).astype(np.int64)
    pairs = np.unique(low * (int(sigs.shape[0]) + 1) + high)
    return pairs // (sigs.shape[0] + 1), pairs % (sigs.shape[0] + 1)


class MinHashDedup(Stage):
    # Global, split as datatrove does: signatures per block (parallel, `prepare`), then banding,
    # exact-Jaccard verification of the candidates and keep-best marking on the whole frame.
    prepared_columns = (SIGNATURE_COLUMN,)

    def __init__(self, config: MinHashDedupConfig | None = None, show_progress: bool = True) -> None:
        super().__init__()
        self.config = config or MinHashDedupConfig()
        self.name = self.config.name or "minhash_dedup"
        self.show_progress = show_progress
        c = self.config
        if c.bands is None:
            self.bands, self.rows = lsh_shape(c.threshold, c.num_perm)
        else:
            self.bands, self.rows = c.bands, c.num_perm // c.bands

    @property
    def required_columns(self) -> tuple[str, ...]:
        return ("id", *self.config.columns)

    def prepare(self, block: pl.DataFrame) -> pl.DataFrame:
        """Signatures of a block's live rows (all 0xFFFFFFFF for dropped rows): row-local, parallel."""
        c = self.config
        block = with_drop_columns(block)
        live = np.flatnonzero(active(block).to_numpy())
        sets = shingle(block[live].select(joined(c.columns).alias("t"))["t"], c.shingle, c.ngram, seed=c.seed)
        sigs = np.full((block.height, c.num_perm), EMPTY, dtype=np.uint32)
        sigs[live] = signatures(sets, c.num_perm, c.seed, c.batch_docs, show=False)
        return block.with_columns(pl.Series(SIGNATURE_COLUMN, sigs))

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        c = self.config
        text = joined(c.columns)
        # Shingles and signatures for the rows still live only: earlier stages' drops cost nothing.
        live = np.flatnonzero(active(frame).to_numpy())
        position = np.full(frame.height, -1)  # frame row -> index into `sets`
        position[live] = np.arange(len(live))
        texts = frame[live].select(text.alias("t"))["t"]
        sets = shingle(texts, c.shingle, c.ngram, seed=c.seed)
        if SIGNATURE_COLUMN in frame.columns:  # signed in parallel by `prepare`
            sigs = frame[SIGNATURE_COLUMN].to_numpy()[live].astype(np.uint32, copy=False)
        else:
            sigs = signatures(sets, c.num_perm, c.seed, c.batch_docs, show=self.show_progress)
        docs = np.flatnonzero(sets.counts() > 0)
        left, right = band_candidates(sigs, docs, self.bands, self.rows)
        similarity = sets.jaccard(left, right)
        left, right = live[left], live[right]
        verified = similarity >= c.threshold
        self.candidates, self.verified = len(left), int(verified.sum())

        roots = union_find(frame.height, left[verified], right[verified])
        cluster, keeper, is_keeper = keep_best_of_groups(roots, keep_rank(frame, c.keep_order, text))
        duplicate = (cluster >= 0) & ~is_keeper
        dup_rows = np.flatnonzero(duplicate)
        kept_similarity = np.full(frame.height, np.nan)
        kept_similarity[dup_rows] = sets.jaccard(position[dup_rows], position[keeper[dup_rows]])
        # A cluster is a chain of verified pairs, so a member can sit below the threshold
        # to its keeper: its reason then also names its closest verified link.
        nearest = np.zeros(frame.height)
        np.maximum.at(nearest, left[verified], similarity[verified])
        np.maximum.at(nearest, right[verified], similarity[verified])
        ids = frame["id"].cast(pl.String).to_numpy()
        clusters = pl.Series("dup_cluster", cluster, dtype=pl.Int64)
        frame = frame.with_columns(pl.when(clusters >= 0).then(clusters).alias("dup_cluster"))
        to_keeper = pl.lit(pl.Series(np.round(kept_similarity, 2)))
        reason = pl.select(
            pl.format("near_duplicate: of {} jaccard={}", pl.lit(pl.Series(ids[keeper])), to_keeper)
            + pl.when(to_keeper < c.threshold)
            .then(pl.format(" (same cluster via a row at jaccard={})", pl.lit(pl.Series(np.round(nearest, 2)))))
            .otherwise(pl.lit(""))
        ).to_series()
        self.notes.append(
            f"{self.name}: {self.candidates} LSH candidate pairs, {self.verified} verified at "
            f"jaccard >= {c.threshold} ({self.bands} bands x {self.rows} rows)"
        )
        return self.drop(frame, pl.Series(duplicate), reason)
