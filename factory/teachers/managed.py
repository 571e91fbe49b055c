"""The machinery every backend shares, written once: response cache, hard budget,
bounded concurrency, requests/tokens-per-minute limits, retries with backoff that
honour Retry-After, stats and a progress bar.

A backend subclasses `ManagedTeacher` and implements ONE of
- `_generate_one(request) -> Generation` (remote APIs: one request at a time, many in
  flight; raise `RetryableError` for 429/5xx/timeouts/bad bodies, `TeacherError` for
  problems no retry can fix), or
- `_generate_batch(requests) -> list[Generation]` (local engines that batch themselves;
  runs in a worker thread so the event loop and progress bar stay live).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from factory.teachers.base import Generation, Teacher, TeacherIdentity, TeacherRequest
from factory.teachers.cache import ResponseCache, generation_from_payload
from factory.teachers.config import Budget, Prices
from factory.teachers.errors import RequestRejectedError, RetryableError
from factory.teachers.limits import (
    BudgetTracker,
    ConcurrencyLimit,
    RateLimiter,
    completion_token_bound,
    prompt_token_bound,
    retry_delay,
)

AUTO_INITIAL_CONCURRENCY = 4  # where `concurrency: auto` starts (and batched backends' chunk)


@dataclass
class TeacherStats:
    requests_sent: int = 0  # attempts that reached the backend, retries included
    cache_hits: int = 0
    answered: int = 0  # requests answered by the backend in this run (cache hits not included)
    failed: int = 0  # requests that ended with `error` after their retries
    retries: int = 0
    congested: int = 0  # attempts the server pushed back on (429, 503, timeouts)
    not_issued: int = 0  # requests the budget stopped
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float = 0.0
    ids_missing: int = 0  # samples returned (answered or from the cache) with text but no token ids

    def as_dict(self) -> dict:
        return asdict(self)


class ManagedTeacher(Teacher):
    # Local engines own the whole batch; remote ones get one call per request.
    batched = False
    # Settings outside the identity that change answers (endpoint, classifier temperature,
    # the weights' fingerprint); mixed into every cache key when not empty.
    cache_salt = ""
    # A batched backend whose batches are torch work in this process runs them on the loop's own
    # thread, not a worker thread. Each thread that runs torch's OpenMP ops keeps a pool of its
    # own, and libgomp stops its threads spinning between ops once two pools outnumber the
    # cores. On 2 cores a classifier teacher's batch took 1.2x as long on a worker thread after
    # the main thread had trained the teacher, and while that worker lived, the quickstart's
    # student training on the main thread took 3 min 45 s instead of 1 min 53 s
    # (benchmarks/teacher_thread.py). Remote batch APIs keep the worker thread (they wait on I/O).
    computes_on_loop_thread = False

    def __init__(
        self,
        identity: TeacherIdentity,
        *,
        concurrency: int | str = 16,
        max_concurrency: int = 256,
        rpm: int | None = None,
        tpm: int | None = None,
        max_retries: int = 5,
        timeout_s: float = 120.0,
        budget: Budget | None = None,
        prices: Prices | None = None,
        cache: ResponseCache | None = None,
        show_progress: bool = False,
    ):
        self.identity = identity
        adaptive = concurrency == "auto"
        self.concurrency = AUTO_INITIAL_CONCURRENCY if adaptive else int(concurrency)
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.cache = cache
        self.show_progress = show_progress
        self.stats = TeacherStats()
        self.budget = BudgetTracker(budget, prices)
        self._limiter = RateLimiter(rpm, tpm)
        self.slots = ConcurrencyLimit(
            self.concurrency, adaptive=adaptive, maximum=max_concurrency, rate_bound=self._limiter
        )
        self._prepared = False
        self.last_error: str | None = None  # the error of the last request that failed for good

    # -- backend hooks ----------------------------------------------------------------
    async def _prepare(self) -> None:  # noqa: B027 - optional hook
        """Once, before the first cache lookup: anything the identity or cache keys depend on."""

    async def _generate_one(self, request: TeacherRequest) -> Generation:
        raise NotImplementedError(f"{type(self).__name__} implements neither _generate_one nor _generate_batch")

    def _generate_batch(self, requests: list[TeacherRequest]) -> list[Generation]:
        raise NotImplementedError(f"{type(self).__name__} implements neither _generate_one nor _generate_batch")

    def describe(self) -> str | None:
        """One line on where token ids come from, once the teacher has been used (None: nothing to say)."""
        return None

    def cache_key(self, request: TeacherRequest) -> str:
        key = request.cache_key(self.identity)
        salt = self.cache_salt
        return key if not salt else hashlib.sha256(f"{key}:{salt}".encode()).hexdigest()

    def _chunk_size(self) -> int:
        """Requests handed to `_generate_batch` per call (all of them for vLLM)."""
        return self.concurrency

    # -- the shared path --------------------------------------------------------------
    async def generate(self, requests: Sequence[TeacherRequest]) -> list[Generation]:
        requests = list(requests)
        if requests and not self._prepared:
            await self._prepare()
            self._prepared = True
        results: list[Generation | None] = [None] * len(requests)
        # Keys serve only the cache; without one, hashing every request is wasted CPU.
        keys = [self.cache_key(request) if self.cache is not None else "" for request in requests]
        with _Progress(self.show_progress, len(requests), self.identity.model) as progress:
            if self.cache is not None:
                hits = self.cache.get_many(sorted(set(keys)))
                for index, key in enumerate(keys):
                    if key in hits:
                        results[index] = generation_from_payload(hits[key], requests[index], self.identity)
                        self.stats.cache_hits += 1
                progress.advance(sum(result is not None for result in results))
            pending = [index for index, result in enumerate(results) if result is None]
            if self.batched:
                await self._run_batched(requests, keys, pending, results, progress)
            else:
                await self._run_concurrent(requests, keys, pending, results, progress)
        self.stats.ids_missing += sum(sample.ids_missing for result in results for sample in result.samples)
        return results  # type: ignore[return-value]  # every slot is filled above

    def _record(self, key: str, generation: Generation) -> None:
        """Count a backend answer; only a success is cached (a failure is asked again next run)."""
        self.stats.answered += generation.ok
        self.stats.prompt_tokens += generation.usage.prompt_tokens
        self.stats.completion_tokens += generation.usage.completion_tokens
        self.stats.usd += self.budget.usd(generation.usage.prompt_tokens, generation.usage.completion_tokens)
        if generation.ok and self.cache is not None:
            self.cache.put(key, generation)

    def _not_issued(self, request: TeacherRequest, total: int, answered: int) -> Generation:
        self.stats.not_issued += 1
        need = prompt_token_bound(request) + completion_token_bound(request)
        message = (
            f"not issued: budget exhausted ({self.budget.summary()}; this request could take up to {need:,} "
            f"tokens; {answered} of {total} requests answered in this call)"
        )
        return Generation(request=request, teacher=self.identity, error=message)

    def _failed(self, request: TeacherRequest, message: str) -> Generation:
        self.stats.failed += 1
        self.last_error = message
        return Generation(request=request, teacher=self.identity, error=message)

    async def _run_concurrent(self, requests, keys, pending, results, progress) -> None:
        answered = [len(requests) - len(pending)]

        async def answer(index: int) -> None:
            request = requests[index]
            reservation = await self.budget.reserve(request)
            if reservation is None:
                results[index] = self._not_issued(request, len(requests), answered[0])
                progress.advance(1)
                return
            generation, billed = None, (0, 0)
            try:
                await self.slots.acquire()
                try:
                    generation, billed = await self._with_retries(request)
                    # Stored before the slot frees: a process killed at any point loses at
                    # most the answers of the requests it had in flight.
                    self._record(keys[index], generation)
                finally:
                    self.slots.release()
            finally:
                if generation is not None:
                    billed = (generation.usage.prompt_tokens, generation.usage.completion_tokens)
                await self.budget.settle(reservation, *billed)
            results[index] = generation
            answered[0] += generation.ok
            progress.advance(1)

        tasks = [asyncio.create_task(answer(index)) for index in pending]
        try:
            await asyncio.gather(*tasks)
        finally:  # a fatal TeacherError in one request stops the others cleanly
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _with_retries(self, request: TeacherRequest) -> tuple[Generation, tuple[int, int]]:
        """One answer for `request`; returns it and the tokens to bill for it. Every
        attempt's outcome adapts `concurrency: auto`."""
        maybe_billed = (0, 0)
        estimate = prompt_token_bound(request) + completion_token_bound(request)
        seen: dict[str, int] = {}  # every error of this request, so the server's own status is never lost
        for attempt in range(self.max_retries + 1):
            answered = congested = False
            sent_at = self.slots.now()
            try:
                await self._limiter.acquire(estimate)
                sent_at = self.slots.now()
                self.stats.requests_sent += 1
                generation = await asyncio.wait_for(self._generate_one(request), self.timeout_s)
                answered = True
                return generation, (0, 0)
            except RequestRejectedError as error:
                return self._failed(request, f"rejected: {error}"), maybe_billed
            except (RetryableError, asyncio.TimeoutError) as caught:
                error = caught
                if isinstance(error, asyncio.TimeoutError):
                    error = RetryableError(f"timed out after {self.timeout_s:g} s", maybe_billed=True, congestion=True)
                congested = error.congestion
                self.stats.congested += congested
                seen[str(error)] = seen.get(str(error), 0) + 1
                if error.maybe_billed:
                    # The server may have done (and billed) the work: count the worst case
                    # so the budget stays a hard cap.
                    maybe_billed = (
                        maybe_billed[0] + prompt_token_bound(request),
                        maybe_billed[1] + completion_token_bound(request),
                    )
                if error.retry_after is not None:
                    self._limiter.pause_until(time.monotonic() + error.retry_after)
            finally:
                self.slots.observe(sent_at, congested=congested, answered=answered, tokens=estimate)
            if attempt == self.max_retries:
                history = "; ".join(f"{text} ({count}x)" if count > 1 else text for text, count in seen.items())
                message = f"failed after {attempt + 1} attempt(s): {history}"
                return self._failed(request, message), maybe_billed
            self.stats.retries += 1
            await asyncio.sleep(retry_delay(attempt, error.retry_after))
        raise AssertionError("unreachable")

    async def _run_batched(self, requests, keys, pending, results, progress) -> None:
        size, answered, queue = max(1, self._chunk_size()), len(requests) - len(pending), list(pending)
        while queue:
            # Reserve a chunk's worst case; run it; settle real usage; then the next chunk.
            chunk, reservations = [], []
            while queue and len(chunk) < size:
                reservation = await self.budget.reserve(requests[queue[0]], wait=False)
                if reservation is None:
                    break
                chunk.append(queue.pop(0))
                reservations.append(reservation)
            if not chunk:  # nothing in flight and the next request does not fit: stop here
                for index in queue:
                    results[index] = self._not_issued(requests[index], len(requests), answered)
                progress.advance(len(queue))
                return
            self.stats.requests_sent += len(chunk)
            batch = [requests[index] for index in chunk]
            if self.computes_on_loop_thread:
                generations = self._generate_batch(batch)
            else:
                generations = await asyncio.to_thread(self._generate_batch, batch)
            for index, reservation, generation in zip(chunk, reservations, generations):
                await self.budget.settle(
                    reservation, generation.usage.prompt_tokens, generation.usage.completion_tokens
                )
                self._record(keys[index], generation)
                if not generation.ok:
                    self.stats.failed += 1
                    self.last_error = generation.error
                answered += generation.ok
                results[index] = generation
            progress.advance(len(chunk))

    async def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None


class _Progress:
    """A rich progress bar with a total, or nothing."""

    def __init__(self, enabled: bool, total: int, label: str):
        self._bar = None
        if enabled and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]teacher[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._bar.add_task(label, total=total)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def advance(self, count: int) -> None:
        if self._bar is not None and count:
            self._bar.advance(self._task, count)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
