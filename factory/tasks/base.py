"""What every task shares: the Task contract, record building, batched teacher calls, shards.

A task turns records into teacher requests and generations back into records of
the record schema. Rows a task eliminates are returned too, with `drop_stage` and
`drop_reason` set, so the funnel shows every decision. All randomness comes from
the task config's seed, so re-running a task on the same inputs issues the very
same requests (and the teacher's response cache answers them for free).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl
import pyarrow as pa
from tqdm.auto import tqdm

from factory.errors import SchemaError
from factory.schema import RECORD_SCHEMA, conform, record_id
from factory.shards import ShardWriter
from factory.teachers.base import Generation, Teacher, TeacherRequest


def prompt_text(instruction: str, input: str | None) -> str:
    """The user message for an instruction and its (possibly empty) input."""
    return f"{instruction}\n\n{input}" if input else instruction


def stable_seed(*parts: object) -> int:
    """A 31-bit seed derived from `parts` (same parts -> same seed on every machine and run)."""
    digest = hashlib.sha256(json.dumps([str(part) for part in parts]).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def new_record(
    instruction: str, input: str = "", origin: str = "seed", parent_id: str | None = None, **columns: Any
) -> dict[str, Any]:
    """A record row (a dict) with its content-hash id."""
    return {
        "id": record_id(instruction, input, origin, parent_id),
        "instruction": instruction,
        "input": input,
        "origin": origin,
        "parent_id": parent_id,
        **columns,
    }


def rejected(row: dict[str, Any], stage: str, reason: str) -> dict[str, Any]:
    """The row marked as dropped by `stage` (`reason` is `code` or `code: detail`)."""
    return {**row, "drop_stage": stage, "drop_reason": reason}


def generation_columns(generation: Generation, chosen: int = 0) -> dict[str, Any]:
    """samples / response / teacher columns of a successful generation."""
    return {
        "samples": [sample.as_record() for sample in generation.samples],
        "response": generation.samples[chosen].text if generation.samples else None,
        "teacher": generation.teacher.record(generation.request),
    }


def records_frame(rows: Sequence[dict[str, Any]]) -> pl.DataFrame:
    """Rows (dicts) -> a frame conformed to the record schema; extra keys become extra columns."""
    names: list[str] = []
    for row in rows:
        names.extend(name for name in row if name not in names)
    arrays, fields = [], []
    for field in RECORD_SCHEMA:
        if field.name in names:
            arrays.append(pa.array([row.get(field.name) for row in rows], type=field.type))
            fields.append(field.with_nullable(True))
    for name in names:
        if RECORD_SCHEMA.get_field_index(name) < 0:
            column = pa.array([row.get(name) for row in rows])
            arrays.append(column)
            fields.append(pa.field(name, column.type))
    if not rows:
        return pl.from_arrow(conform(RECORD_SCHEMA.empty_table()))
    return pl.from_arrow(conform(pa.Table.from_arrays(arrays, schema=pa.schema(fields))))


def concat_records(frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
    frames = [frame for frame in frames if frame.height]
    if not frames:
        return records_frame([])
    return pl.from_arrow(conform(pl.concat(frames, how="diagonal_relaxed").to_arrow()))


class ShardBuffer:
    """Collects a task's output rows and writes a shard every `shard_size` rows."""

    def __init__(self, shards: ShardWriter | None, shard_size: int) -> None:
        self.shards = shards
        self.shard_size = shard_size
        self.pending: list[dict[str, Any]] = []
        self.frames: list[pl.DataFrame] = []

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        self.pending.extend(rows)
        while len(self.pending) >= self.shard_size:
            self._write(self.pending[: self.shard_size])
            self.pending = self.pending[self.shard_size :]

    def _write(self, rows: Sequence[dict[str, Any]]) -> None:
        frame = records_frame(rows)
        self.frames.append(frame)
        if self.shards is not None:
            self.shards.append(frame)

    def finish(self) -> pl.DataFrame:
        """Write the remainder and return every row added, as one frame."""
        if self.pending:
            self._write(self.pending)
            self.pending = []
        return concat_records(self.frames)


async def generate_batched(
    teacher: Teacher, requests: Sequence[TeacherRequest], description: str, batch_size: int = 64
) -> list[Generation]:
    """`teacher.generate` in batches behind a progress bar with a total."""
    generations: list[Generation] = []
    with tqdm(total=len(requests), desc=description, unit="req", disable=not requests) as bar:
        for start in range(0, len(requests), batch_size):
            batch = list(requests[start : start + batch_size])
            generations.extend(await teacher.generate(batch))
            bar.update(len(batch))
    return generations


async def answer_rows(
    teacher: Teacher,
    rows: Sequence[dict[str, Any]],
    request_for: Callable[[dict[str, Any]], TeacherRequest],
    handle: Callable[[dict[str, Any], Generation], dict[str, Any]],
    buffer: ShardBuffer,
    batch_size: int,
    description: str,
) -> None:
    """One request per row, in batches behind a progress bar; `handle` turns each answer into the output row.

    Rows already dropped by an earlier stage keep that drop and pass through in place, unanswered.
    """
    total = sum(1 for row in rows if not row.get("drop_stage"))
    with tqdm(total=total, desc=description, unit="row", disable=not total) as bar:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            live = [row for row in chunk if not row.get("drop_stage")]
            answers = iter(await teacher.generate([request_for(row) for row in live]) if live else [])
            buffer.add([row if row.get("drop_stage") else handle(row, next(answers)) for row in chunk])
            bar.update(len(live))


NOT_ISSUED_PREFIX = "not issued: "


def failure_reason(generation: Generation) -> str:
    """drop_reason of a row whose request got no answer: `not_issued` (the budget stopped it) or
    `teacher_error`. Neither is cached, so the next run of the same command asks again."""
    error = generation.error or "no sample"
    if error.startswith(NOT_ISSUED_PREFIX):
        return f"not_issued: {error[len(NOT_ISSUED_PREFIX) :]}"
    return f"teacher_error: {error}"


def first_text(generation: Generation) -> str | None:
    """Text of the first sample, or None when the request failed or returned nothing."""
    if not generation.ok or not generation.samples:
        return None
    return generation.samples[0].text


class Task(ABC):
    """Records in, records (kept and rejected) out."""

    stage: str = "task"

    @abstractmethod
    async def run(self, records: pl.DataFrame, teacher: Teacher, shards: ShardWriter | None = None) -> pl.DataFrame:
        """Run the task; returns record-schema rows (dropped ones carry drop_stage/drop_reason)."""

    @abstractmethod
    def estimate_requests(self, n_records: int) -> int:
        """Upper bound on teacher requests for `n_records` input records (for dry runs)."""


def live_records(records: pl.DataFrame) -> pl.DataFrame:
    """Records no earlier stage dropped (generative tasks grow only from these)."""
    if "drop_stage" not in records.columns:
        return records
    return records.filter(pl.col("drop_stage").is_null())


def require_columns(records: pl.DataFrame, columns: Sequence[str], stage: str) -> None:
    missing = [name for name in columns if name not in records.columns]
    if missing:
        raise SchemaError(f"task '{stage}': input records lack column(s) {', '.join(missing)}")
