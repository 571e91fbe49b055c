"""Faults of the machine (disk full, read-only mount, no permission) as one line each.

The CLI prints these instead of a traceback: they are the user's environment, not a
bug, and each names the path and what to do. Every write in a run is atomic, so after
the fix the same command resumes where the fault stopped it.
"""

from __future__ import annotations

import errno

RESUME = "then run the same command again (finished work is kept)"

# errno -> what the user should do about it
OS_FAULTS: dict[int, str] = {
    errno.EROFS: "read-only file system; point the output (publish.root, run_dir or --root) at a writable directory",
    errno.ENOSPC: "no space left on the device; free some space there",
    errno.EDQUOT: "disk quota exceeded; free some space there",
    errno.EACCES: "permission denied; make it writable for this user or choose another directory",
    errno.EPERM: "operation not permitted; make it writable for this user or choose another directory",
}


def os_fault_message(error: OSError) -> str | None:
    """One line naming the path and the remedy, or None for an OSError that is a bug."""
    remedy = OS_FAULTS.get(error.errno or -1)
    if remedy is None:
        return None
    where = error.filename if error.filename is not None else "(unknown path)"
    return f"{where}: {remedy}, {RESUME}"
