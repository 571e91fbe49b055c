"""`concurrency: auto` against fixed concurrency, on a server with a hidden rate limit.

Starts tests/fixtures/fake_openai_server.py in a subprocess with a rate limit the
client is not told about (a token bucket: 429 with retry-after-ms above it) and a
latency with jitter. Then, side by side, a fresh server each: Stillhouse's openai
teacher with `concurrency: auto` and with fixed 4, 16 and 64, the same N requests
each (cache off, retries on). Prints answered requests per second, 429s received at
the server and failed requests for each, and a RESULT line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.teacher_throughput import start_server  # noqa: E402


def server_stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_stats", timeout=10) as answer:
        return json.load(answer)


def run_one(concurrency: int | str, n: int, args: argparse.Namespace) -> dict:
    from factory.teachers import OpenAITeacherConfig, TeacherRequest, build_teacher

    options = (
        "--jitter",
        str(args.jitter),
        "--rate-limit-rps",
        str(args.rate_limit),
        "--rate-limit-burst",
        str(args.burst),
    )
    server, url = start_server(args.latency, *options)
    try:
        config = OpenAITeacherConfig(
            model="fake-model", base_url=url, concurrency=concurrency, cache=False, max_retries=args.max_retries
        )
        teacher = build_teacher(config, cache_dir=None)
        requests = [
            TeacherRequest.chat(f"{concurrency} request {i}: a note on parcel {i}", max_tokens=16) for i in range(n)
        ]

        async def go() -> tuple[float, list]:
            started = time.perf_counter()
            try:
                generations = await teacher.generate(requests)
            finally:
                await teacher.close()
            return time.perf_counter() - started, generations

        elapsed, generations = asyncio.run(go())
        stats = server_stats(url)
    finally:
        server.kill()
        server.wait()
    answered = sum(g.ok for g in generations)
    return {
        "rps": answered / elapsed,
        "answered": answered,
        "failed": len(generations) - answered,
        "rate_limited": stats.get("rate_limited", 0),
        "peak_in_flight": stats.get("peak_in_flight", 0),
        "final_limit": teacher.slots.limit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--latency", type=float, default=0.2, help="server seconds per answer")
    parser.add_argument("--jitter", type=float, default=0.1, help="up to this many extra seconds per answer")
    parser.add_argument("--rate-limit", type=float, default=60.0, help="the hidden limit, requests per second")
    parser.add_argument("--burst", type=int, default=10, help="requests the hidden limit lets through at once")
    parser.add_argument("--max-retries", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="400 requests")
    args = parser.parse_args()
    n = 400 if args.quick else args.requests
    settings: list[int | str] = ["auto", 4, 16, 64]
    results = {setting: run_one(setting, n, args) for setting in settings}
    print(
        f"hidden limit {args.rate_limit:g} req/s (burst {args.burst}), latency {args.latency * 1000:.0f} ms "
        f"+ up to {args.jitter * 1000:.0f} ms, {n} requests each"
    )
    print(f"{'concurrency':>12} {'req/s':>8} {'429s':>6} {'failed':>7} {'peak in flight':>15}")
    for setting, result in results.items():
        print(
            f"{setting!s:>12} {result['rps']:8.1f} {result['rate_limited']:6d} {result['failed']:7d} "
            f"{result['peak_in_flight']:15d}"
        )
    print(f"auto ended at a limit of {results['auto']['final_limit']:.1f}")
    fixed = {setting: result for setting, result in results.items() if setting != "auto"}
    best_setting = max(fixed, key=lambda setting: fixed[setting]["rps"])
    auto, best = results["auto"], fixed[best_setting]
    print(f"auto / best fixed ({best_setting}) = {auto['rps'] / best['rps']:.3f}")
    print(
        f"RESULT auto_rps={auto['rps']:.1f} best_fixed_rps={best['rps']:.1f} best_fixed={best_setting} "
        f"ratio_vs_best_fixed={auto['rps'] / best['rps']:.3f} auto_429={auto['rate_limited']} "
        f"fixed64_429={results[64]['rate_limited']} auto_failed={auto['failed']} fixed64_failed={results[64]['failed']}"
    )


if __name__ == "__main__":
    main()
