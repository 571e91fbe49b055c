"""Rate limits, retry delays and the hard budget, shared by every backend."""

from __future__ import annotations

import asyncio
import collections
import math
import random
import time
from dataclasses import dataclass

from factory.teachers.base import TeacherRequest
from factory.teachers.config import Budget, Prices

# Upper bound on template tokens per chat message (role markers, separators).
_TEMPLATE_TOKENS_PER_MESSAGE = 8


def prompt_token_bound(request: TeacherRequest) -> int:
    """A conservative upper bound on a request's prompt tokens, with no tokenizer.

    Byte-level BPE and byte-fallback tokenizers never emit more tokens than UTF-8
    bytes, so bytes plus template overhead bounds the count the server will bill.
    """
    content_bytes = sum(len(content.encode("utf-8")) for _, content in request.messages)
    return content_bytes + _TEMPLATE_TOKENS_PER_MESSAGE * (len(request.messages) + 1)


def completion_token_bound(request: TeacherRequest) -> int:
    return request.max_tokens * request.n


class RateLimiter:
    """Requests-per-minute and tokens-per-minute pacing (GCRA without bursts).

    Each request is scheduled no earlier than the previous one plus 60/rpm seconds and
    plus its tokens' share of a minute at `tpm`, so no sliding minute ever exceeds either
    limit. `pause_until` pushes everything back when a server answers 429 Retry-After.
    """

    def __init__(self, rpm: int | None = None, tpm: int | None = None, clock=time.monotonic):
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._next_request_at = 0.0
        self._next_tokens_at = 0.0
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def reserve(self, tokens: int) -> float:
        """Claim the next slot for a request of `tokens`; returns seconds to wait for it."""
        now = self._clock()
        start = max(now, self._next_request_at, self._next_tokens_at)
        if self.rpm:
            self._next_request_at = start + 60.0 / self.rpm
        if self.tpm:
            self._next_tokens_at = start + 60.0 * min(tokens, self.tpm) / self.tpm
        return start - now

    def pause_until(self, when: float) -> None:
        self._next_request_at = max(self._next_request_at, when)

    async def acquire(self, tokens: int) -> None:
        """Wait for this request's slot. Requests go one after another, and the next slot
        counts from when this one really went (a late wake-up never bunches two together)."""
        if self.rpm is None and self.tpm is None and self._next_request_at <= self._clock():
            return
        async with self._turn():
            due = self._clock()
            delay = self.reserve(tokens)
            if delay > 0:
                due += delay
                await asyncio.sleep(delay)
            late = self._clock() - due
            if late > 0:  # woke (or got the turn) late: the slots after it move back as far
                self._next_request_at += late if self.rpm else 0.0
                self._next_tokens_at += late if self.tpm else 0.0

    def _turn(self) -> asyncio.Lock:
        # asyncio primitives belong to one loop; a teacher may serve several in turn.
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    def requests_per_second(self, tokens: int) -> float | None:
        """The steady rate the limits allow for requests of `tokens` each; None: unlimited."""
        rates = []
        if self.rpm:
            rates.append(self.rpm / 60.0)
        if self.tpm:
            rates.append(self.tpm / 60.0 / max(1, min(tokens, self.tpm)))
        return min(rates) if rates else None


class ConcurrencyLimit:
    """How many requests may be in flight at once: a fixed number, or AIMD ("auto").

    Adaptive: the limit starts at `initial`, grows by one per answered request until the
    first congestion signal (slow start: it doubles every round trip), then by one per
    round trip (1/limit per answer); a congestion signal (429, 503, a timeout) multiplies
    it by `decrease`, once per round trip: answers to requests sent before the last cut
    do not cut again. With rpm/tpm limits it never grows past what those allow at the
    observed latency (more in flight would only queue at the client).

    Not bound to an event loop: waiters are futures of whichever loop is running.
    """

    def __init__(
        self,
        initial: int,
        *,
        adaptive: bool = False,
        maximum: int = 256,
        decrease: float = 0.7,
        rate_bound: RateLimiter | None = None,
        clock=time.monotonic,
    ):
        self.adaptive = adaptive
        self.maximum = max(1, maximum if adaptive else initial)
        self.limit = float(min(initial, self.maximum))
        self.decrease = decrease
        self.in_flight = 0
        self.peak = self.limit
        self.cuts = 0
        self._slow_start = adaptive
        self._last_cut = -math.inf
        self._latency_s: float | None = None  # EWMA of answered attempts
        self._rate_bound = rate_bound
        self._clock = clock
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def acquire(self) -> None:
        """Wait for a slot."""
        if self.in_flight < int(self.limit) and not self._waiters:
            self.in_flight += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # `_wake` counts the slot as ours before it wakes us
        except BaseException:
            if waiter.done() and not waiter.cancelled():  # handed a slot while being cancelled
                self.in_flight -= 1
                self._wake()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back."""
        self.in_flight -= 1
        self._wake()

    def observe(self, sent_at: float, *, congested: bool = False, answered: bool = False, tokens: int = 0) -> None:
        """Adapt to one attempt's outcome (no-op when fixed). `congested`: the server
        pushed back (429, 503, timeout); `answered`: it answered, so the time since
        `sent_at` is a round trip."""
        if not self.adaptive:
            return
        now = self._clock()
        if congested:
            if sent_at >= self._last_cut:  # one cut per round trip
                self.limit = max(1.0, self.limit * self.decrease)
                self._last_cut = now
                self._slow_start = False
                self.cuts += 1
        elif answered:
            latency = now - sent_at
            self._latency_s = latency if self._latency_s is None else 0.9 * self._latency_s + 0.1 * latency
            self.limit = min(self._ceiling(tokens), self.limit + (1.0 if self._slow_start else 1.0 / self.limit))
            self.peak = max(self.peak, self.limit)
            self._wake()

    def now(self) -> float:
        return self._clock()

    def _ceiling(self, tokens: int) -> float:
        rate = self._rate_bound.requests_per_second(tokens) if self._rate_bound is not None else None
        if rate is None or self._latency_s is None:
            return float(self.maximum)
        # Little's law: in flight = rate x latency; headroom for jitter, at least one.
        return float(min(self.maximum, max(1.0, math.ceil(1.5 * rate * self._latency_s) + 1)))

    def _wake(self) -> None:
        free = int(self.limit) - self.in_flight
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.in_flight += 1  # the slot is the waiter's from now on
                free -= 1


def retry_delay(attempt: int, retry_after: float | None, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds before retry number `attempt` (0-based): Retry-After when the server gave
    one (plus up to 10% jitter, never less), else capped exponential backoff with jitter."""
    if retry_after is not None:
        return retry_after * (1.0 + 0.1 * random.random())
    ceiling = min(cap, base * 2**attempt)
    return ceiling * (0.5 + 0.5 * random.random())


@dataclass
class Reservation:
    tokens: int
    usd: float


class BudgetTracker:
    """Never lets spending pass `budget`: a request is issued only once its worst case
    (prompt bound + n * max_tokens) fits next to what is spent and what is in flight.

    When a request does not fit while others are in flight, it waits for them to settle
    (their real usage is usually far below the worst case) before giving up.
    """

    def __init__(self, budget: Budget | None, prices: Prices | None):
        self.budget = budget
        self.prices = prices
        self.spent_tokens = 0
        self.spent_usd = 0.0
        self._reserved_tokens = 0
        self._reserved_usd = 0.0
        self._in_flight = 0
        self.exhausted = False
        self._condition: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def _changed(self) -> asyncio.Condition:
        # asyncio primitives belong to one event loop; a teacher may serve several
        # (one asyncio.run per CLI step), so make one per loop.
        loop = asyncio.get_running_loop()
        if self._condition is None or self._loop is not loop:
            self._condition, self._loop = asyncio.Condition(), loop
        return self._condition

    def usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return self.prices.usd(prompt_tokens, completion_tokens) if self.prices else 0.0

    def _fits(self, tokens: int, usd: float) -> bool:
        if self.budget is None:
            return True
        if (
            self.budget.max_tokens is not None
            and self.spent_tokens + self._reserved_tokens + tokens > self.budget.max_tokens
        ):
            return False
        if self.budget.max_usd is not None and self.spent_usd + self._reserved_usd + usd > self.budget.max_usd:
            return False
        return True

    async def reserve(self, request: TeacherRequest, wait: bool = True) -> Reservation | None:
        """A reservation for `request`'s worst case, or None when it does not fit. With
        `wait=False` (a caller that holds the in-flight reservations itself) it returns
        None at once instead of waiting for others to settle."""
        if self.budget is None:  # nothing to track: no lock on the hot path
            return Reservation(0, 0.0)
        prompt, completion = prompt_token_bound(request), completion_token_bound(request)
        reservation = Reservation(tokens=prompt + completion, usd=self.usd(prompt, completion))
        async with self._changed:
            while not self.exhausted:
                if self._fits(reservation.tokens, reservation.usd):
                    self._reserved_tokens += reservation.tokens
                    self._reserved_usd += reservation.usd
                    self._in_flight += 1
                    return reservation
                if self._in_flight == 0:
                    self.exhausted = True
                    break
                if not wait:
                    break
                await self._changed.wait()
        return None

    async def settle(self, reservation: Reservation, prompt_tokens: int, completion_tokens: int) -> None:
        """Replace a reservation by what the request really cost."""
        if self.budget is None:
            self.spent_tokens += prompt_tokens + completion_tokens
            self.spent_usd += self.usd(prompt_tokens, completion_tokens)
            return
        async with self._changed:
            self._reserved_tokens -= reservation.tokens
            self._reserved_usd -= reservation.usd
            self._in_flight -= 1
            self.spent_tokens += prompt_tokens + completion_tokens
            self.spent_usd += self.usd(prompt_tokens, completion_tokens)
            self._changed.notify_all()

    def summary(self) -> str:
        if self.budget is None:
            return "no budget"
        parts = []
        if self.budget.max_tokens is not None:
            parts.append(f"{self.spent_tokens:,} of {self.budget.max_tokens:,} tokens")
        if self.budget.max_usd is not None:
            parts.append(f"${self.spent_usd:.4f} of ${self.budget.max_usd:.4f}")
        return " and ".join(parts) + " spent"
