"""Where data lives: local paths or fsspec URLs (`s3://bucket/prefix`, `gs://...`, `memory://...`).

Local paths keep their `pathlib` behaviour everywhere; a URL is opened through
fsspec, whose S3 filesystem honours the usual AWS settings (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, ...), so a cluster's workers reach the same data as the driver.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

URL_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

Location = str | Path


def is_url(location: Location) -> bool:
    """True for `scheme://...` other than `file://` (those are local paths)."""
    text = str(location)
    return bool(URL_PATTERN.match(text)) and not text.startswith("file://")


def as_location(value: Location) -> Location:
    """A URL stays a string (pathlib would fold `s3://` into `s3:/`); anything else becomes a Path."""
    return str(value) if is_url(value) else Path(str(value).removeprefix("file://"))


def filesystem(location: Location, **options: Any) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem holding `location` and the path inside it."""
    if not is_url(location):
        return LocalFileSystem(), str(Path(str(location).removeprefix("file://")).absolute())
    return url_to_fs(str(location), **options)


def is_local(fs: AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def join(base: Location, *parts: str) -> Location:
    """`base / part / ...` for Paths, `base/part/...` for URLs."""
    if isinstance(base, Path):
        return base.joinpath(*parts)
    return "/".join([str(base).rstrip("/"), *parts])
