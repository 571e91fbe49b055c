"""Dedup against published versions: the reference rows, and arrays cached beside their version.

A dedup stage with `against: [name@vN, other@latest]` drops the rows of its frame that
duplicate a kept row of those versions, with a reason naming the version and the row
id. What a stage computes from a version (hash keys, MinHash band keys, embeddings) is
cached beside the version, never inside its immutable directory:
`<root>/<name>/.cache/v<N>-<manifest sha256[:16]>/<key>.npy`, so a later run reads it
instead of recomputing it, and a different version (or a rewritten one) never matches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from curation.store import DatasetStore, DatasetVersion
from curation.text import joined
from factory.atomic import atomic_path


@dataclass
class Reference:
    """The kept rows of one published version, as a dedup stage sees them."""

    version: DatasetVersion
    ids: np.ndarray  # str
    texts: pl.Series

    def row_ref(self, rows: np.ndarray) -> pl.Series:
        """`name@vN:<id>` of reference rows (what a drop reason names)."""
        return pl.Series([f"{self.version.ref}:{i}" for i in self.ids[rows]], dtype=pl.String)

    def cached(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """`compute()`, read from beside the version when an earlier run stored it."""
        directory = _cache_dir(self.version)
        if directory is None:  # object storage: nothing is written beside the version
            return compute()
        path = directory / f"{key}.npy"
        if path.is_file():
            return np.load(path, allow_pickle=False)
        value = compute()
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            np.save(handle, value, allow_pickle=False)
        return value


def load_references(refs: list[str], columns: list[str], store: DatasetStore | None) -> list[Reference]:
    """The kept rows of each ref (hash-verified on read), with the text of `columns` joined."""
    store = store or DatasetStore()
    references = []
    for ref in refs:
        version = store.resolve(ref)
        frame = version.read(["id", *columns])
        texts = frame.select(joined(columns).alias("t"))["t"]
        references.append(Reference(version, frame["id"].cast(pl.String).to_numpy(), texts))
    return references


def _cache_dir(version: DatasetVersion) -> Path | None:
    path = Path(str(version.path))
    if not path.is_dir():
        return None
    return path.parent / ".cache" / f"v{version.version}-{version.manifest_sha256[:16]}"
