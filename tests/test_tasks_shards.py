"""Parquet shards: atomic appends, resume numbering, and what survives a crash mid-task."""

from __future__ import annotations

import asyncio

import polars as pl
import pytest
from fixtures.scripted_teacher import ScriptedTeacher, request_log

from factory.errors import SchemaError
from factory.shards import ShardWriter, read_shards, shard_paths
from factory.tasks import RespondConfig, build_task
from factory.tasks.base import new_record


def records(count: int) -> pl.DataFrame:
    rows = [new_record(f"Question number {i}?", "") for i in range(count)]
    return pl.DataFrame(rows, schema_overrides={"parent_id": pl.String})


def test_append_numbering_resume_and_dedup(tmp_path):
    writer = ShardWriter(tmp_path)
    assert writer.append(pl.DataFrame({"id": [], "x": []}, schema={"id": pl.String, "x": pl.Int64})) is None
    writer.append(pl.DataFrame({"id": ["a", "b"], "x": [1, 2]}))
    writer.append(pl.DataFrame({"id": ["b", "c"], "x": [3, 4]}))
    resumed = ShardWriter(tmp_path)  # a new writer (a restarted run) continues the numbering
    path = resumed.append(pl.DataFrame({"id": ["d"], "x": [5]}))
    assert path.name == "shard-000002.parquet"
    frame = read_shards(tmp_path)
    assert frame.sort("id").to_dict(as_series=False) == {"id": ["a", "b", "c", "d"], "x": [1, 3, 4, 5]}


def test_half_written_shard_is_ignored(tmp_path):
    ShardWriter(tmp_path).append(pl.DataFrame({"id": ["a"], "x": [1]}))
    (tmp_path / ".shard-000001.parquet.tmp").write_bytes(b"PAR1 half a shard")  # the crash's shard in flight
    assert read_shards(tmp_path)["id"].to_list() == ["a"]
    assert ShardWriter(tmp_path).next_index == 1
    (tmp_path / "shard-000005.parquet").write_bytes(b"damaged by something else")
    with pytest.raises(SchemaError, match="shard-000005.parquet"):
        read_shards(tmp_path)


def test_read_shards_of_missing_directory_is_empty(tmp_path):
    assert read_shards(tmp_path / "none").height == 0


class CrashingTeacher(ScriptedTeacher):
    """Answers `fail_after` batches, then dies like a killed process would."""

    def __init__(self, fail_after: int) -> None:
        super().__init__(lambda request: f"answer {request.seed}")
        self.batches = 0
        self.fail_after = fail_after

    async def generate(self, requests):
        if self.batches == self.fail_after:
            raise KeyboardInterrupt("killed")
        self.batches += 1
        return await super().generate(requests)


def test_task_shards_survive_a_crash_and_a_rerun_completes(tmp_path):
    config = RespondConfig(type="respond", n=1, batch_size=4, shard_size=4, seed=2)
    frame = records(10)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(build_task(config).run(frame, CrashingTeacher(fail_after=2), ShardWriter(tmp_path)))
    survived = read_shards(tmp_path)
    assert survived.height == 8  # two full shards written before the crash; only the shard in flight is lost
    assert len(shard_paths(tmp_path)) == 2

    # the rerun issues the same requests (the response cache would answer the first 8 for free)
    crashed, fresh = CrashingTeacher(fail_after=2), ScriptedTeacher(lambda request: f"answer {request.seed}")
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(build_task(config).run(frame, crashed))
    asyncio.run(build_task(config).run(frame, fresh, ShardWriter(tmp_path)))
    assert request_log(crashed) == request_log(fresh)[:8]
    final = read_shards(tmp_path)
    assert final.height == 10 and final["id"].n_unique() == 10
    assert (
        final.filter(pl.col("id").is_in(survived["id"].to_list()))["response"].to_list()
        == survived["response"].to_list()
    )
