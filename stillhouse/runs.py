"""Run state on disk: runs/<name>/state.json plus one directory per step.

A step is done when its output file exists and the state records it with the same
fingerprint (a hash of its config and of its input). Files are written to a temporary
name and renamed, so a run killed at any point finds either the old or the new
state, never a torn one; a resumed run skips finished steps and redoes the rest,
where the teacher's response cache makes already-answered requests free.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from factory.errors import StillhouseError, name_os_error
from factory.schema import canonical_json

STATE_FILE = "state.json"


class RunStateError(StillhouseError):
    """A run directory or its state file is missing or unreadable."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(canonical_json(parts).encode("utf-8")).hexdigest()[:16]


@contextmanager
def _temporary_beside(path: Path) -> Iterator[Path]:
    """A temporary name beside `path`; on failure it is removed (a full disk gets its
    space back) and the error names `path` (buffered writes raise without a name)."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield temporary
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        name_os_error(exc, path)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    with _temporary_beside(path) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)


def write_frame_atomic(frame: pl.DataFrame, path: Path) -> None:
    with _temporary_beside(path) as temporary:
        frame.write_parquet(temporary)
        os.replace(temporary, path)


@dataclass
class RunState:
    directory: Path
    name: str
    status: str = "new"
    started_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)
    attempts: int = 0
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    teacher: dict[str, int | float] = field(default_factory=dict)

    @classmethod
    def open(cls, directory: Path, name: str) -> RunState:
        """Load the state of a run, or start a fresh one."""
        path = directory / STATE_FILE
        if not path.exists():
            directory.mkdir(parents=True, exist_ok=True)
            return cls(directory=directory, name=name)
        return cls.load(directory)

    @classmethod
    def load(cls, directory: Path) -> RunState:
        path = directory / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunStateError(f"no run at {directory} ({STATE_FILE} missing)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunStateError(f"{path} is malformed ({exc})") from None
        return cls(directory=directory, **data)

    def save(self) -> None:
        self.updated_at = now()
        data = {key: value for key, value in self.__dict__.items() if key != "directory"}
        write_atomic(self.directory / STATE_FILE, (json.dumps(data, indent=2) + "\n").encode("utf-8"))

    def step_dir(self, step: str) -> Path:
        path = self.directory / "steps" / step.replace(":", "-")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def done(self, step: str, step_fingerprint: str) -> dict[str, Any] | None:
        """The recorded result of a finished step with this fingerprint, else None."""
        entry = self.steps.get(step)
        if entry and entry.get("status") == "done" and entry.get("fingerprint") == step_fingerprint:
            return entry
        return None

    def start(self, step: str, step_fingerprint: str) -> None:
        self.steps[step] = {"status": "running", "fingerprint": step_fingerprint, "started_at": now()}
        self.save()

    def finish(self, step: str, **result: Any) -> None:
        self.steps[step].update(status="done", finished_at=now(), **result)
        self.save()

    def add_teacher_stats(self, stats: dict[str, int | float]) -> None:
        for key, value in stats.items():
            self.teacher[key] = self.teacher.get(key, 0) + value
        self.save()


def list_runs(root: Path) -> list[RunState]:
    if not root.is_dir():
        return []
    return [RunState.load(path.parent) for path in sorted(root.glob(f"*/{STATE_FILE}"))]
