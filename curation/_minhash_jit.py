"""The compiled kernels of `curation.minhash_kernel` (imported by it on first use only).

Kept in their own module so numba can cache them on disk: a jitted function must be a
module-level function to be cached.
"""

import numpy as np
from numba import njit, prange

from curation.minhash_kernel import EMPTY, FNV_PRIME


@njit(parallel=True, cache=True, nogil=True)
def band_keys(grams, offsets, a, b, bands, rows):  # pragma: no cover - compiled
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
def signatures(grams, offsets, a, b):  # pragma: no cover - compiled
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
