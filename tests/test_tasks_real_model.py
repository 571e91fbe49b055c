"""The tasks on a real (tiny, random) transformers model through build_teacher: the real
generation and logprob path, the response cache that makes a rerun free, and the
parsers and elimination rules facing genuinely malformed text."""

from __future__ import annotations

import asyncio

import numpy as np
import polars as pl
import pytest

from factory.schema import conform
from factory.tasks import EvolInstructConfig, LabelConfig, RespondConfig, SelfInstructConfig, build_task
from factory.tasks.base import new_record

pytestmark = pytest.mark.slow

SEEDS = [
    "Write a short note to a customer about a delayed parcel.",
    "Classify the sentiment of the review as positive or negative.",
    "Explain why the sky looks blue in two sentences.",
    "List three ways to save water at home.",
    "Translate the sentence into French and keep the tone polite.",
    "Summarise the paragraph in one line for a busy manager.",
    "Rewrite the instruction so it needs more reasoning steps.",
    "Please reset my card pin, I forgot it after the holiday.",
]
SELF_INSTRUCT_REASONS = {
    "too_similar", "unsuitable_for_text", "too_short", "too_long", "bad_start", "empty",  # instructions
    "no_instances", "empty_output", "output_copies_input", "incomplete_instance", "same_input_different_output",
}  # fmt: skip
EVOL_REASONS = {
    "copied_scaffold", "no_information_gain", "unparsable_equality_verdict", "sorry_response", "only_stopwords",
    "empty_evolution", "teacher_error",
}  # fmt: skip


@pytest.fixture(scope="module")
def teacher_factory(tiny_llama):
    import torch

    from factory.teachers import TransformersTeacherConfig, build_teacher

    torch.set_num_threads(2)

    def make(cache_dir):
        config = TransformersTeacherConfig(model=str(tiny_llama), device="cpu", dtype="float32", batch_size=8)
        return build_teacher(config, cache_dir=cache_dir)

    return make


def seeds() -> pl.DataFrame:
    return pl.DataFrame([new_record(text) for text in SEEDS], schema_overrides={"parent_id": pl.String})


def run(task, records, teacher) -> pl.DataFrame:
    return asyncio.run(task.run(records, teacher))


def test_self_instruct_on_tiny_model_and_free_rerun(teacher_factory, tmp_path):
    config = SelfInstructConfig(
        type="self_instruct", target_size=3, max_rounds=2, prompts_per_round=2, max_tokens=48, seed=1
    )
    teacher = teacher_factory(tmp_path / "cache")
    task = build_task(config)
    result = run(task, seeds(), teacher)
    conform(result)
    assert task.stats["rounds"] >= 1 and teacher.stats.requests_sent >= 2
    dropped = result.filter(pl.col("drop_stage").is_not_null())
    assert {reason.split(":")[0] for reason in dropped["drop_reason"]} <= SELF_INSTRUCT_REASONS
    # every new candidate instruction has its rows (one per instance, or one dropped row)
    assert task.stats["candidates"] == result["instruction"].n_unique() + task.stats["repeated"]

    again = teacher_factory(tmp_path / "cache")
    rerun = run(build_task(config), seeds(), again)
    assert again.stats.requests_sent == 0 and again.stats.cache_hits == teacher.stats.requests_sent
    assert rerun.equals(result)


def test_evol_instruct_on_tiny_model(teacher_factory, tmp_path):
    config = EvolInstructConfig(
        type="evol_instruct", generations=2, max_tokens=32, response_max_tokens=24, top_logprobs=3, seed=2
    )
    records = seeds().head(3)
    teacher = teacher_factory(tmp_path / "cache")
    task = build_task(config)
    result = run(task, records, teacher)
    conform(result)
    assert result.height >= 3
    assert result["origin"].str.starts_with("evol:").all()
    known_ids = set(records["id"]) | set(result["id"])
    assert result["parent_id"].is_in(list(known_ids)).all()
    dropped = result.filter(pl.col("drop_stage").is_not_null())
    assert {reason.split(":")[0] for reason in dropped["drop_reason"]} <= EVOL_REASONS
    answered = result.filter(pl.col("samples").is_not_null())
    for sample in answered["samples"].explode().to_list():
        assert len(sample["token_ids"]) == len(sample["logprobs"]) == len(sample["top_ids"])
        assert all(len(top) == 3 for top in sample["top_ids"])
        assert max(sample["logprobs"]) <= 0.0


def test_respond_on_tiny_model(teacher_factory, tmp_path):
    config = RespondConfig(type="respond", n=3, max_tokens=12, top_logprobs=4, chain_of_thought=True, seed=3)
    result = run(build_task(config), seeds().head(2), teacher_factory(tmp_path / "cache"))
    conform(result)
    assert result["samples"].list.len().to_list() == [3, 3]
    assert "final_answer" in result.columns
    for row in result.to_dicts():
        assert row["response"] == row["samples"][row["chosen_sample"]]["text"]


def test_label_on_tiny_model_matches_its_logprobs(teacher_factory, tmp_path, tiny_llama):
    """label_probs equal the softmax, over the label set, of the model's own next-token logprobs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.teachers.local_models import chat_prompt_ids

    # three strings that are single tokens the random tiny model ranks in its top 20 after these prompts
    labels = ["c", "cti", "men"]
    records = pl.DataFrame(
        [new_record("Classify the topic of this support ticket.", text) for text in SEEDS[-3:]],
        schema_overrides={"parent_id": pl.String},
    )
    config = LabelConfig(type="label", labels=labels, top_logprobs=20, seed=4)
    task = build_task(config)
    result = run(task, records, teacher_factory(tmp_path / "cache"))
    conform(result)
    assert result["drop_stage"].is_null().all()

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    label_ids = [tokenizer.encode(label, add_special_tokens=False)[0] for label in labels]
    for row in result.to_dicts():
        ids = chat_prompt_ids(tokenizer, task._request(row, "logprobs"))
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), dim=-1)
        top20 = set(torch.topk(logprobs, 20).indices.tolist())
        assert set(label_ids) <= top20, "the fixture model changed: pick labels among its top-20 tokens"
        expected = torch.softmax(logprobs[label_ids], dim=0).numpy()
        probs = np.array(row["label_probs"])
        np.testing.assert_allclose(probs, expected, atol=1e-4)
        assert probs.sum() == pytest.approx(1.0, abs=1e-6)
        assert row["label"] == labels[int(expected.argmax())]
