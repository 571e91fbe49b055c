"""The OpenAI backend and the shared machinery, against a real local HTTP server that
speaks the OpenAI API and injects faults (tests/fixtures/fake_openai_server.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.fake_openai_server import FAULTS, FakeOpenAIServer, expected_token_indices, fake_logprob
from fixtures.teacher_calls import generate_and_close as run
from pydantic import TypeAdapter, ValidationError

from factory.teachers import (
    MissingApiKeyError,
    OpenAITeacherConfig,
    ServerUnreachableError,
    TeacherConfig,
    TeacherError,
    TeacherRequest,
    UnknownModelError,
    build_teacher,
    estimate_cost,
)
from factory.teachers.cache import CACHE_FILE_NAME, ResponseCache
from factory.teachers.limits import RateLimiter, prompt_token_bound

REPO = Path(__file__).resolve().parents[1]


def config(server: FakeOpenAIServer, **overrides) -> OpenAITeacherConfig:
    values = {"model": "fake-model", "base_url": server.url, "timeout_s": 2.0, "concurrency": 8, "max_retries": 3}
    return OpenAITeacherConfig(**{**values, **overrides})


def expected_text(server: FakeOpenAIServer, request: TeacherRequest, choice: int = 0) -> str:
    indices = expected_token_indices(request.openai_messages(), choice, request.max_tokens)
    return "".join(server.vocab[i % len(server.vocab)] for i in indices)


def test_every_request_answered_once_or_failed_under_faults(tmp_path):
    requests = [TeacherRequest.chat(f"question {i}", n=2, top_logprobs=3, max_tokens=16) for i in range(30)]
    requests += [TeacherRequest.chat(f"POISON question {i}") for i in range(2)]
    server = FakeOpenAIServer(
        fault_rate=0.3, seed=1, retry_after_s=0.05, timeout_sleep_s=1.0, always_fail_marker="POISON"
    )
    with server:
        teacher = build_teacher(config(server, timeout_s=0.4), cache_dir=tmp_path)
        generations = run(teacher, requests)
    assert len(generations) == len(requests)
    assert [g.request for g in generations] == requests
    answered = [g for g in generations if g.ok]
    failed = [g for g in generations if not g.ok]
    assert all("POISON" not in g.request.messages[-1][1] for g in answered)
    assert {g.request.messages[-1][1] for g in failed} >= {"POISON question 0", "POISON question 1"}
    assert all(g.error.startswith("failed after") for g in failed)
    assert all(len(g.samples) == 0 for g in failed)
    for generation in answered:  # each answer is the right one, whole, with its logprobs
        assert [s.text for s in generation.samples] == [expected_text(server, generation.request, c) for c in (0, 1)]
        for sample in generation.samples:
            assert len(sample.logprobs) == len(sample.top_logprobs) > 0
            assert all(len(top) == 3 and top[0] == lp for top, lp in zip(sample.top_logprobs, sample.logprobs))
    stats = teacher.stats
    assert stats.failed == len(failed) and len(answered) + len(failed) == len(requests)
    assert stats.requests_sent == server.counts["requests"]  # every attempt reached the server once
    assert sum(server.counts[f] for f in FAULTS) > 0
    assert stats.retries > 0
    with ResponseCache(tmp_path / CACHE_FILE_NAME) as cache:
        assert len(cache) == len(answered)  # one cache row per answered request, no duplicates


def test_an_answer_of_the_wrong_shape_is_retried_then_reported(tmp_path):
    with FakeOpenAIServer(script=["wrong_shape", "ok"] + ["wrong_shape"] * 3) as server:
        # one at a time, so the first request takes the first two scripted answers
        teacher = build_teacher(config(server, max_retries=2, concurrency=1), cache_dir=None)
        retried, failed = run(teacher, [TeacherRequest.chat(q, top_logprobs=2) for q in ("first", "second")])
    assert retried.ok and retried.samples[0].logprobs
    assert not failed.ok and failed.error.startswith("failed after 3 attempt(s): malformed answer (KeyError")
    assert teacher.stats.retries == 3 and teacher.stats.failed == 1


def test_retry_after_is_honoured(tmp_path):
    with FakeOpenAIServer(script=["429", "ok"], retry_after_s=1.0) as server:
        teacher = build_teacher(config(server), cache_dir=None)
        [generation] = run(teacher, [TeacherRequest.chat("wait for me")])
    assert generation.ok and teacher.stats.retries == 1
    first, second = server.request_times
    assert second - first >= 1.0  # not before the server said so


def test_budget_is_never_exceeded_and_says_how_far_it_got(tmp_path):
    requests = [TeacherRequest.chat(f"tell me about item {i}", max_tokens=8) for i in range(40)]
    budget_tokens = 500
    with FakeOpenAIServer(script=["timeout"], timeout_sleep_s=1.0) as server:
        teacher = build_teacher(config(server, timeout_s=0.3, budget={"max_tokens": budget_tokens}), cache_dir=tmp_path)
        generations = run(teacher, requests)
    stats = teacher.stats
    not_issued = [g for g in generations if g.error and g.error.startswith("not issued")]
    assert not_issued and stats.not_issued == len(not_issued)
    # The timed-out attempt may have been billed: the tracker counted its worst case.
    assert teacher.budget.spent_tokens <= budget_tokens
    assert stats.prompt_tokens + stats.completion_tokens <= budget_tokens
    assert "budget exhausted" in not_issued[0].error and f"of {budget_tokens:,} tokens" in not_issued[0].error
    answered = [g for g in generations if g.ok]
    assert server.counts["ok"] == len(answered)  # nothing was sent for the stopped ones
    assert len(answered) + len(not_issued) == len(requests)


def test_usd_budget_with_price_table(tmp_path):
    prices = {"input_per_1m": 1_000.0, "output_per_1m": 2_000.0}  # $0.001 / $0.002 per token
    requests = [TeacherRequest.chat(f"price {i}", max_tokens=8) for i in range(30)]
    with FakeOpenAIServer() as server:
        teacher = build_teacher(config(server, prices=prices, budget={"max_usd": 0.25}), cache_dir=None)
        generations = run(teacher, requests)
    stats = teacher.stats
    assert 0 < stats.usd <= 0.25
    assert stats.usd == pytest.approx(stats.prompt_tokens * 0.001 + stats.completion_tokens * 0.002)
    assert any(g.error and "$0.2500" in g.error for g in generations)
    cfg = config(server, prices=prices)
    assert estimate_cost(cfg, n_requests=10, prompt_tokens=100, completion_tokens=50) == pytest.approx(2.0)
    assert estimate_cost(config(server), 10, 100, 50) is None


def test_cache_means_a_second_run_sends_nothing(tmp_path):
    requests = [TeacherRequest.chat(f"cache me {i}", n=2, top_logprobs=2) for i in range(12)]
    with FakeOpenAIServer() as server:
        first = run(build_teacher(config(server), cache_dir=tmp_path), requests)
        sent = server.counts["requests"]
        teacher = build_teacher(config(server), cache_dir=tmp_path)
        second = run(teacher, requests + requests[:3])  # duplicates are hits too
        assert server.counts["requests"] == sent == len(requests)
    assert teacher.stats.requests_sent == 0 and teacher.stats.cache_hits == 15
    assert teacher.stats.usd == 0 and teacher.stats.prompt_tokens == 0
    assert all(g.cached for g in second) and not any(g.cached for g in first)
    assert [g.samples for g in second[:12]] == [g.samples for g in first]


def test_cache_is_shared_safely_across_processes(tmp_path):
    script = (
        f"import sys; sys.path.insert(0, {str(REPO)!r});"
        "from factory.teachers.cache import ResponseCache;"
        "from factory.teachers.base import Generation, TeacherIdentity, TeacherRequest, Sample;"
        f"c = ResponseCache({str(tmp_path / CACHE_FILE_NAME)!r}); t = TeacherIdentity('openai', 'm');"
        "[c.put(f'{sys.argv[1]}-{i}', Generation(TeacherRequest.chat('x'), t, [Sample('y')])) for i in range(200)]"
    )
    writers = [subprocess.Popen([sys.executable, "-c", script, name]) for name in ("a", "b", "c")]
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0, 0]
    with ResponseCache(tmp_path / CACHE_FILE_NAME) as cache:
        assert len(cache) == 600
        assert cache._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_api_key_comes_from_env_and_never_reaches_the_cache(tmp_path, monkeypatch):
    secret = "sk-test-DO-NOT-STORE-4242"
    monkeypatch.setenv("STILLHOUSE_TEST_KEY", secret)
    with FakeOpenAIServer(api_key=secret) as server:
        teacher = build_teacher(config(server, api_key_env="STILLHOUSE_TEST_KEY"), cache_dir=tmp_path)
        generations = run(teacher, [TeacherRequest.chat(f"secret {i}") for i in range(5)])
    assert all(g.ok for g in generations)
    assert f"Bearer {secret}" in server.authorization_headers  # the key was used ...
    for path in tmp_path.iterdir():  # ... and is in no file the cache wrote (db, WAL, shm)
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in json.dumps(config(server, api_key_env="STILLHOUSE_TEST_KEY").model_dump())


def test_wrong_api_key_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("STILLHOUSE_TEST_KEY", "sk-wrong")
    with FakeOpenAIServer(api_key="sk-right") as server:
        teacher = build_teacher(config(server, api_key_env="STILLHOUSE_TEST_KEY"), cache_dir=None)
        with pytest.raises(TeacherError, match=r"rejected the API key from \$STILLHOUSE_TEST_KEY") as error:
            run(teacher, [TeacherRequest.chat("hi")])
    assert "sk-wrong" not in str(error.value) and "\n" not in str(error.value)


def test_missing_api_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("STILLHOUSE_UNSET_KEY", raising=False)
    cfg = OpenAITeacherConfig(
        model="gpt-4o-mini", base_url="https://api.example.com/v1", api_key_env="STILLHOUSE_UNSET_KEY"
    )
    with pytest.raises(MissingApiKeyError, match="STILLHOUSE_UNSET_KEY") as error:
        build_teacher(cfg)
    assert "\n" not in str(error.value)


def test_unreachable_server_names_the_url():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    teacher = build_teacher(OpenAITeacherConfig(model="m", base_url=url, max_retries=2), cache_dir=None)
    started = time.monotonic()
    with pytest.raises(ServerUnreachableError, match=f"cannot reach the teacher server at {url}") as error:
        run(teacher, [TeacherRequest.chat(f"hi {i}") for i in range(4)])
    assert "\n" not in str(error.value)
    assert time.monotonic() - started < 20  # fails fast, does not back off for minutes


def test_unknown_model_is_named(tmp_path):
    with FakeOpenAIServer() as server:
        teacher = build_teacher(config(server, model="no-such-model"), cache_dir=tmp_path)
        with pytest.raises(UnknownModelError, match="unknown model 'no-such-model'") as error:
            run(teacher, [TeacherRequest.chat("hi")])
    assert "\n" not in str(error.value)


def test_token_ids_from_the_server(tmp_path, tiny_llama):
    request = TeacherRequest.chat("ids please", top_logprobs=2, max_tokens=12)
    with FakeOpenAIServer() as server:
        cfg = config(server, return_token_ids=True, tokenizer=str(tiny_llama))
        [generation] = run(build_teacher(cfg, cache_dir=None), [request])
    indices = [i % len(server.vocab) for i in expected_token_indices(request.openai_messages(), 0, 12)]
    sample = generation.samples[0]
    assert generation.token_ids_source == "server"
    assert sample.token_ids == indices
    assert sample.logprobs == [fake_logprob(i, p) for p, i in enumerate(indices)]
    assert [ids[0] for ids in sample.top_ids] == indices and all(len(ids) == 2 for ids in sample.top_ids)


def test_token_ids_recovered_with_the_tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    # The fake model speaks in real vocabulary entries of the tiny tokenizer.
    specials = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in specials and "\ufffd" not in tokenizer.decode([i])][:40]
    vocab = [tokenizer.decode([i]) for i in ids]
    request = TeacherRequest.chat("recover my ids", top_logprobs=3, max_tokens=12)
    with FakeOpenAIServer(vocab=vocab) as server:
        cfg = config(server, tokenizer=str(tiny_llama))
        [generation] = run(build_teacher(cfg, cache_dir=None), [request])
    indices = [i % len(vocab) for i in expected_token_indices(request.openai_messages(), 0, 12)]
    sample = generation.samples[0]
    assert generation.token_ids_source == "tokenizer"
    assert generation.teacher.tokenizer_hash is not None
    assert sample.token_ids == [ids[i] for i in indices]
    assert [top[0] for top in sample.top_ids] == sample.token_ids


def test_rate_limiter_paces_requests_and_tokens():
    now = [0.0]
    limiter = RateLimiter(rpm=60, clock=lambda: now[0])
    assert [limiter.reserve(1) for _ in range(4)] == [0.0, 1.0, 2.0, 3.0]  # one a second
    limiter = RateLimiter(tpm=600, clock=lambda: now[0])
    assert limiter.reserve(100) == 0.0  # 100 tokens = 10 s of a 600/min allowance
    assert limiter.reserve(50) == pytest.approx(10.0)
    now[0] = 30.0  # after a quiet spell there is no backlog
    assert limiter.reserve(10) == 0.0
    limiter.pause_until(35.0)  # a 429 Retry-After pushes the next request back
    assert limiter.reserve(1) == pytest.approx(5.0)


def test_rpm_limit_spreads_requests_over_time():
    with FakeOpenAIServer() as server:
        teacher = build_teacher(config(server, rpm=600), cache_dir=None)  # one per 0.1 s
        start = time.monotonic()
        run(teacher, [TeacherRequest.chat(f"paced {i}") for i in range(6)])
    # Request k may leave no sooner than k x 0.1 s after the start; a loaded machine only
    # delays arrivals, so this bound holds however noisy the gaps between them are.
    arrivals = sorted(t - start for t in server.request_times)
    assert all(at >= k * 0.1 - 0.005 for k, at in enumerate(arrivals)), arrivals


def test_prompt_bound_is_an_upper_bound_for_byte_level_tokenizers(tiny_llama):
    from transformers import AutoTokenizer

    from factory.teachers.local_models import chat_prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    for text in ["hi", "Explain why the sky looks blue.", "ünïcödé ✓ 数据" * 5]:
        request = TeacherRequest.chat(text, system="Be brief.")
        assert len(chat_prompt_ids(tokenizer, request)) <= prompt_token_bound(request)


def test_config_rejects_unknown_keys_and_dispatches_on_backend():
    adapter = TypeAdapter(TeacherConfig)
    parsed = adapter.validate_python({"backend": "openai", "model": "gpt-4o-mini", "rpm": 500})
    assert isinstance(parsed, OpenAITeacherConfig) and parsed.api_key_env == "OPENAI_API_KEY"
    with pytest.raises(ValidationError, match="api_key"):
        adapter.validate_python({"backend": "openai", "model": "m", "api_key": "sk-nope"})
    with pytest.raises(ValidationError, match="prices"):
        adapter.validate_python({"backend": "openai", "model": "m", "budget": {"max_usd": 5}})
    with pytest.raises(ValidationError):
        adapter.validate_python({"backend": "mystery", "model": "m"})


def test_a_vllm_server_is_asked_for_ids_and_its_own_tokenizer_is_hashed(tiny_llama):
    from factory.teachers.local_models import load_tokenizer
    from factory.teachers.tokenizers import tokenizer_hash

    request = TeacherRequest.chat("ids by default", n=2, top_logprobs=3, max_tokens=12)
    with FakeOpenAIServer(owned_by="vllm", root=str(tiny_llama)) as server:
        [generation] = run(build_teacher(config(server), cache_dir=None), [request])  # no extra keys
    [body] = server.bodies
    assert body["return_tokens_as_token_ids"] is True
    assert body["top_logprobs"] == 4  # vLLM lists the sampled token first: one more keeps the true top-3
    assert generation.token_ids_source == "server"
    assert generation.teacher.tokenizer == str(tiny_llama)
    assert generation.teacher.tokenizer_hash == tokenizer_hash(load_tokenizer(tiny_llama))
    for choice, sample in enumerate(generation.samples):
        indices = [i % len(server.vocab) for i in expected_token_indices(request.openai_messages(), choice, 12)]
        assert sample.token_ids == indices and not sample.ids_missing
        assert all(len(top) == 3 and top == sorted(top, reverse=True) for top in sample.top_logprobs)
        assert [ids[0] for ids in sample.top_ids] == indices


def test_server_ids_without_a_tokenizer_here_are_refused_before_the_first_request(tmp_path):
    with FakeOpenAIServer(owned_by="vllm", root="/models/not-on-this-machine") as server:
        teacher = build_teacher(config(server), cache_dir=tmp_path)
        with pytest.raises(TeacherError) as error:
            run(teacher, [TeacherRequest.chat("hi", top_logprobs=2)])
    message = str(error.value)
    assert "set teacher.tokenizer" in message and "/models/not-on-this-machine" in message and "\n" not in message
    assert server.counts["requests"] == 0


def test_samples_whose_ids_cannot_be_had_are_marked_and_counted(tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    specials = set(tokenizer.all_special_ids)
    known = [tokenizer.decode([i]) for i in range(len(tokenizer)) if i not in specials][:40]
    known = [token for token in known if "\ufffd" not in token]
    # vLLM's quirk without ids: a single byte that is not complete UTF-8 comes back as '' with bytes [].
    vocab = [*known[:15], ""]
    requests = [TeacherRequest.chat(f"mark me {i}", top_logprobs=2, max_tokens=8) for i in range(12)]
    with FakeOpenAIServer(vocab=vocab) as server:
        with_tokenizer = build_teacher(config(server, tokenizer=str(tiny_llama)), cache_dir=None)
        recovered = run(with_tokenizer, requests)
        without = build_teacher(config(server), cache_dir=None)
        plain = run(without, requests)
    for generation in recovered:
        [sample] = generation.samples
        has_gap = any(i % len(vocab) == 15 for i in expected_token_indices(generation.request.openai_messages(), 0, 8))
        assert sample.ids_missing == has_gap
        assert sample.token_ids == [] if has_gap else len(sample.token_ids) == len(sample.logprobs)
        assert len(sample.top_logprobs) == len(sample.logprobs)  # logprobs are kept either way (entropy)
    gaps = sum(g.samples[0].ids_missing for g in recovered)
    assert 0 < gaps < len(requests) and with_tokenizer.stats.ids_missing == gaps
    assert all(g.samples[0].ids_missing and not g.samples[0].token_ids for g in plain)
    assert without.stats.ids_missing == len(requests)


def test_the_servers_own_status_is_named_when_the_connection_fails_later():
    with FakeOpenAIServer(script=["500_and_die"]) as server:
        teacher = build_teacher(config(server, max_retries=2, concurrency=1), cache_dir=None)
        [generation] = run(teacher, [TeacherRequest.chat("hello")])
    assert not generation.ok
    assert generation.error.startswith("failed after 3 attempt(s): 500 from server; ")
    assert "Connection error" in generation.error and "(2x)" in generation.error
    assert teacher.last_error == generation.error and "\n" not in generation.error
