"""The one atomic write: a file appears whole under its name or not at all.

Every writer (run state, step outputs, generation shards, review state, reports, the
dataset store) goes through `atomic_path`: write to a temporary name unique to this
process and call, fsync it, rename it over the target, fsync the directory so the
rename itself survives a power cut. A crash leaves at most a hidden `.NAME.tmp-*` file
that no reader looks at; two processes never share a temporary name.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from factory.errors import name_os_error


def temporary_name(path: Path) -> Path:
    """A hidden sibling of `path`, unique to this process and call."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` durably, on error it is removed."""
    path = Path(path)
    temporary = temporary_name(path)
    try:
        yield temporary
        fsync_path(temporary)
        os.replace(temporary, path)
    except BaseException as exc:
        temporary.unlink(missing_ok=True)
        name_os_error(exc, path)  # buffered writes raise [Errno 28] without a file name
        raise
    fsync_path(path.parent)


def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(path: Path | str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_frame_atomic(frame: pl.DataFrame, path: Path | str) -> None:
    with atomic_path(path) as temporary:
        frame.write_parquet(temporary)
