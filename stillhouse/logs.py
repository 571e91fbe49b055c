"""Logging for the CLI: `-v`/`-q` on every command, and `runs/<name>/run.log` for a run.

The terminal shows what a person follows (progress bars, step lines, result tables);
log records carry the same step lines plus each step's start, outcome, request
counts, retries and errors. `-v` streams those records to stderr too (`-vv`: debug);
`-q` leaves only errors and each command's result. run.log always gets them at INFO,
appended across attempts, so a resumed run's history stays in one file.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOGGERS = ("stillhouse", "factory", "curation", "trainer")
RUN_LOG = "run.log"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_stderr_handler: logging.Handler | None = None
quiet = False  # -q: the step chatter is off; consoles that print it check this
_set_tqdm_disable = False


def configure(verbose: int = 0, quiet_flag: bool = False) -> None:
    """Apply -v (repeatable) / -q for this process; calling it again replaces the last setting."""
    global _stderr_handler, _set_tqdm_disable, quiet
    quiet = quiet_flag and not verbose
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)  # handlers decide what they show
    if _stderr_handler is not None:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(_stderr_handler)
        _stderr_handler = None
    if verbose:
        _stderr_handler = logging.StreamHandler(sys.stderr)
        _stderr_handler.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
        _stderr_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        for name in LOGGERS:
            logging.getLogger(name).addHandler(_stderr_handler)
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"  # tqdm reads its defaults from TQDM_* variables
    elif os.environ.get("TQDM_DISABLE") == "1" and _set_tqdm_disable:
        del os.environ["TQDM_DISABLE"]  # an earlier -q in this process set it, not the user
    _set_tqdm_disable = quiet


@contextmanager
def run_log(directory: Path) -> Iterator[Path]:
    """Append every Stillhouse log record of this process to `directory/run.log` while open."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RUN_LOG
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
        logging.getLogger(name).addHandler(handler)
    try:
        yield path
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        handler.close()
