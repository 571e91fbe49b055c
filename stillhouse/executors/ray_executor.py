"""The Ray executor: curation stages over Ray Data blocks, teacher requests over Ray actors.

How a stage runs depends only on what it declares (`Stage.scope`, `prepared_columns`,
`portable`):
- row-local and portable (heuristics, entropy with an absolute cut, consistency with a
  known label set): `map_batches` over blocks of `block_rows`, in order;
- global with a parallel part (MinHash: signatures; semantic dedup: embeddings, one model
  per actor, loaded once): `prepare` as `map_batches`, then the small global part
  (banding, clustering, marking) here, on the ids and prepared columns;
- anything else (exact dedup, quantile cuts, the judge, whose teacher fans its requests
  out over the cluster anyway): here, as the local executor would.
A block whose worker dies is retried (`max_retries`); when retries run out the step fails
with one line, never with a partial frame.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path

import polars as pl
import pyarrow as pa

from curation.stages.base import Scope, Stage, with_drop_columns
from factory.teachers.base import Teacher
from factory.teachers.config import TeacherConfig
from stillhouse.executors import RayExecutorConfig

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def connect(address: str) -> str:
    """Join the cluster at `address` (never start one) and return its address; one line naming the
    address if it cannot."""
    import ray

    from stillhouse.executors.ray_teacher import ExecutorError

    if ray.is_initialized():  # this process already drives a cluster
        return ray.get_runtime_context().gcs_address
    target = resolve_address(address)
    _probe(target)  # ray.init waits minutes on an address where nothing listens: fail in seconds instead
    try:
        ray.init(address=target, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError... depending on the address kind
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise ExecutorError(
            f"executor: no Ray cluster reachable at {target} ({lines[0] if lines else type(exc).__name__}); "
            "start one with `ray start --head` or set executor.address / RAY_ADDRESS"
        ) from None
    return target


def resolve_address(address: str) -> str:
    """`auto`: $RAY_ADDRESS, else the cluster `ray start` last started on this machine."""
    from stillhouse.executors.ray_teacher import ExecutorError

    if address != "auto":
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if current.is_file() and current.read_text().strip():
        return current.read_text().strip()
    raise ExecutorError(
        "executor: no Ray cluster found for address 'auto' (RAY_ADDRESS is unset and none was started on this "
        "machine); start one with `ray start --head` or set executor.address"
    )


def _probe(target: str, timeout_s: float = 5.0) -> None:
    from stillhouse.executors.ray_teacher import ExecutorError

    hostport = target.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(f"executor: '{target}' is not a Ray address (host:port or ray://host:port)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ExecutorError(
            f"executor: no Ray cluster reachable at {target} ({exc.strerror or exc}); start one with "
            "`ray start --head` or set executor.address / RAY_ADDRESS"
        ) from None


class _BlockFunction:
    """`stage.<method>(block)` on one Arrow block (a class so an actor builds the stage's model once)."""

    def __init__(self, stage: Stage, method: str) -> None:
        self.stage = stage
        self.method = method

    def __call__(self, block: pa.Table) -> pa.Table:
        frame = pl.from_arrow(block)
        return getattr(self.stage, self.method)(frame).to_arrow()


class RayExecutor:
    def __init__(self, config: RayExecutorConfig) -> None:
        self.config = config
        self.address = connect(config.address)  # what error lines name

    # -- curation ---------------------------------------------------------------
    def apply(self, stage: Stage, frame: pl.DataFrame) -> pl.DataFrame:
        if not stage.portable or frame.height <= 1:
            return stage.apply(frame)
        if stage.scope is Scope.ROW:
            return self._map(stage, "apply", frame)
        if stage.prepared_columns:
            prepared = self._map(stage, "prepare", with_drop_columns(frame))
            return stage.apply(prepared).drop(list(stage.prepared_columns), strict=False)
        return stage.apply(frame)

    def _map(self, stage: Stage, method: str, frame: pl.DataFrame) -> pl.DataFrame:
        import ray
        import ray.data

        from stillhouse.executors.ray_teacher import ExecutorError, _first

        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # blocks come back in row order
        context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        table = frame.to_arrow()
        step = self.config.block_rows
        blocks = [table.slice(start, step) for start in range(0, table.num_rows, step)]
        dataset = ray.data.from_arrow(blocks)
        retries = self.config.max_retries
        # Long-lived actors, each holding the stage: a model a stage loads (embeddings for
        # semantic dedup or open-ended consistency) is loaded once per actor, not per block.
        how = {
            "fn_constructor_args": (stage, method),
            "compute": ray.data.ActorPoolStrategy(size=self.config.workers),
            "max_restarts": retries,
            "max_task_retries": retries,
        }
        function = _BlockFunction
        try:
            mapped = dataset.map_batches(function, batch_size=None, batch_format="pyarrow", zero_copy_batch=True, **how)
            tables = ray.get(mapped.to_arrow_refs())
        except Exception as exc:
            raise ExecutorError(
                f"executor: stage '{stage.name}' failed on the Ray cluster at {self.address} ({_first(exc)}); "
                "nothing was written, run the same command to resume"
            ) from None
        parts = [pl.from_arrow(t) for t in tables if t.num_rows]
        result = pl.concat(parts, how="vertical_relaxed") if parts else frame.clear()
        if result.height != frame.height:
            raise ExecutorError(
                f"executor: stage '{stage.name}' returned {result.height} of {frame.height} rows from the Ray "
                f"cluster at {self.address}; nothing was written"
            )
        return result

    # -- generation -------------------------------------------------------------
    def teacher(self, config: TeacherConfig, cache_dir: Path | None) -> Teacher:
        from stillhouse.executors.ray_teacher import RayTeacher

        return RayTeacher(
            config, cache_dir, workers=self.config.workers, max_retries=self.config.max_retries, address=self.address
        )

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
