"""A persistent response cache: SQLite in WAL mode, safe to share across processes.

Keys are `TeacherRequest.cache_key(identity)` (a hash of the request and of the
teacher, never of a secret); values are the generation's payload (samples, class
probabilities, usage), never the request's credentials or headers. Only successful
generations are stored, each as soon as it arrives, so a killed run keeps them.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from factory.errors import StillhouseError
from factory.teachers.base import Generation, Sample, TeacherIdentity, TeacherRequest, Usage

CACHE_FILE_NAME = "teacher_cache.sqlite"
_LOOKUP_CHUNK = 500  # SQLite's bound-parameter limit is 999 on old builds
_LOW_SPACE_BYTES = 1 << 20  # less free space than this: an I/O error is most likely a full disk


def generation_payload(generation: Generation) -> str:
    return json.dumps(
        {
            "samples": [sample.as_record() for sample in generation.samples],
            "class_probs": generation.class_probs,
            "usage": asdict(generation.usage),
            "token_ids_source": generation.token_ids_source,
        },
        separators=(",", ":"),
    )


def generation_from_payload(payload: str, request: TeacherRequest, teacher: TeacherIdentity) -> Generation:
    data = json.loads(payload)
    return Generation(
        request=request,
        teacher=teacher,
        samples=[Sample(**sample) for sample in data["samples"]],
        class_probs=data["class_probs"],
        usage=Usage(**data["usage"]),
        token_ids_source=data["token_ids_source"],
        cached=True,
    )


class CacheError(StillhouseError):
    """The response cache file is not a readable SQLite database (or the disk under it failed)."""


class ResponseCache:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit; every write is one small transaction. busy_timeout lets several
        # processes (resumed runs, parallel workers) share the file.
        with self._named_errors():
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=60000")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses "
                "(key TEXT PRIMARY KEY, payload TEXT NOT NULL, created REAL NOT NULL)"
            )

    @contextmanager
    def _named_errors(self) -> Iterator[None]:
        """SQLite's errors name no file: say which one and what to do about it."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):  # the disk under it: full, read-only, failing
                full = shutil.disk_usage(self.path.parent).free < _LOW_SPACE_BYTES
                remedy = "no space left on its device; free some space there" if full else "check its disk"
            else:  # the file itself: not a database, or malformed
                remedy = "move it aside (the requests it answered will be sent again)"
            raise CacheError(
                f"{self.path}: response cache unusable ({exc}); {remedy}, then run the same command again"
            ) from None

    def get_many(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        with self._named_errors():
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start : start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT key, payload FROM responses WHERE key IN ({marks})", chunk)
                found.update(rows.fetchall())
        return found

    def put(self, key: str, generation: Generation) -> None:
        with self._named_errors():
            self._db.execute(
                "INSERT OR IGNORE INTO responses (key, payload, created) VALUES (?, ?, ?)",
                (key, generation_payload(generation), time.time()),
            )

    def merge(self, path: Path | str) -> int:
        """Copy in every answer of another cache file (a worker's shard) that this one lacks; returns how many."""
        before = len(self)
        self._db.execute("ATTACH DATABASE ? AS shard", (str(path),))
        try:
            self._db.execute("INSERT OR IGNORE INTO responses SELECT key, payload, created FROM shard.responses")
        finally:
            self._db.execute("DETACH DATABASE shard")
        return len(self) - before

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
