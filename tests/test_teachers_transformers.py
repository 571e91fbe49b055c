"""The transformers backend on a real tiny Llama: batched, left-padded, true logprobs."""

from __future__ import annotations

import asyncio

import pytest
import torch

from factory.teachers import ModelNotFoundError, TeacherRequest, TransformersTeacherConfig, build_teacher
from factory.teachers.local_models import chat_prompt_ids

PROMPTS = ["Explain why the sky looks blue.", "List three ways to save water", "Hi", "Please reset my card pin now."]


def run(teacher, requests):
    return asyncio.run(teacher.generate(requests))


@pytest.fixture(scope="module")
def teacher(tiny_llama):
    torch.set_num_threads(2)
    cfg = TransformersTeacherConfig(model=str(tiny_llama), device="cpu", batch_size=4, dtype="float32")
    return build_teacher(cfg)


def test_greedy_logprobs_are_the_true_model_logprobs(teacher):
    requests = [TeacherRequest.chat(p, system="Be brief.", max_tokens=10, top_logprobs=5) for p in PROMPTS]
    generations = run(teacher, requests)
    for request, generation in zip(requests, generations):
        [sample] = generation.samples
        assert generation.token_ids_source == "engine" and generation.teacher.tokenizer_hash
        assert len(sample.token_ids) == len(sample.logprobs) == len(sample.top_ids) == 10
        assert sample.finish_reason == "length"
        # One unpadded forward pass over prompt + answer gives the same numbers.
        prompt = chat_prompt_ids(teacher.tokenizer, request)
        ids = torch.tensor([prompt + sample.token_ids])
        with torch.no_grad():
            logits = teacher.model(ids).logits[0, len(prompt) - 1 : -1]
        direct = torch.log_softmax(logits.float(), dim=-1)
        assert sample.token_ids == direct.argmax(-1).tolist()  # greedy = argmax of the raw logits
        expected = direct.gather(1, torch.tensor(sample.token_ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(sample.logprobs), expected, atol=1e-4)
        top = torch.topk(direct, 5, dim=-1)
        assert sample.top_ids == top.indices.tolist()
        assert torch.allclose(torch.tensor(sample.top_logprobs), top.values, atol=1e-4)
        assert sample.top_ids[0][0] == sample.token_ids[0]
        assert generation.usage.prompt_tokens == len(prompt) and generation.usage.completion_tokens == 10


def test_sampling_n_seeds_and_unwarped_logprobs(teacher):
    request = TeacherRequest.chat("Write a short note", n=3, temperature=1.3, top_p=0.5, max_tokens=8, seed=7)
    [first] = run(teacher, [request])
    [again] = run(teacher, [request])
    assert len(first.samples) == 3
    assert [s.token_ids for s in first.samples] == [s.token_ids for s in again.samples]  # seeded
    for sample in first.samples:
        # True logprobs: top-p would have put -inf on most of the vocabulary in `scores`.
        assert all(lp > -1e4 for lp in sample.logprobs)
    greedy = TeacherRequest.chat("Write a short note", n=2, max_tokens=6)
    [copies] = run(teacher, [greedy])
    assert len(copies.samples) == 2 and copies.samples[0].token_ids == copies.samples[1].token_ids


def test_stop_strings_end_the_sample(teacher):
    request = TeacherRequest.chat("Explain why the sky looks blue.", max_tokens=12)
    [free] = run(teacher, [request])
    text = free.samples[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), f"no usable stop string in {text!r}"
    [stopped] = run(teacher, [TeacherRequest.chat("Explain why the sky looks blue.", max_tokens=12, stop=(stop,))])
    sample = stopped.samples[0]
    assert sample.finish_reason == "stop"
    assert sample.text == text[: text.find(stop)]
    assert sample.token_ids == free.samples[0].token_ids[: len(sample.token_ids)]
    assert len(sample.token_ids) < 12


def test_budget_applies_to_local_backends(tiny_llama):
    cfg = TransformersTeacherConfig(model=str(tiny_llama), device="cpu", dtype="float32", budget={"max_tokens": 120})
    teacher = build_teacher(cfg)
    generations = run(teacher, [TeacherRequest.chat(f"item {i}", max_tokens=8) for i in range(10)])
    answered = [g for g in generations if g.ok]
    assert answered and len(answered) < 10
    assert teacher.stats.prompt_tokens + teacher.stats.completion_tokens <= 120
    assert all("budget exhausted" in g.error for g in generations if not g.ok)


def test_missing_model_directory_is_one_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match=f"transformers model directory {tmp_path / 'nope'} does not exist"):
        build_teacher(TransformersTeacherConfig(model=str(tmp_path / "nope")))
