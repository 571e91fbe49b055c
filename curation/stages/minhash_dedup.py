"""MinHash near-duplicates: streamed band keys, LSH buckets, every candidate verified by true Jaccard.

LSH only proposes candidates: a pair is a duplicate when the Jaccard similarity of its
shingle sets, computed exactly, reaches the threshold. Verified pairs are joined into
clusters by union-find and each cluster keeps its best row under `keep_order` (judge
score, then consistency, then length by default), not whichever came first.

It scales by streaming, as datatrove splits it: documents are sketched a block at a
time (n-gram hashes with numpy, signatures and band keys in one compiled pass), and
only each document's band keys (8 bytes x bands) are kept. Buckets are then formed per
band over those keys alone, and exact shingle sets are built only for the documents
that landed in a shared bucket.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from curation.against import load_references
from curation.config import MinHashDedupConfig
from curation.minhash_kernel import band_keys
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
from curation.text import gram_hashes, joined, shingle

KERNEL = "mshift1"  # names the signature family in cache keys: change it when the hashing changes
KEYS_COLUMN = "_minhash_keys"  # prepared in parallel: each live row's LSH band keys
GRAMS_COLUMN = "_minhash_has_grams"


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


def band_candidates(keys: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique (left, right) pairs of `docs` (left < right) with equal keys in at least one band.

    `keys` is (documents, bands); `docs` the rows of it that take part (e.g. non-empty ones).
    """
    lefts, rights = [], []
    for band in range(keys.shape[1]):
        key = keys[docs, band]
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        run_start = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        run_size = np.diff(np.r_[run_start, len(docs)])
        shared = np.repeat(run_size > 1, run_size)  # only buckets of two or more make pairs
        position = np.flatnonzero(shared)
        # every member pairs with each later member of its bucket
        later = (np.repeat(run_start + run_size, run_size) - np.arange(len(docs)) - 1)[position]
        left = np.repeat(position, later)
        step = np.arange(len(left)) - np.repeat(np.cumsum(later) - later, later) + 1
        lefts.append(docs[order[left]])
        rights.append(docs[order[left + step]])
    if not lefts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    left, right = np.concatenate(lefts), np.concatenate(rights)
    low, high = np.minimum(left, right).astype(np.int64), np.maximum(left, right).astype(np.int64)
    pairs = np.unique(low * (int(keys.shape[0]) + 1) + high)
    return pairs // (keys.shape[0] + 1), pairs % (keys.shape[0] + 1)


def shared_band_pairs(left_keys: np.ndarray, right_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique (i, j) with row i of `left_keys` and row j of `right_keys` equal in at least one band."""
    pairs = [
        pl.DataFrame({"k": left_keys[:, band], "i": np.arange(len(left_keys))})
        .join(pl.DataFrame({"k": right_keys[:, band], "j": np.arange(len(right_keys))}), on="k")
        .select("i", "j")
        for band in range(left_keys.shape[1])
    ]
    joined_pairs = pl.concat(pairs).unique().sort("i", "j") if pairs else pl.DataFrame({"i": [], "j": []})
    return joined_pairs["i"].to_numpy().astype(np.int64), joined_pairs["j"].to_numpy().astype(np.int64)


def _live_texts(frame: pl.DataFrame, live: np.ndarray, columns: list[str]) -> pl.Series:
    """The text of the live rows; the column itself (no copy of a large corpus) when it is all there is."""
    if len(columns) == 1 and len(live) == frame.height and frame.schema[columns[0]] == pl.String:
        return frame[columns[0]]  # nulls are read as "" by the shingler
    return frame[live].select(joined(columns).alias("t"))["t"]


class MinHashDedup(Stage):
    # Global, split as datatrove does: band keys per block (parallel, `prepare`), then buckets,
    # exact-Jaccard verification of the candidates and keep-best marking on the whole frame.
    prepared_columns = (KEYS_COLUMN, GRAMS_COLUMN)

    def __init__(self, config: MinHashDedupConfig | None = None, show_progress: bool = True) -> None:
        super().__init__()
        self.config = config or MinHashDedupConfig()
        self.name = self.config.name or "minhash_dedup"
        self.reference_store: DatasetStore | None = None  # where `against` refs resolve (default store if None)
        self.show_progress = show_progress
        c = self.config
        if c.bands is None:
            self.bands, self.rows = lsh_shape(c.threshold, c.num_perm)
        else:
            self.bands, self.rows = c.bands, c.num_perm // c.bands

    @property
    def required_columns(self) -> tuple[str, ...]:
        return ("id", *self.config.columns)

    def sketch(self, texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """(texts, bands) LSH band keys, computed a block at a time (the only per-document state kept),
        and whether each text has any gram at all (an empty one duplicates nothing)."""
        c = self.config
        blocks = range(0, len(texts), c.block_docs)
        if self.show_progress:
            blocks = progress(blocks, total=len(blocks), description=f"{self.name}: sketching")
        keys = np.empty((len(texts), self.bands), dtype=np.uint64)
        has_grams = np.zeros(len(texts), dtype=bool)
        for start in blocks:
            grams, offsets = gram_hashes(texts.slice(start, c.block_docs), c.shingle, c.ngram, seed=c.seed)
            stop = start + len(offsets) - 1
            keys[start:stop] = band_keys(grams, offsets, self.bands, self.rows, c.seed)
            has_grams[start:stop] = np.diff(offsets) > 0
        return keys, has_grams

    def prepare(self, block: pl.DataFrame) -> pl.DataFrame:
        """Band keys of a block's live rows (zeros and no grams for dropped rows): row-local, parallel."""
        block = with_drop_columns(block)
        live = np.flatnonzero(active(block).to_numpy())
        keys = np.zeros((block.height, self.bands), dtype=np.uint64)
        has_grams = np.zeros(block.height, dtype=bool)
        if len(live):
            keys[live], has_grams[live] = self.sketch(_live_texts(block, live, self.config.columns))
        return block.with_columns(pl.Series(KEYS_COLUMN, keys), pl.Series(GRAMS_COLUMN, has_grams))

    def _sketch_live(self, frame: pl.DataFrame, live: np.ndarray, texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """The live rows' band keys: as `prepare` computed them in parallel when present, else here."""
        if KEYS_COLUMN in frame.columns:
            keys = frame[KEYS_COLUMN].to_numpy()[live].astype(np.uint64, copy=False)
            return keys, frame[GRAMS_COLUMN].to_numpy()[live]
        return self.sketch(texts)

    def drop_published(self, frame: pl.DataFrame, live: np.ndarray, texts: pl.Series) -> pl.DataFrame:
        """Drop live rows at jaccard >= threshold to a kept row of an `against` version (exactly verified)."""
        c = self.config
        new_keys, new_has = self.sketch(texts)
        for reference in load_references(c.against, c.columns, self.reference_store):
            shape = f"{c.shingle}{c.ngram}-{self.bands}x{self.rows}-seed{c.seed}-{'+'.join(c.columns)}"
            known = reference.cached(f"minhash-{shape}-{KERNEL}", lambda r=reference: self.sketch(r.texts)[0])
            new, old = shared_band_pairs(new_keys[new_has], known)
            new = np.flatnonzero(new_has)[new]
            if not len(new):
                continue
            new_rows, new_at = np.unique(new, return_inverse=True)
            old_rows, old_at = np.unique(old, return_inverse=True)
            both = pl.concat([texts.gather(new_rows), reference.texts.gather(old_rows)])
            sets = shingle(both, c.shingle, c.ngram, seed=c.seed)
            similarity = sets.jaccard(new_at, old_at + len(new_rows))
            best = pl.DataFrame({"row": new, "old": old, "j": similarity}).filter(pl.col("j") >= c.threshold)
            best = best.sort("j", descending=True).unique("row", keep="first")
            rows = live[best["row"].to_numpy()]
            names = np.full(frame.height, None, dtype=object)
            names[rows] = reference.row_ref(best["old"].to_numpy()).to_numpy()
            jaccard = np.zeros(frame.height)
            jaccard[rows] = np.round(best["j"].to_numpy(), 2)
            hit = np.zeros(frame.height, dtype=bool)
            hit[rows] = True
            reason = pl.format(
                "near_duplicate: of {} jaccard={}",
                pl.lit(pl.Series(names, dtype=pl.String)),
                pl.lit(pl.Series(jaccard)),
            )
            frame = self.drop(frame, pl.Series(hit), reason)
        return frame

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        c = self.config
        text = joined(c.columns)
        # Only rows still live are sketched: earlier stages' drops cost nothing.
        live = np.flatnonzero(active(frame).to_numpy())
        texts = _live_texts(frame, live, c.columns)
        if c.against:
            frame = self.drop_published(frame, live, texts)
            still = active(frame).to_numpy()[live]
            live, texts = live[still], texts.filter(pl.Series(still))
        keys, has_grams = self._sketch_live(frame, live, texts)
        left, right = band_candidates(keys, np.flatnonzero(has_grams))
        # Exact shingle sets only for the rows in some candidate pair.
        members = np.unique(np.concatenate([left, right]))
        sets = shingle(texts.gather(members), c.shingle, c.ngram, seed=c.seed)
        similarity = sets.jaccard(np.searchsorted(members, left), np.searchsorted(members, right))
        left, right = live[left], live[right]
        position = np.full(frame.height, -1)  # frame row -> index into `sets`
        position[live[members]] = np.arange(len(members))
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
