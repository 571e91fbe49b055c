"""The MinHash inner loop, compiled: gram hashes in, LSH band keys out, one pass per document.

Signatures use the multiply-shift family h(x) = (a*x + b) >> 32 (a odd, 64-bit
arithmetic wrapping by design); a band's key hashes its `rows` minima together, so two
documents share a band key exactly when they agree on all of that band's rows (up to
64-bit collisions, which exact-Jaccard verification removes). The whole signature of
a document lives only in a small buffer; what is kept is `bands` keys of 8 bytes.
numba compiles it on first use (cached on disk) and spreads documents over the cores;
it is imported only then, so commands that never dedup never pay for it.
"""

from __future__ import annotations

import functools
from types import ModuleType

import numpy as np

EMPTY = 0xFFFFFFFF
FNV_PRIME = 0x100000001B3


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of every permutation: a odd, both uniform 64-bit, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
    b = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
    return a, b


@functools.cache
def _compiled() -> ModuleType:
    """The jitted kernels, numba imported (and llvmlite made safe) on first use."""
    _llvmlite_answers_no_dunders()
    from curation import _minhash_jit

    return _minhash_jit


def _llvmlite_answers_no_dunders() -> None:
    """llvmlite's lazy `ffi.lib` answers *every* attribute, `__dict__` included, with a C-function
    wrapper. vLLM's kernel dispatcher scans every module's globals and calls `vars()` on them when
    its engine starts, which then fails ("'_lib_fn_wrapper' object has no attribute 'get'"); so
    once numba is loaded, a vLLM teacher in the same process could not start. Dunder names are
    never llvmlite functions (they are all `LLVMPY_*`): refuse them."""
    from llvmlite.binding import ffi

    wrapper = type(ffi.lib)
    if getattr(wrapper, "_stillhouse_patched", False):
        return
    lookup = wrapper.__getattr__

    def getattr_no_dunders(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return lookup(self, name)

    wrapper.__getattr__ = getattr_no_dunders
    wrapper._stillhouse_patched = True


def band_keys(grams: np.ndarray, offsets: np.ndarray, bands: int, rows: int, seed: int) -> np.ndarray:
    """(documents, bands) uint64 LSH band keys of documents given as flat gram hashes + row offsets."""
    a, b = permutations(bands * rows, seed)
    return _compiled().band_keys(
        grams.astype(np.uint64, copy=False), offsets.astype(np.int64, copy=False), a, b, bands, rows
    )


def signatures(grams: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """(documents, num_perm) uint32 MinHash signatures (a document without grams is all 0xFFFFFFFF)."""
    a, b = permutations(num_perm, seed)
    return _compiled().signatures(grams.astype(np.uint64, copy=False), offsets.astype(np.int64, copy=False), a, b)
