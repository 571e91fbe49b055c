"""Text normalisation and shingling shared by the dedup stages, vectorised over whole columns.

Shingles are 32-bit hashes of word or character n-grams. They are computed for every
document at once: tokens are hashed by polars (words) or read as code points (chars),
n-gram hashes are rolled with numpy over the flat token array, and each document's set
is the sorted unique hashes of its slice. No Python loop runs per document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

ShingleKind = Literal["word", "char"]

_ROLL = np.uint64(0x100000001B3)  # FNV-64 prime: combines token hashes into an n-gram hash
_MIX1 = np.uint64(0xFF51AFD7ED558CCD)  # murmur3 fmix64 constants: spread bits before folding to 32
_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)


def normalize(text: pl.Expr) -> pl.Expr:
    """Lowercase, punctuation and symbols to spaces, whitespace collapsed, stripped (null -> '')."""
    return (
        text.fill_null("")
        .str.to_lowercase()
        .str.replace_all(r"[\p{P}\p{S}]+", " ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def joined(columns: list[str]) -> pl.Expr:
    """The configured text columns of a row joined by newlines (a null column counts as '')."""
    return pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in columns], separator="\n")


def _fmix32(values: np.ndarray) -> np.ndarray:
    x = values.copy()
    x ^= x >> np.uint64(33)
    x *= _MIX1
    x ^= x >> np.uint64(33)
    x *= _MIX2
    x ^= x >> np.uint64(33)
    return (x & np.uint64(0xFFFFFFFF)).astype(np.uint32)


@dataclass
class Shingles:
    """Every document's shingle set: `hashes[offsets[i]:offsets[i+1]]` sorted and unique."""

    hashes: np.ndarray  # uint32
    offsets: np.ndarray  # int64, len = documents + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def of(self, doc: int) -> np.ndarray:
        return self.hashes[self.offsets[doc] : self.offsets[doc + 1]]

    def jaccard(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """True Jaccard similarity of the shingle sets of each (left[i], right[i]) pair."""
        result = np.zeros(len(left), dtype=np.float64)
        for k, (a, b) in enumerate(zip(left.tolist(), right.tolist())):
            sa, sb = self.of(a), self.of(b)
            if len(sa) == 0 and len(sb) == 0:
                continue
            inter = len(np.intersect1d(sa, sb, assume_unique=True))
            result[k] = inter / (len(sa) + len(sb) - inter)
        return result


def _tokens(texts: pl.Series, kind: ShingleKind, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat uint64 token hashes of every (normalised) document, and the number of tokens per document."""
    texts = texts.cast(pl.String).fill_null("")
    if kind == "char":
        normalized = pl.select(normalize(pl.lit(texts))).to_series()
        counts = normalized.str.len_chars().to_numpy().astype(np.int64)
        flat = "".join(normalized.to_list()).encode("utf-32-le")
        return np.frombuffer(flat, dtype=np.uint32).astype(np.uint64), counts
    # The words `normalize` would leave, taken in one regex pass instead of two replaces and a split.
    words = texts.str.to_lowercase().str.extract_all(r"[^\p{P}\p{S}\s]+")
    counts = words.list.len().fill_null(0).to_numpy().astype(np.int64)
    return words.explode().drop_nulls().hash(seed=seed).to_numpy(), counts


def shingle(texts: pl.Series, kind: ShingleKind = "word", n: int = 3, seed: int = 0, block: int = 20_000) -> Shingles:
    """Shingle sets of raw texts (normalised here): n-grams of words or characters.

    A document shorter than n tokens is one shingle (all of its tokens); an empty one has none.
    Documents are processed `block` at a time to bound the flat temporaries' memory.
    """
    parts = [_shingle_block(texts.slice(start, block), kind, n, seed) for start in range(0, len(texts), block)]
    if not parts:
        return Shingles(hashes=np.zeros(0, dtype=np.uint32), offsets=np.zeros(1, dtype=np.int64))
    ends = np.cumsum([len(p.hashes) for p in parts])
    offsets = [parts[0].offsets] + [p.offsets[1:] + end for p, end in zip(parts[1:], ends[:-1])]
    return Shingles(hashes=np.concatenate([p.hashes for p in parts]), offsets=np.concatenate(offsets))


def gram_hashes(
    texts: pl.Series, kind: ShingleKind = "word", n: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Every document's n-gram hashes as one flat uint64 array (repeats kept, unsorted) and their row offsets.

    What a MinHash sketch needs: the minimum over a document's grams is the same for the
    multiset as for the set, so the sort and dedup that exact sets need are skipped. A
    document shorter than n tokens is one gram (all its tokens); an empty one has none.
    """
    tokens, counts = _tokens(texts, kind, seed)
    ends = np.cumsum(counts)
    grams = np.maximum(counts - (n - 1), np.minimum(counts, 1))  # short docs: one gram
    with np.errstate(over="ignore"):
        rolled = tokens.copy()
        for k in range(1, n):
            rolled[: len(tokens) - k] = rolled[: len(tokens) - k] * _ROLL + tokens[k:]
        # A gram starts at every position with n-1 tokens after it inside its document; a
        # short document's one gram starts at its first token and rolls only its own tokens.
        starts = ends - counts
        keep = np.zeros(len(tokens), dtype=bool)
        gram_start = np.repeat(starts, grams) + (np.arange(grams.sum()) - np.repeat(np.cumsum(grams) - grams, grams))
        keep[gram_start] = True
        hashes = rolled[keep]
        short = np.flatnonzero((counts > 0) & (counts < n))
        if len(short):
            hashes[np.cumsum(grams)[short] - 1] = _short_gram_hashes(tokens, starts[short], counts[short])
    offsets = np.concatenate([[0], np.cumsum(grams)]).astype(np.int64)
    return hashes, offsets


def _short_gram_hashes(tokens: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The one gram of each document with fewer than n tokens: its tokens rolled as far as they go."""
    result = tokens[starts].copy()
    with np.errstate(over="ignore"):
        for k in range(1, int(counts.max())):
            more = counts > k
            result[more] = result[more] * _ROLL + tokens[starts[more] + k]
    return result


def _shingle_block(texts: pl.Series, kind: ShingleKind, n: int, seed: int) -> Shingles:
    tokens, counts = _tokens(texts, kind, seed)
    docs = len(counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    total = len(tokens)
    doc_of_token = np.repeat(np.arange(docs, dtype=np.int64), counts)
    position = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
    fits = position <= np.repeat(counts, counts) - n  # an n-gram starting here stays inside its doc

    rolled = tokens.copy()
    short_docs = np.flatnonzero((counts > 0) & (counts < n))
    short_hash = np.zeros(len(short_docs), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(1, n + 1):
            if k > 1:
                shifted = np.zeros(total, dtype=np.uint64)
                shifted[: total - (k - 1)] = tokens[k - 1 :]
                rolled = rolled * _ROLL + shifted
            done = counts[short_docs] == k  # short docs are one shingle of their k tokens
            short_hash[done] = rolled[starts[short_docs[done]]]
        gram_docs = np.concatenate([doc_of_token[fits], short_docs])
        gram_hashes = _fmix32(np.concatenate([rolled[fits], short_hash]))
    # unique (doc, hash) pairs, sorted: each document's set as a contiguous sorted slice
    keys = np.sort((gram_docs.astype(np.uint64) << np.uint64(32)) | gram_hashes.astype(np.uint64))
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys  # sort + mask beats np.unique here
    hashes = (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    per_doc = np.bincount((keys >> np.uint64(32)).astype(np.int64), minlength=docs)
    offsets = np.concatenate([[0], np.cumsum(per_doc)]).astype(np.int64)
    return Shingles(hashes=hashes, offsets=offsets)
