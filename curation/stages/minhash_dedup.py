"""MinHash near-duplicates: batched signatures, LSH banding, every candidate verified by true Jaccard.

LSH only proposes candidates: a pair is a duplicate when the Jaccard similarity of its
shingle sets, computed exactly, reaches the threshold. Verified pairs are joined into
clusters by union-find and each cluster keeps its best row under `keep_order` (judge
score, then consistency, then length by default), not whichever came first.

It scales by streaming: documents are sketched a block at a time (n-gram hashes with
numpy, signatures and the LSH index in rensa's Rust code), keeping only each
document's signature. The index flags every document that shares a band with another;
candidate pairs exist only among those, so exact shingle sets and explicit band
buckets are built for the flagged few, not for the corpus.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import rensa

from curation.config import MinHashDedupConfig
from curation.stages.base import Stage, active, keep_best_of_groups, keep_rank, progress, union_find
from curation.text import gram_hashes, joined, shingle


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


def signatures(grams: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> rensa.RMinHashDigestMatrix:
    """MinHash signatures of documents given as flat gram hashes + row offsets (rensa, in Rust)."""
    return rensa.RMinHash.digest_matrix_from_flat_token_hashes(grams, offsets.astype(np.uint64), num_perm, seed)


def signature_rows(grams: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """The same signatures as a (documents, num_perm) uint32 array (slow per row: for the few candidates)."""
    matrix = signatures(grams, offsets, num_perm, seed)
    return np.array(matrix.to_rows(), dtype=np.uint32).reshape(len(offsets) - 1, num_perm)


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


def _live_texts(frame: pl.DataFrame, live: np.ndarray, columns: list[str]) -> pl.Series:
    """The text of the live rows; the column itself (no copy of a large corpus) when it is all there is."""
    if len(columns) == 1 and len(live) == frame.height and frame.schema[columns[0]] == pl.String:
        return frame[columns[0]]  # nulls are read as "" by the shingler
    return frame[live].select(joined(columns).alias("t"))["t"]


class MinHashDedup(Stage):
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

    def flag_candidates(self, texts: pl.Series) -> np.ndarray:
        """Indices of the texts that share an LSH band with another text.

        Streams blocks: gram hashes -> signatures -> the LSH index (all in rensa), so the
        only per-document state kept is its signature (4 bytes x permutations).
        """
        c = self.config
        perms = self.bands * self.rows
        index = rensa.RMinHashLSH(c.threshold, perms, self.bands)
        blocks = range(0, len(texts), c.block_docs)
        matrices: list[rensa.RMinHashDigestMatrix] = []
        if self.show_progress:
            blocks = progress(blocks, total=len(blocks), description=f"{self.name}: sketching")
        for start in blocks:
            grams, offsets = gram_hashes(texts.slice(start, c.block_docs), c.shingle, c.ngram, seed=c.seed)
            matrix = signatures(grams, offsets, perms, c.seed)
            index.insert_matrix(matrix, start_key=start)
            matrices.append(matrix)
        if not matrices:
            return np.zeros(0, dtype=np.int64)
        flags = np.concatenate([np.asarray(index.query_duplicate_flags_matrix(m), dtype=bool) for m in matrices])
        return np.flatnonzero(flags)

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        c = self.config
        text = joined(c.columns)
        # Only rows still live are sketched: earlier stages' drops cost nothing.
        live = np.flatnonzero(active(frame).to_numpy())
        position = np.full(frame.height, -1)  # frame row -> index among the live rows
        position[live] = np.arange(len(live))
        texts = _live_texts(frame, live, c.columns)
        flagged = self.flag_candidates(texts)
        # Candidate pairs exist only among flagged rows: exact sets and signature rows for those alone.
        sets = shingle(texts[flagged], c.shingle, c.ngram, seed=c.seed)
        grams, offsets = gram_hashes(texts[flagged], c.shingle, c.ngram, seed=c.seed)
        sigs = signature_rows(grams, offsets, self.bands * self.rows, c.seed)
        left, right = band_candidates(sigs, np.flatnonzero(sets.counts() > 0), self.bands, self.rows)
        similarity = sets.jaccard(left, right)
        left, right = live[flagged[left]], live[flagged[right]]
        position[live] = -1
        position[live[flagged]] = np.arange(len(flagged))  # frame row -> index into `sets`
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
