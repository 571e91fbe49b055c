"""`concurrency: auto` (AIMD): the limiter on its own with a fake clock, then the whole
teacher against the fake OpenAI server with a hidden rate limit."""

from __future__ import annotations

import asyncio

import pytest
from fixtures.fake_openai_server import FakeOpenAIServer
from fixtures.teacher_calls import generate_and_close as run
from pydantic import TypeAdapter, ValidationError

from factory.teachers import OpenAITeacherConfig, TeacherConfig, TeacherRequest, build_teacher
from factory.teachers.limits import ConcurrencyLimit, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_fixed_limit_never_adapts():
    limit = ConcurrencyLimit(4)
    for _ in range(50):
        limit.observe(0.0, answered=True)
    limit.observe(0.0, congested=True)
    assert limit.limit == 4 and limit.maximum == 4


def test_slow_start_then_additive_increase_and_multiplicative_decrease():
    clock = Clock()
    limit = ConcurrencyLimit(4, adaptive=True, maximum=64, decrease=0.5, clock=clock)
    for _ in range(4):  # slow start: +1 per answer, so a round trip of 4 answers doubles it
        limit.observe(clock.now, answered=True)
    assert limit.limit == 8
    clock.now = 1.0
    limit.observe(0.5, congested=True)
    assert limit.limit == 4 and limit.cuts == 1
    # answers to requests sent before the cut do not cut again (one cut per round trip)
    limit.observe(0.9, congested=True)
    assert limit.limit == 4 and limit.cuts == 1
    # after the first cut: +1/limit per answer, about +1 per round trip
    for _ in range(4):
        limit.observe(clock.now, answered=True)
    assert 4.9 < limit.limit < 5.0
    clock.now, before = 2.0, limit.limit
    limit.observe(1.5, congested=True)  # sent after the last cut: cuts again
    assert limit.limit == pytest.approx(before * 0.5) and limit.cuts == 2
    for _ in range(10):
        limit.observe(clock.now, congested=True)
        clock.now += 1.0
    assert limit.limit == 1.0  # never below one


def test_growth_stops_at_the_maximum_and_at_what_rpm_allows():
    limit = ConcurrencyLimit(4, adaptive=True, maximum=10)
    for _ in range(100):
        limit.observe(limit.now(), answered=True)
    assert limit.limit == 10
    clock = Clock()
    # 120 rpm = 2 requests/s; at 1 s latency, more than ~2 in flight only queue at the client
    bounded = ConcurrencyLimit(4, adaptive=True, maximum=256, rate_bound=RateLimiter(rpm=120), clock=clock)
    for _ in range(100):
        sent = clock.now
        clock.now += 1.0
        bounded.observe(sent, answered=True)
    assert bounded.limit <= 1.5 * 2 * 1.0 + 2


def test_waiters_are_served_in_order_and_a_grown_limit_wakes_them():
    async def scenario() -> list[int]:
        limit = ConcurrencyLimit(1, adaptive=True, maximum=8)
        order: list[int] = []
        await limit.acquire()

        async def worker(i: int) -> None:
            await limit.acquire()
            order.append(i)

        tasks = [asyncio.create_task(worker(i)) for i in range(3)]
        await asyncio.sleep(0)
        assert order == [] and limit.in_flight == 1
        limit.observe(limit.now(), answered=True)  # slow start: limit 2, one waiter may go
        await asyncio.sleep(0)
        assert order == [0] and limit.in_flight == 2
        limit.release()
        limit.release()
        await asyncio.gather(*tasks)
        assert limit.in_flight == 2
        return order

    assert asyncio.run(scenario()) == [0, 1, 2]


def test_a_cancelled_waiter_gives_its_slot_on():
    async def scenario() -> None:
        limit = ConcurrencyLimit(1)
        await limit.acquire()
        first = asyncio.create_task(limit.acquire())
        second = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0)
        limit.release()  # the slot goes to `first` ...
        first.cancel()  # ... which is cancelled before it runs: `second` gets it
        await asyncio.sleep(0)
        await second
        assert limit.in_flight == 1

    asyncio.run(scenario())


def test_config_accepts_auto_and_rejects_nonsense():
    adapter = TypeAdapter(TeacherConfig)
    assert adapter.validate_python({"backend": "openai", "model": "m", "concurrency": "auto"}).concurrency == "auto"
    assert adapter.validate_python({"backend": "openai", "model": "m", "concurrency": 3}).concurrency == 3
    for bad in ("fast", 0):
        with pytest.raises(ValidationError, match="concurrency"):
            adapter.validate_python({"backend": "openai", "model": "m", "concurrency": bad})


def test_auto_finds_the_hidden_rate_limit_with_few_429s():
    """Against a server that answers 429 over 40 requests/s (100 ms latency, so ~4 in
    flight is what it sustains), auto backs off to near that, while a fixed 32 keeps
    hitting the limit; every request is answered exactly once either way."""
    requests = [TeacherRequest.chat(f"adaptive {i}", max_tokens=8) for i in range(160)]
    counts = {}
    for concurrency in ("auto", 32):
        server = FakeOpenAIServer(latency_s=0.1, rate_limit_rps=40, rate_limit_burst=4)
        with server:
            # Retries without a practical cap: at a fixed 32 every Retry-After wave is a race
            # that 1-4 of 32 win, so a request losing 50 in a row is a matter of luck, likelier
            # the faster the client turns a 429 around (the claim here is about the 429 counts).
            cfg = OpenAITeacherConfig(
                model="fake-model", base_url=server.url, concurrency=concurrency, max_retries=1000, timeout_s=5
            )
            teacher = build_teacher(cfg, cache_dir=None)
            generations = run(teacher, requests)
        assert all(g.ok for g in generations)
        assert server.counts["ok"] == len(requests)
        assert teacher.stats.congested == server.counts["rate_limited"]
        counts[concurrency] = server.counts["rate_limited"]
        if concurrency == "auto":
            assert teacher.slots.cuts > 0 and teacher.slots.limit < 32
    assert counts["auto"] * 2 < counts[32]
