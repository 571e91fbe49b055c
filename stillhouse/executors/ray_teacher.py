"""Teacher requests fanned out over Ray actors, with the limits of one teacher for the whole cluster.

- Each `GenerationWorker` actor builds its own teacher (client or in-process engine) from
  the run's teacher config; `concurrency` applies per actor.
- One `ClusterLimits` actor holds the requests/tokens-per-minute limiter and the budget:
  every worker's teacher reserves its slots and its worst-case spend there, so the limits
  hold for all actors together, never per actor.
- The response cache works across workers: each worker looks answers up in the run's
  cache and in its own shard, and writes every answer to its shard the moment it arrives
  (`<cache>/shards/worker-<i>.sqlite`). The driver merges the shards into the run's cache
  when the teacher starts (so a killed run's answers count) and when it closes. A rerun
  therefore re-issues nothing any worker already answered. On several machines the run
  directory must be on storage every node mounts.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from pydantic import TypeAdapter

from factory.errors import StillhouseError
from factory.teachers.base import Generation, Teacher, TeacherIdentity, TeacherRequest
from factory.teachers.cache import ResponseCache
from factory.teachers.config import Budget, Prices, TeacherConfig
from factory.teachers.limits import BudgetTracker, RateLimiter, Reservation
from factory.teachers.managed import TeacherStats

SHARD_DIR = "shards"


class ExecutorError(StillhouseError):
    """The Ray cluster is unreachable, or a worker died for good."""


class ShardedCache(ResponseCache):
    """A worker's cache: reads the run's cache and its own shard, writes only its shard."""

    def __init__(self, shard: Path | str, main: Path | str | None) -> None:
        super().__init__(shard)
        self._main = ResponseCache(main) if main is not None and Path(main).exists() else None

    def get_many(self, keys: list[str]) -> dict[str, str]:
        found = self._main.get_many(keys) if self._main is not None else {}
        missing = [key for key in keys if key not in found]
        return {**found, **(super().get_many(missing) if missing else {})}

    def close(self) -> None:
        if self._main is not None:
            self._main.close()
        super().close()


@ray.remote
class ClusterLimits:
    """The one rate limiter and the one budget of a teacher used by many actors (an async actor)."""

    def __init__(self, rpm: int | None, tpm: int | None, budget: Budget | None, prices: Prices | None) -> None:
        self.limiter = RateLimiter(rpm, tpm, clock=time.time)  # wall clock: workers may sit on other machines
        self.budget = BudgetTracker(budget, prices)

    async def slot(self, tokens: int) -> float:
        """Seconds until the caller may send a request of `tokens`."""
        return self.limiter.reserve(tokens)

    async def pause_for(self, seconds: float) -> None:
        self.limiter.pause_until(time.time() + seconds)

    async def reserve(self, request: TeacherRequest, wait: bool) -> Reservation | None:
        return await self.budget.reserve(request, wait=wait)

    async def settle(self, reservation: Reservation, prompt_tokens: int, completion_tokens: int) -> None:
        await self.budget.settle(reservation, prompt_tokens, completion_tokens)

    async def summary(self) -> str:
        return self.budget.summary()

    async def spent(self) -> dict[str, float]:
        return {"tokens": self.budget.spent_tokens, "usd": self.budget.spent_usd}


class _ClusterLimiter:
    """`RateLimiter`'s interface, answered by the cluster's `ClusterLimits` actor."""

    def __init__(self, limits: Any) -> None:
        self.limits = limits

    async def acquire(self, tokens: int) -> None:
        delay = await self.limits.slot.remote(tokens)
        if delay > 0:
            await asyncio.sleep(delay)

    def pause_until(self, when: float) -> None:  # `when` is on this process's monotonic clock
        self.limits.pause_for.remote(when - time.monotonic())


class _ClusterBudget:
    """`BudgetTracker`'s interface, answered by the cluster's `ClusterLimits` actor."""

    def __init__(self, limits: Any, prices: Prices | None) -> None:
        self.limits = limits
        self.prices = prices

    def usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return self.prices.usd(prompt_tokens, completion_tokens) if self.prices else 0.0

    async def reserve(self, request: TeacherRequest, wait: bool = True) -> Reservation | None:
        return await self.limits.reserve.remote(request, wait)

    async def settle(self, reservation: Reservation, prompt_tokens: int, completion_tokens: int) -> None:
        await self.limits.settle.remote(reservation, prompt_tokens, completion_tokens)

    def summary(self) -> str:
        return ray.get(self.limits.summary.remote())


@ray.remote
class GenerationWorker:
    """One teacher (its own client or engine) on a Ray worker; answers chunks of requests."""

    def __init__(
        self, config: dict[str, Any], main_cache: str | None, shard: str | None, limits: Any, secrets: dict[str, str]
    ) -> None:
        from factory.teachers import build_teacher

        # The API key travels as a constructor argument (never in the actor's runtime env,
        # which Ray shows in its job listings and logs) and lives only in this process.
        os.environ.update(secrets)
        teacher_config = TypeAdapter(TeacherConfig).validate_python(config)
        self.teacher = build_teacher(teacher_config, cache_dir=None)
        if shard is not None:
            self.teacher.cache = ShardedCache(shard, main_cache)
        self.teacher._limiter = _ClusterLimiter(limits)
        self.teacher.budget = _ClusterBudget(limits, teacher_config.prices)

    def identity(self) -> TeacherIdentity:
        return self.teacher.identity

    def pid(self) -> int:
        return os.getpid()

    def describe(self) -> str | None:
        return self.teacher.describe()

    async def generate(
        self, requests: list[TeacherRequest]
    ) -> tuple[list[Generation] | None, dict[str, Any], StillhouseError | None]:
        before = self.teacher.stats.as_dict()
        error = None
        generations = None
        try:
            generations = await self.teacher.generate(requests)
        except StillhouseError as exc:  # travels back whole, to be raised as the same one line
            error = exc
        after = self.teacher.stats.as_dict()
        return generations, {key: after[key] - before[key] for key in after}, error

    async def close(self) -> None:
        await self.teacher.close()


class RayTeacher(Teacher):
    """A `Teacher` whose requests are answered by `workers` GenerationWorker actors."""

    def describe(self) -> str | None:
        """The workers' teacher line (where token ids come from), once they have answered."""
        import ray

        line = ray.get(self.workers[0].describe.remote())
        return f"{line} (on {len(self.workers)} Ray workers)" if line else None

    def __init__(
        self, config: TeacherConfig, cache_dir: Path | None, *, workers: int, max_retries: int, address: str
    ) -> None:
        from factory.teachers import CACHE_FILE_NAME

        self.address = address
        self.stats = TeacherStats()
        self.cache: ResponseCache | None = None
        main_cache = shard_dir = None
        if cache_dir is not None and config.cache:
            main_cache = Path(cache_dir) / CACHE_FILE_NAME
            shard_dir = Path(cache_dir) / SHARD_DIR
            shard_dir.mkdir(parents=True, exist_ok=True)
            self.cache = ResponseCache(main_cache)
        self.shard_dir = shard_dir
        self._merge_shards()  # a killed run's workers' answers are answers
        secrets = {}
        key_env = getattr(config, "api_key_env", None)
        if key_env and key_env in os.environ:  # the workers need the key; it never reaches a file
            secrets[key_env] = os.environ[key_env]
        self.limits = ClusterLimits.remote(config.rpm, config.tpm, config.budget, config.prices)
        data = config.model_dump(mode="json")
        self.workers = [
            GenerationWorker.options(max_restarts=max_retries, max_task_retries=max_retries).remote(
                data,
                str(main_cache) if main_cache else None,
                str(shard_dir / f"worker-{index}.sqlite") if shard_dir else None,
                self.limits,
                secrets,
            )
            for index in range(workers)
        ]
        self.identity = self._get(self.workers[0].identity.remote(), "start a teacher worker")

    def _get(self, ref: Any, what: str) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            message = f"executor: could not {what} on the Ray cluster at {self.address}: {_first(exc)}"
            raise ExecutorError(message) from None

    def _merge_shards(self) -> None:
        if self.cache is None or self.shard_dir is None:
            return
        for shard in sorted(self.shard_dir.glob("worker-*.sqlite")):
            self.cache.merge(shard)

    async def generate(self, requests: Sequence[TeacherRequest]) -> list[Generation]:
        requests = list(requests)
        if not requests:
            return []
        size = -(-len(requests) // len(self.workers))
        chunks = [requests[start : start + size] for start in range(0, len(requests), size)]
        try:
            answers = await asyncio.gather(
                *(worker.generate.remote(chunk) for worker, chunk in zip(self.workers, chunks))
            )
        except ray.exceptions.RayError as exc:
            raise ExecutorError(
                f"executor: a teacher worker on the Ray cluster at {self.address} died and its retries ran out "
                f"({_first(exc)}); run the same command to resume"
            ) from None
        results: list[Generation] = []
        for generations, delta, error in answers:
            for key, value in delta.items():
                setattr(self.stats, key, getattr(self.stats, key) + value)
            if error is not None:
                raise error
            results.extend(generations)
        return results

    async def close(self) -> None:
        for worker in self.workers:
            try:
                await worker.close.remote()
            except ray.exceptions.RayError:
                pass  # a dead worker's shard is merged all the same
            ray.kill(worker)
        ray.kill(self.limits)
        self._merge_shards()
        if self.cache is not None:
            self.cache.close()
            self.cache = None


def _first(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".strip()
