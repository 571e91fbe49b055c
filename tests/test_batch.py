"""`mode: batch` against the fake OpenAI server's files + batches endpoints: splitting at
the provider's limits, line mapping by custom_id, partial / expired / failed batches with
the online failure semantics, budget and batch prices, and resuming after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.fake_openai_server import FakeOpenAIServer, expected_token_indices
from fixtures.teacher_calls import generate_and_close as run

from factory.teachers import OpenAITeacherConfig, TeacherRequest, build_teacher, estimate_cost
from factory.teachers.cache import CACHE_FILE_NAME, ResponseCache
from factory.teachers.openai_batch import STATE_FILE_NAME, custom_id

REPO = Path(__file__).resolve().parents[1]
FAST_POLL = {"poll_initial_s": 0.02, "poll_max_s": 0.1}


def config(server: FakeOpenAIServer, **overrides) -> OpenAITeacherConfig:
    batch = {**FAST_POLL, **overrides.pop("batch", {})}
    return OpenAITeacherConfig(model="fake-model", base_url=server.url, mode="batch", batch=batch, **overrides)


def questions(n: int, tag: str = "batch") -> list[TeacherRequest]:
    return [TeacherRequest.chat(f"{tag} question {i}", max_tokens=8, top_logprobs=2) for i in range(n)]


def expected_text(server: FakeOpenAIServer, request: TeacherRequest) -> str:
    indices = expected_token_indices(request.openai_messages(), 0, request.max_tokens)
    return "".join(server.vocab[i % len(server.vocab)] for i in indices)


def cached(tmp_path: Path) -> int:
    with ResponseCache(tmp_path / CACHE_FILE_NAME) as cache:
        return len(cache)


def test_batches_split_at_the_limit_and_every_line_maps_back(tmp_path):
    requests = questions(25)
    requests += requests[:2]  # repeated requests are asked once and billed once
    with FakeOpenAIServer(batch_max_requests=10, batch_validating_s=0.05, batch_duration_s=0.1) as server:
        teacher = build_teacher(config(server, batch={"max_requests": 10}), cache_dir=tmp_path)
        generations = run(teacher, requests)
    assert server.counts["batches_created"] == 3 and server.counts["batch_lines"] == 25
    assert server.counts["requests"] == 0  # nothing went through the online endpoint
    assert all(g.ok for g in generations)
    assert [g.samples[0].text for g in generations] == [expected_text(server, r) for r in requests]
    assert all(len(g.samples[0].logprobs) == len(g.samples[0].top_logprobs) > 0 for g in generations)
    assert generations[25].usage.total_tokens == 0 and generations[0].usage.total_tokens > 0
    assert teacher.stats.prompt_tokens == sum(g.usage.prompt_tokens for g in generations[:25])
    assert cached(tmp_path) == 25
    assert json.loads((tmp_path / STATE_FILE_NAME).read_text())["submissions"] == {}  # all settled


def test_batches_split_at_the_byte_limit(tmp_path):
    with FakeOpenAIServer() as server:
        teacher = build_teacher(config(server, batch={"max_bytes": 2_000}), cache_dir=None)
        generations = run(teacher, questions(12))
    assert all(g.ok for g in generations)
    assert server.counts["batches_created"] > 1 and server.counts["batch_lines"] == 12
    assert all(len(entry["content"]) <= 2_000 for entry in server.files.values() if entry["purpose"] == "batch")


def test_a_second_run_answers_from_the_cache_and_submits_nothing(tmp_path):
    with FakeOpenAIServer() as server:
        run(build_teacher(config(server), cache_dir=tmp_path), questions(6))
        teacher = build_teacher(config(server), cache_dir=tmp_path)
        generations = run(teacher, questions(6))
    assert server.counts["batches_created"] == 1
    assert all(g.ok and g.cached for g in generations) and teacher.stats.cache_hits == 6


def test_per_line_errors_fail_those_requests_only_and_a_rerun_retries_exactly_them(tmp_path):
    requests = questions(8) + [TeacherRequest.chat(f"POISON {i}", max_tokens=8) for i in range(2)]
    with FakeOpenAIServer(batch_fail_marker="POISON") as server:
        teacher = build_teacher(config(server), cache_dir=tmp_path)
        generations = run(teacher, requests)
        failed = [g for g in generations if not g.ok]
        assert [g.request.messages[-1][1] for g in failed] == ["POISON 0", "POISON 1"]
        assert all("500 from server" in g.error and "batch_" in g.error for g in failed)
        assert teacher.stats.failed == 2 and cached(tmp_path) == 8  # failures are never cached
        server.batch_fail_marker = None
        retry = build_teacher(config(server), cache_dir=tmp_path)
        again = run(retry, requests)
    assert all(g.ok for g in again)
    assert server.counts["batches_created"] == 2 and server.counts["batch_lines"] == 12  # 10, then the 2 failed
    assert retry.stats.cache_hits == 8


def test_an_expired_batch_keeps_what_it_answered_and_fails_the_rest(tmp_path):
    with FakeOpenAIServer(batch_outcome="expired") as server:
        teacher = build_teacher(config(server), cache_dir=tmp_path)
        generations = run(teacher, questions(10))
        answered = [g for g in generations if g.ok]
        assert len(answered) == 5 and cached(tmp_path) == 5
        assert all("batch_expired" in g.error for g in generations if not g.ok)
        server.batch_outcome = "completed"
        again = run(build_teacher(config(server), cache_dir=tmp_path), questions(10))
    assert all(g.ok for g in again) and server.counts["batch_lines"] == 15


def test_a_failed_batch_fails_every_request_with_the_providers_reason(tmp_path):
    with FakeOpenAIServer(batch_outcome="failed") as server:
        teacher = build_teacher(config(server), cache_dir=tmp_path)
        generations = run(teacher, questions(4))
    assert not any(g.ok for g in generations) and teacher.stats.failed == 4
    assert all("failed: not answered (batch failed)" in g.error for g in generations)
    assert cached(tmp_path) == 0


def test_a_batch_the_provider_rejects_in_validation_names_the_reason(tmp_path):
    with FakeOpenAIServer(batch_max_requests=3) as server:  # the config claims a larger limit
        generations = run(build_teacher(config(server), cache_dir=tmp_path), questions(5))
    assert not any(g.ok for g in generations)
    assert "at most 3 per batch" in generations[0].error


def test_budget_is_checked_before_submission_and_billed_at_the_batch_rate(tmp_path):
    prices = {"input_per_1m": 1_000.0, "output_per_1m": 2_000.0, "batch_input_per_1m": 500.0,
              "batch_output_per_1m": 1_000.0}  # fmt: skip
    with FakeOpenAIServer() as server:
        teacher = build_teacher(config(server, prices=prices, budget={"max_tokens": 120}), cache_dir=tmp_path)
        generations = run(teacher, questions(20))
    not_issued = [g for g in generations if g.error and g.error.startswith("not issued")]
    submitted = server.counts["batch_lines"]
    assert not_issued and submitted + len(not_issued) == 20  # the stopped ones never reached the provider
    assert teacher.budget.spent_tokens <= 120
    stats = teacher.stats
    assert stats.usd == pytest.approx(stats.prompt_tokens * 0.0005 + stats.completion_tokens * 0.001)
    online = OpenAITeacherConfig(model="m", prices=prices)
    batch = OpenAITeacherConfig(model="m", prices=prices, mode="batch")
    assert estimate_cost(batch, 10, 100, 50) == pytest.approx(estimate_cost(online, 10, 100, 50) / 2)


_RUN_SCRIPT = """
import asyncio, json, sys
from factory.teachers import OpenAITeacherConfig, TeacherRequest, build_teacher
url, cache_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = OpenAITeacherConfig(model="fake-model", base_url=url, mode="batch",
                             batch={"poll_initial_s": 0.05, "poll_max_s": 0.2})
teacher = build_teacher(config, cache_dir=cache_dir)
requests = [TeacherRequest.chat(f"batch question {i}", max_tokens=8, top_logprobs=2) for i in range(n)]
async def go():
    try:
        return await teacher.generate(requests)
    finally:
        await teacher.close()
print(json.dumps([g.ok for g in asyncio.run(go())]))
"""


def _start(server: FakeOpenAIServer, tmp_path: Path, n: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", _RUN_SCRIPT, server.url, str(tmp_path), str(n)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_killed_while_waiting_resumes_polling_and_never_resubmits(tmp_path):
    with FakeOpenAIServer(batch_duration_s=600.0) as server:  # slow: still in progress when killed
        first = _start(server, tmp_path, 12)
        _wait_for(lambda: server.counts["batch_polls"] >= 2)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        state = json.loads((tmp_path / STATE_FILE_NAME).read_text())["submissions"]
        assert [entry["batch_id"] for entry in state.values()] == ["batch_000001"]
        assert server.counts["batches_created"] == 1 and cached(tmp_path) == 0
        server.batch_duration_s = 0.2  # the provider finishes it meanwhile
        second = _start(server, tmp_path, 12)
        out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == [True] * 12
    assert server.counts["batches_created"] == 1 and server.counts["files_uploaded"] == 1
    assert server.counts["batch_lines"] == 12 and cached(tmp_path) == 12


def test_killed_between_sending_and_recording_the_id_finds_the_batch_at_the_provider(tmp_path):
    with FakeOpenAIServer(batch_duration_s=0.2) as server:
        run(build_teacher(config(server), cache_dir=tmp_path), questions(4))
        assert server.counts["batches_created"] == 1
        # Replay the crash window: the submission recorded, its batch id not yet, nothing cached.
        (tmp_path / CACHE_FILE_NAME).unlink()
        submission = next(iter(server.batches.values()))["metadata"]["stillhouse_submission"]
        state = {submission: {"custom_ids": {}, "batch_id": None}}
        teacher = build_teacher(config(server), cache_dir=tmp_path)
        state[submission]["custom_ids"] = {custom_id(teacher.cache_key(r)): teacher.cache_key(r) for r in questions(4)}
        (tmp_path / STATE_FILE_NAME).write_text(json.dumps({"submissions": state}))
        teacher = build_teacher(config(server), cache_dir=tmp_path)
        generations = run(teacher, questions(4))
    assert all(g.ok for g in generations)
    assert server.counts["batches_created"] == 1 and server.counts["batch_lines"] == 4


def test_vllm_offline_run_batch_reads_our_batch_file_and_its_output_maps_back(tmp_path, tiny_llama):
    """The local equivalent of a provider's batch API: `python -m vllm.entrypoints.openai.run_batch`
    (real engine, CPU build) on the batch file the teacher uploads online."""
    pytest.importorskip("vllm")
    teacher = build_teacher(
        OpenAITeacherConfig(model=str(tiny_llama), base_url="http://127.0.0.1:9/v1", mode="batch"), cache_dir=None
    )
    requests = [TeacherRequest.chat(f"the sky {i}", max_tokens=6, top_logprobs=2) for i in range(3)]
    (tmp_path / "in.jsonl").write_bytes(teacher.batch_file(requests + requests[:1]))
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_HOST_IP": "127.0.0.1"}  # fmt: skip
    command = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", "in.jsonl", "-o", "out.jsonl",
               "--model", str(tiny_llama), "--dtype", "float32", "--enforce-eager",
               "--max-model-len", "512"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    output = (tmp_path / "out.jsonl").read_text()
    assert len(output.splitlines()) == 3  # the repeated request was written once
    generations = teacher.generations_from_output(requests + requests[:1], output)
    assert all(g.ok for g in generations), [g.error for g in generations]
    for generation in generations:
        sample = generation.samples[0]
        assert sample.text and len(sample.logprobs) == len(sample.top_logprobs) > 0
        assert generation.usage.prompt_tokens > 0
    assert generations[3].samples == generations[0].samples
    missing = teacher.generations_from_output([TeacherRequest.chat("never asked")], output)
    assert not missing[0].ok and "no line for it" in missing[0].error
    run(teacher, [])  # closes the teacher's clients
