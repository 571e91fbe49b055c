"""Teacher throughput against a local OpenAI-compatible server with a fixed latency.

Starts tests/fixtures/fake_openai_server.py in a subprocess (its own CPU, like a real
server), then, side by side in one run:
- Stillhouse's openai teacher: N requests at concurrency C (the shared machinery: cache
  off, budget/limits off, retries on);
- distilabel's OpenAILLM driven the way its Task drives it: `load()`, then `generate`
  on batches of `input_batch_size` (= C), awaiting each batch before the next;
- a bare httpx loop at concurrency C: what this machine's CPU allows at all.
Ideal throughput is C / latency. Prints all three, the ratios, and a RESULT line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def start_server(latency: float, *options: str) -> tuple[subprocess.Popen, str]:
    """The fake OpenAI server in its own process (`options`: more of its flags); returns it and its URL."""
    server = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "fixtures" / "fake_openai_server.py"), "--latency", str(latency),
         "--lifetime", "900", *options],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = server.stdout.readline().strip()
    if not url.startswith("http"):
        server.kill()
        raise RuntimeError("fake server did not start")
    return server, url


def prompts(n: int, tag: str) -> list[str]:
    return [f"{tag} request {i}: write a short note about parcel {i}" for i in range(n)]


def run_stillhouse(url: str, n: int, concurrency: int) -> tuple[float, float]:
    """Requests per second, and this process's CPU milliseconds per request (the client's cost)."""
    from factory.teachers import OpenAITeacherConfig, TeacherRequest, build_teacher

    config = OpenAITeacherConfig(model="fake-model", base_url=url, concurrency=concurrency, cache=False)
    teacher = build_teacher(config, cache_dir=None)
    requests = [TeacherRequest.chat(p, max_tokens=16, top_logprobs=2) for p in prompts(n, "stillhouse")]

    async def go() -> tuple[float, float]:
        await teacher.generate(requests[: concurrency * 2])  # warm up connections
        started, cpu_started = time.perf_counter(), time.process_time()
        generations = await teacher.generate(requests)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        await teacher.close()
        assert all(g.ok for g in generations), [g.error for g in generations if not g.ok][:3]
        return elapsed, cpu

    elapsed, cpu = asyncio.run(go())
    return n / elapsed, cpu * 1000 / n


def run_bare_httpx(url: str, n: int, concurrency: int) -> float:
    """The machine's ceiling: a bare httpx loop at the same concurrency, no parsing or machinery."""
    import httpx

    async def go() -> float:
        limit = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:

            async def one(prompt: str) -> None:
                async with limit:
                    body = {"model": "fake-model", "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": 16, "logprobs": True, "top_logprobs": 2}  # fmt: skip
                    (await client.post(f"{url}/chat/completions", json=body)).raise_for_status()

            await asyncio.gather(*(one(p) for p in prompts(concurrency * 2, "warm-up")))
            started = time.perf_counter()
            await asyncio.gather(*(one(p) for p in prompts(n, "httpx")))
            return time.perf_counter() - started

    return n / asyncio.run(go())


def run_distilabel(url: str, n: int, batch_size: int) -> float:
    from distilabel.models.llms import OpenAILLM

    llm = OpenAILLM(model="fake-model", base_url=url, api_key="EMPTY", max_retries=0, timeout=30)
    llm.load()
    inputs = [[{"role": "user", "content": p}] for p in prompts(n, "distilabel")]
    llm.generate(inputs[: batch_size * 2], num_generations=1, max_new_tokens=16, logprobs=True, top_logprobs=2)
    started = time.perf_counter()
    for start in range(0, n, batch_size):  # distilabel's Task: one batch at a time
        batch = inputs[start : start + batch_size]
        llm.generate(batch, num_generations=1, max_new_tokens=16, logprobs=True, top_logprobs=2)
    rps = n / (time.perf_counter() - started)
    # distilabel never closes its client; close it on its own loop before that loop is gone
    llm.event_loop.run_until_complete(llm._aclient.close())
    return rps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--latency", type=float, default=0.5, help="server seconds per request (hosted LLM APIs: 0.5 s and up)"
    )
    parser.add_argument("--quick", action="store_true", help="400 requests")
    args = parser.parse_args()
    n = 400 if args.quick else args.requests
    os.environ.setdefault("OPENAI_API_KEY", "EMPTY")
    server, url = start_server(args.latency)
    try:
        ideal = args.concurrency / args.latency
        stillhouse, client_ms = run_stillhouse(url, n, args.concurrency)
        distilabel = run_distilabel(url, n, args.concurrency)
        ceiling = run_bare_httpx(url, n, args.concurrency)
    finally:
        server.kill()
        server.wait()
    print(f"server latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}, {n} requests")
    print(f"ideal       {ideal:8.1f} req/s")
    print(f"stillhouse  {stillhouse:8.1f} req/s  ({stillhouse / ideal:.3f} of ideal, {client_ms:.2f} ms CPU/request)")
    print(f"distilabel  {distilabel:8.1f} req/s  ({distilabel / ideal:.3f} of ideal)")
    print(f"bare httpx  {ceiling:8.1f} req/s  ({ceiling / ideal:.3f} of ideal: this machine's ceiling)")
    print(f"stillhouse / distilabel = {stillhouse / distilabel:.3f}")
    print(
        f"RESULT stillhouse_rps={stillhouse:.1f} ideal_rps={ideal:.1f} ratio_vs_ideal={stillhouse / ideal:.3f} "
        f"distilabel_rps={distilabel:.1f} ratio_vs_distilabel={stillhouse / distilabel:.3f} "
        f"bare_httpx_rps={ceiling:.1f} ratio_vs_bare_httpx={stillhouse / ceiling:.3f} "
        f"client_ms_per_request={client_ms:.2f} concurrency={args.concurrency}"
    )


if __name__ == "__main__":
    main()
