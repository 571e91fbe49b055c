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
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from factory.atomic import write_text_atomic
from factory.errors import StillhouseError
from factory.schema import canonical_json

STATE_FILE = "state.json"
log = logging.getLogger(__name__)


class RunStateError(StillhouseError):
    """A run directory or its state file is missing or unreadable."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(canonical_json(parts).encode("utf-8")).hexdigest()[:16]


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
        write_text_atomic(self.directory / STATE_FILE, json.dumps(data, indent=2) + "\n")

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
        log.info("%s: started (fingerprint %s)", step, step_fingerprint)

    def finish(self, step: str, status: str = "done", **result: Any) -> None:
        """Record a step's result. Any status but "done" (e.g. "partial") makes the next run redo it."""
        self.steps[step].update(status=status, finished_at=now(), **result)
        self.save()
        log.log(
            logging.INFO if status == "done" else logging.WARNING,
            "%s: %s %s",
            step,
            status,
            json.dumps(result, default=str),
        )

    def fail(self, step: str, error: BaseException) -> None:
        """Record why a step stopped, so `runs show` can say it."""
        message = str(error) or type(error).__name__
        if isinstance(error, KeyboardInterrupt):
            message = "interrupted"
        log.error("%s: failed: %s", step, message)
        self.steps.setdefault(step, {}).update(status="failed", finished_at=now(), error=message)
        self.save()

    def add_teacher_stats(self, stats: dict[str, int | float]) -> None:
        for key, value in stats.items():
            self.teacher[key] = self.teacher.get(key, 0) + value
        self.save()


def list_runs(root: Path) -> list[RunState]:
    if not root.is_dir():
        return []
    return [RunState.load(path.parent) for path in sorted(root.glob(f"*/{STATE_FILE}"))]
