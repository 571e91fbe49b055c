"""Errors every Stillhouse layer raises for bad input.

The CLI turns any `StillhouseError` into one line on stderr and a non-zero exit;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno


class StillhouseError(Exception):
    """Base class: a problem with the user's input, files or environment."""


class SchemaError(StillhouseError):
    """A frame or file does not match the record schema (names column and row)."""


class ConfigError(StillhouseError):
    """A config file is malformed or has unknown/invalid keys (names file and line)."""


# errnos that are the machine's state (full disk, read-only mount, permissions), not a bug:
# they travel up as OSError so the CLI can say what to do (stillhouse/errors.py).
MACHINE_FAULT_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM})


def name_os_error(error: BaseException, path: object) -> None:
    """Give an OSError the path it concerns when it has none.

    Buffered writes and libraries (pyarrow) raise `[Errno 28]` without a file name; the
    CLI's one-line message must say where the disk is full.
    """
    if isinstance(error, OSError) and error.filename is None:
        error.filename = str(path)
