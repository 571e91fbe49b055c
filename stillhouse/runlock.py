"""One process at a time per run directory.

Two copies of the same run would send every teacher request twice and race to
publish. The lock is an `fcntl` lock on `runs/<name>/run.lock`, held for the whole
run: the kernel drops it when the holder dies (even by SIGKILL), so a lock file left
by a dead process is simply taken over. The file holds the holder's pid for the
message a second process prints.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from factory.errors import StillhouseError

LOCK_FILE = "run.lock"


class RunLockedError(StillhouseError):
    """Another process is running the same run."""


@contextmanager
def run_lock(directory: Path) -> Iterator[None]:
    """Hold the run directory's lock, or raise `RunLockedError` naming the holder's pid."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunLockedError(
                f"{directory}: already running (pid {holder}); wait for it to finish, "
                "or stop it and run the same command to resume"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_holder(directory: Path) -> str | None:
    """The pid holding the run's lock, or None when no live process runs it."""
    path = directory / LOCK_FILE
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "unknown"
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def live_status(directory: Path, recorded: str) -> str:
    """A run's status as a person needs it: a run recorded "running" whose process is gone
    (killed, power cut, disk full before "failed" could be saved) is "stopped"."""
    if recorded != "running":
        return recorded
    holder = lock_holder(directory)
    return f"running (pid {holder})" if holder else "stopped (run the same command to resume)"
