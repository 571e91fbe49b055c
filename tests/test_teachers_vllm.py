"""The vLLM backend on the real engine (CPU build), its parity with transformers, and the OpenAI
backend against vLLM's real OpenAI server (ids, true top-k and the tokenizer hash by default)."""

from __future__ import annotations

import asyncio
import os

import pytest
import torch
from fixtures.teacher_calls import generate_and_close

from factory.teachers import (
    OpenAITeacherConfig,
    TeacherRequest,
    TransformersTeacherConfig,
    VLLMTeacherConfig,
    build_teacher,
)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROMPTS = ["Explain why the sky looks blue.", "List three ways to save water", "Hi", "Please reset my card pin now."]


def run(teacher, requests):
    return asyncio.run(teacher.generate(requests))


GREEDY = [TeacherRequest.chat(p, system="Be brief.", max_tokens=10, top_logprobs=5) for p in PROMPTS]
SAMPLED = TeacherRequest.chat("Write a short note", n=3, temperature=1.0, max_tokens=8, seed=3, top_logprobs=2)
# What a test's in-process engine runs with: no separate engine-core process, a small KV cache.
IN_PROCESS_ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}


def _generate_with_an_in_process_engine(model: str) -> dict:
    """Runs in a spawned child: an in-process vLLM engine binds the process's OpenMP threads and
    NUMA memory and replaces torch.set_num_threads for good, which would slow every later torch
    test in the pytest process (on one CI machine past its timeout)."""
    os.environ.update(IN_PROCESS_ENGINE_ENV)
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    teacher = build_teacher(VLLMTeacherConfig(model=model, dtype="float32", enforce_eager=True, max_model_len=256))
    return {
        "tokenizer_hash": teacher.identity.tokenizer_hash,
        "greedy": run(teacher, GREEDY),
        "sampled": run(teacher, [SAMPLED]) + run(teacher, [SAMPLED]),
    }


@pytest.fixture(scope="module")
def from_vllm(tiny_llama) -> dict:
    """One in-process engine, in a child process: its generations for the tests below."""
    pytest.importorskip("vllm")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(_generate_with_an_in_process_engine, str(tiny_llama)).result(timeout=600)


def test_vllm_and_transformers_agree_on_greedy_ids_and_logprobs(from_vllm, tiny_llama):
    hf = build_teacher(TransformersTeacherConfig(model=str(tiny_llama), device="cpu", dtype="float32", batch_size=4))
    from_hf = run(hf, GREEDY)
    assert from_vllm["tokenizer_hash"] == hf.identity.tokenizer_hash
    assert len(from_vllm["greedy"]) == len(from_hf) == len(PROMPTS)
    for a, b in zip(from_vllm["greedy"], from_hf):
        [va], [hb] = a.samples, b.samples
        assert a.token_ids_source == "engine"
        assert va.token_ids == hb.token_ids and len(va.token_ids) == 10
        assert va.top_ids == hb.top_ids
        assert torch.allclose(torch.tensor(va.logprobs), torch.tensor(hb.logprobs), atol=1e-3)
        assert torch.allclose(torch.tensor(va.top_logprobs), torch.tensor(hb.top_logprobs), atol=1e-3)
        assert va.finish_reason == hb.finish_reason == "length"
        assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_vllm_sampling_n_and_seed(from_vllm):
    first, again = from_vllm["sampled"]
    assert len(first.samples) == 3
    assert [s.token_ids for s in first.samples] == [s.token_ids for s in again.samples]
    for sample in first.samples:
        assert len(sample.token_ids) == len(sample.logprobs) == len(sample.top_ids)
        assert all(len(top) == 2 for top in sample.top_ids)


def test_vllm_engine_starts_after_minhash_dedup_ran_in_the_same_process(tiny_llama, tmp_path):
    """A run that deduplicates prompts (numba, hence llvmlite) before an in-process vLLM teacher:
    vLLM's kernel dispatcher scans every module's globals at start-up and used to fail on
    llvmlite's lazy `lib` object."""
    pytest.importorskip("vllm")
    import subprocess
    import sys

    script = f"""
import asyncio, polars as pl
from curation.minhash_kernel import band_keys
from curation.text import gram_hashes
band_keys(*gram_hashes(pl.Series(["one two three four"]), "word", 3), 4, 2, 1)
from factory.teachers import TeacherRequest, VLLMTeacherConfig, build_teacher
teacher = build_teacher(VLLMTeacherConfig(model={str(tiny_llama)!r}, dtype="float32", enforce_eager=True,
                                          max_model_len=128))
[generation] = asyncio.run(teacher.generate([TeacherRequest.chat("Hi", max_tokens=4)]))
assert generation.ok, generation.error
print("ok", len(generation.samples[0].token_ids))
"""
    env = {**os.environ, **IN_PROCESS_ENGINE_ENV}
    env.setdefault("VLLM_HOST_IP", "127.0.0.1")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ok 4" in done.stdout


def test_vllm_server_gives_ids_true_top_k_and_the_tokenizer_hash_with_no_extra_keys(vllm_server, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.teachers.local_models import chat_prompt_ids
    from factory.teachers.tokenizers import tokenizer_hash

    config = OpenAITeacherConfig(model=vllm_server.model, base_url=vllm_server.url, timeout_s=300, max_retries=1)
    requests = [
        TeacherRequest.chat(prompt, n=2, temperature=1.0, max_tokens=12, top_logprobs=4, seed=index)
        for index, prompt in enumerate(PROMPTS)
    ]
    generations = generate_and_close(build_teacher(config), requests)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    for generation in generations:
        assert generation.ok, generation.error
        assert generation.token_ids_source == "server"
        assert generation.teacher.tokenizer_hash == tokenizer_hash(tokenizer)
        prompt = chat_prompt_ids(tokenizer, generation.request)
        assert generation.usage.prompt_tokens == len(prompt)
        for sample in generation.samples:
            assert not sample.ids_missing and len(sample.token_ids) == len(sample.logprobs) == 12
            # Teacher-forced on what the server sampled, the same weights give the same logprobs
            # and the true top-4 at every position (vLLM's server lists the sampled token first;
            # the backend asks for one more and keeps the best four).
            with torch.no_grad():
                logits = model(torch.tensor([prompt + sample.token_ids])).logits[0].float()
            logprobs = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
            sampled = logprobs.gather(1, torch.tensor(sample.token_ids)[:, None])[:, 0]
            assert torch.allclose(sampled, torch.tensor(sample.logprobs), atol=1e-3)
            top = logprobs.topk(4, dim=-1)
            assert sample.top_ids == top.indices.tolist()
            assert torch.allclose(torch.tensor(sample.top_logprobs), top.values, atol=1e-3)
