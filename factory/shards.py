"""Append-only Parquet shards: generation output survives a crash minus the shard in flight.

Each `append` writes one numbered shard to a temporary file and renames it into
place, so a shard is on disk whole or not at all. Numbering continues after the
shards already present, which is how a resumed run appends instead of overwriting.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from factory.atomic import atomic_path
from factory.errors import SchemaError

SHARD_PATTERN = re.compile(r"^shard-(\d{6})\.parquet$")


def shard_paths(directory: Path | str) -> list[Path]:
    """Complete shards in write order (temporary files of a crashed write are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    shards = [path for path in directory.iterdir() if SHARD_PATTERN.match(path.name)]
    return sorted(shards, key=lambda path: int(SHARD_PATTERN.match(path.name).group(1)))


class ShardWriter:
    """Writes frames as `shard-000000.parquet`, `shard-000001.parquet`, ... atomically."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = shard_paths(self.directory)
        self.next_index = int(SHARD_PATTERN.match(existing[-1].name).group(1)) + 1 if existing else 0
        self.rows_written = 0

    def append(self, frame: pl.DataFrame | pa.Table) -> Path | None:
        """Write one shard; returns its path (None for an empty frame, which writes nothing)."""
        table = frame.to_arrow() if isinstance(frame, pl.DataFrame) else frame
        if table.num_rows == 0:
            return None
        path = self.directory / f"shard-{self.next_index:06d}.parquet"
        with atomic_path(path) as temporary:
            pq.write_table(table, temporary)
        self.next_index += 1
        self.rows_written += table.num_rows
        return path


def read_shards(directory: Path | str) -> pl.DataFrame:
    """All shards concatenated in write order, one row per id (the last written wins)."""
    paths = shard_paths(directory)
    if not paths:
        return pl.DataFrame()
    frames = []
    for path in paths:
        try:
            frames.append(pl.read_parquet(path))
        except Exception as exc:  # a shard is renamed into place whole, so this is outside damage
            raise SchemaError(f"shard {path} cannot be read: {exc}") from None
    frame = pl.concat(frames, how="diagonal_relaxed")
    if "id" in frame.columns:
        frame = frame.unique(subset="id", keep="last", maintain_order=True)
    return frame
