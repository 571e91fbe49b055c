"""Executors decide where a step's work runs, never what it computes.

`executor: local` (the default) runs everything in this process. `executor: {type: ray,
address: auto | ray://host:10001 | host:6379, workers: N}` runs curation stages on a Ray
cluster (row-local stages as Ray Data `map_batches` over blocks, the parallel part of
global stages the same way, their small global part here) and fans teacher requests out
over N Ray actors, each with its own teacher client, under one rate limiter and one
budget for the whole cluster. Stages and tasks never know which executor runs them: a
stage declares its `scope`, a task talks to a `Teacher`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Protocol, Union

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from curation.stages.base import Stage
from factory.teachers.base import Teacher
from factory.teachers.config import TeacherConfig


class LocalExecutorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["local"] = "local"


class RayExecutorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["ray"] = "ray"
    address: str = Field(
        "auto",
        description="Ray cluster: auto ($RAY_ADDRESS or a cluster started on this machine), host:port, or ray://host:10001.",
    )
    workers: Annotated[int, Field(ge=1)] = Field(
        2, description="Teacher actors (each with its own client and `concurrency`) and parallel stage blocks."
    )
    block_rows: Annotated[int, Field(ge=1)] = Field(2_000, description="Rows per block of a curation stage.")
    max_retries: Annotated[int, Field(ge=0)] = Field(
        2, description="Times a block or a teacher actor is retried when its worker process dies."
    )


ExecutorConfig = Annotated[Union[LocalExecutorConfig, RayExecutorConfig], Field(discriminator="type")]


def executor_shorthand(value: object) -> object:
    """`executor: local` / `executor: ray` mean the defaults of that type."""
    return {"type": value} if isinstance(value, str) else value


class Executor(Protocol):
    def apply(self, stage: Stage, frame: pl.DataFrame) -> pl.DataFrame:
        """`stage.apply(frame)`, computed wherever this executor runs work."""

    def teacher(self, config: TeacherConfig, cache_dir: Path | None) -> Teacher:
        """The teacher a step generates with (built once per step, closed by the step)."""

    def close(self) -> None: ...


class LocalExecutor:
    """Everything in this process: the reference every other executor must match."""

    def apply(self, stage: Stage, frame: pl.DataFrame) -> pl.DataFrame:
        return stage.apply(frame)

    def teacher(self, config: TeacherConfig, cache_dir: Path | None) -> Teacher:
        from factory.teachers import build_teacher

        return build_teacher(config, cache_dir=cache_dir)

    def close(self) -> None:
        """Nothing to release: everything ran in this process."""


def build_executor(config: LocalExecutorConfig | RayExecutorConfig | None) -> Executor:
    """The executor a run config names; `ray` connects to its cluster now (one line if it cannot)."""
    if config is None or config.type == "local":
        return LocalExecutor()
    from stillhouse.executors.ray_executor import RayExecutor

    return RayExecutor(config)


__all__ = [
    "Executor",
    "ExecutorConfig",
    "LocalExecutor",
    "LocalExecutorConfig",
    "RayExecutorConfig",
    "build_executor",
    "executor_shorthand",
]
