"""The MinHash inner loop, compiled: gram hashes in, LSH band keys out, one pass per document.

Signatures use the multiply-shift family h(x) = (a*x + b) >> 32 (a odd, 64-bit
arithmetic wrapping by design); a band's key hashes its `rows` minima together, so two
documents share a band key exactly when they agree on all of that band's rows (up to
64-bit collisions, which exact-Jaccard verification removes). The whole signature of
a document lives only in a small buffer; what is kept is `bands` keys of 8 bytes.
numba compiles it on first use (cached on disk) and spreads documents over the cores.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

EMPTY = 0xFFFFFFFF
FNV_PRIME = 0x100000001B3


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of every permutation: a odd, both uniform 64-bit, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
    b = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
    return a, b


@njit(parallel=True, cache=True, nogil=True)
def _band_keys(grams, offsets, a, b, bands, rows):  # pragma: no cover - compiled
    documents = len(offsets) - 1
    perms = bands * rows
    keys = np.empty((documents, bands), dtype=np.uint64)
    shift = np.uint64(32)
    for doc in prange(documents):
        signature = np.full(perms, np.uint64(EMPTY), dtype=np.uint64)
        for position in range(offsets[doc], offsets[doc + 1]):
            x = grams[position]
            for p in range(perms):
                value = (a[p] * x + b[p]) >> shift
                if value < signature[p]:
                    signature[p] = value
        for band in range(bands):
            key = np.uint64(0)
            for row in range(rows):
                key = (key ^ signature[band * rows + row]) * np.uint64(FNV_PRIME)
            keys[doc, band] = key
    return keys


@njit(parallel=True, cache=True, nogil=True)
def _signatures(grams, offsets, a, b):  # pragma: no cover - compiled
    documents = len(offsets) - 1
    result = np.full((documents, len(a)), np.uint32(EMPTY), dtype=np.uint32)
    shift = np.uint64(32)
    for doc in prange(documents):
        for position in range(offsets[doc], offsets[doc + 1]):
            x = grams[position]
            for p in range(len(a)):
                value = np.uint32((a[p] * x + b[p]) >> shift)
                if value < result[doc, p]:
                    result[doc, p] = value
    return result


def band_keys(grams: np.ndarray, offsets: np.ndarray, bands: int, rows: int, seed: int) -> np.ndarray:
    """(documents, bands) uint64 LSH band keys of documents given as flat gram hashes + row offsets."""
    a, b = permutations(bands * rows, seed)
    return _band_keys(grams.astype(np.uint64, copy=False), offsets.astype(np.int64, copy=False), a, b, bands, rows)


def signatures(grams: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """(documents, num_perm) uint32 MinHash signatures (a document without grams is all 0xFFFFFFFF)."""
    a, b = permutations(num_perm, seed)
    return _signatures(grams.astype(np.uint64, copy=False), offsets.astype(np.int64, copy=False), a, b)
