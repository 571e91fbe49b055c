"""Respond (n samples, choice rule, chain of thought) and Label (soft targets) on scripted teachers."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import polars as pl
import pytest
from fixtures.scripted_teacher import Failure, Reply, ScriptedTeacher, last_user, request_log

from factory.errors import ConfigError
from factory.schema import conform
from factory.tasks import LabelConfig, RespondConfig, build_task
from factory.tasks.base import new_record, rejected
from factory.tasks.label import label_logprobs
from factory.tasks.respond import choose_sample
from factory.teachers.base import Sample


def records(*texts: str, inputs: tuple[str, ...] = ()) -> pl.DataFrame:
    inputs = inputs or ("",) * len(texts)
    rows = [new_record(text, given) for text, given in zip(texts, inputs)]
    return pl.DataFrame(rows, schema_overrides={"parent_id": pl.String})


def run(config, frame, teacher) -> pl.DataFrame:
    return asyncio.run(build_task(config).run(frame, teacher))


# ---- respond ------------------------------------------------------------------------------------


def test_choose_sample_prefers_finished_then_confident():
    samples = [
        Sample("cut off but confident", "length", [1], [-0.01]),
        Sample("finished, unsure", "stop", [2, 3], [-2.0, -1.0]),
        Sample("finished, confident", "stop", [4, 5], [-0.2, -0.4]),
        Sample("finished, no logprobs", "stop"),
    ]
    assert choose_sample(samples) == 2
    assert choose_sample([samples[0], samples[3]]) == 1  # the only finished one
    assert choose_sample([samples[0]]) == 0  # none finished: fall back to all
    cot = [Sample("Final answer: 4", "stop", [1], [-1.5]), Sample("It is four.", "stop", [1], [-0.1])]
    assert choose_sample(cot, need_final_answer=True) == 0
    assert choose_sample(cot, need_final_answer=False) == 1


def test_respond_n_samples_with_logprobs():
    def answer(request):
        return [Reply("Paris is the capital.", "stop"), Reply("Paris", "length"), Reply("It is Paris.", "stop")]

    teacher = ScriptedTeacher(answer)
    frame = records("What is the capital of France?", "Name a prime number.")
    already_dropped = rejected(new_record("Dropped before.", ""), "dedup", "exact_duplicate")
    frame = pl.concat(
        [frame, pl.DataFrame([already_dropped], schema_overrides={"parent_id": pl.String})], how="diagonal"
    )
    config = RespondConfig(type="respond", n=3, top_logprobs=4, seed=1)
    result = run(config, frame, teacher)
    assert len(teacher.requests) == 2  # the dropped row is not answered
    answered = result.filter(pl.col("drop_stage").is_null())
    assert answered["samples"].list.len().to_list() == [3, 3]
    assert result.schema["chosen_sample"] == pl.Int32  # a record-schema column
    for row in answered.to_dicts():
        chosen = row["samples"][row["chosen_sample"]]
        assert row["response"] == chosen["text"] and chosen["finish_reason"] == "stop"
        for sample in row["samples"]:
            assert len(sample["token_ids"]) == len(sample["logprobs"]) == len(sample["top_logprobs"])
            assert all(len(top) == 4 for top in sample["top_ids"])
        params = json.loads(row["teacher"]["params"])
        assert params["n"] == 3 and params["top_logprobs"] == 4
    assert result.filter(pl.col("drop_stage") == "dedup")["drop_reason"].to_list() == ["exact_duplicate"]
    request = teacher.requests[0]
    assert (request.n, request.top_logprobs, request.temperature) == (3, 4, 0.8)


def test_respond_chain_of_thought_and_failures():
    def answer(request):
        if "prime" in last_user(request):
            return Failure("budget exhausted")
        return [Reply("6 * 7 is 42.\nFinal answer: 42"), Reply("I think 41.")]

    teacher = ScriptedTeacher(answer)
    config = RespondConfig(type="respond", n=2, chain_of_thought=True)
    result = run(config, records("What is 6 times 7?", "Name a prime number."), teacher)
    assert "Final answer:" in dict(teacher.requests[0].messages)["system"]
    kept = result.filter(pl.col("drop_stage").is_null())
    assert kept["final_answer"].to_list() == ["42"]
    failed = result.filter(pl.col("drop_stage") == "respond")
    assert failed["drop_reason"].to_list() == ["teacher_error: budget exhausted"]


def test_respond_requests_are_deterministic():
    a, b = ScriptedTeacher(lambda r: "ok"), ScriptedTeacher(lambda r: "ok")
    frame = records("One question here.", "Another question here.")
    config = RespondConfig(type="respond", seed=5)
    run(config, frame, a)
    run(config, frame.reverse(), b)  # same requests per record, whatever the order
    assert sorted(map(str, request_log(a))) == sorted(map(str, request_log(b)))
    assert len({r.seed for r in a.requests}) == 2


# ---- label --------------------------------------------------------------------------------------

LABELS = ["card", "transfer", "billing"]
TASK = "Classify the topic of this support ticket."


@pytest.fixture(scope="module")
def label_ids(tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    return [tokenizer.encode(label, add_special_tokens=False)[0] for label in LABELS]


def test_three_class_soft_targets_from_label_logprobs(tiny_llama, label_ids):
    # teacher probabilities at the answer position: the three labels plus one non-label token
    distributions = {
        "My card is blocked.": [0.5, 0.25, 0.05],
        "Money sent yesterday is missing.": [0.1, 0.7, 0.1],
        "Why was I charged twice?": [0.05, 0.15, 0.6],
    }

    def answer(request):
        text = next(t for t in distributions if t in last_user(request))
        probs = distributions[text]
        top = {token: math.log(p) for token, p in zip(label_ids, probs)}
        top[5] = math.log(1 - sum(probs))
        return Reply(LABELS[int(np.argmax(probs))], first_token=top)

    teacher = ScriptedTeacher(answer, tokenizer=str(tiny_llama))
    frame = records(*[TASK] * 3, inputs=tuple(distributions))
    config = LabelConfig(type="label", labels=LABELS, temperature=1.0)
    result = run(config, frame, teacher)
    assert result["drop_stage"].is_null().all()
    conform(result)  # label_probs sum to 1 per the schema check
    for row in result.to_dicts():
        expected = np.array(distributions[row["input"]]) / sum(distributions[row["input"]])
        np.testing.assert_allclose(row["label_probs"], expected, atol=1e-6)
        assert sum(row["label_probs"]) == pytest.approx(1.0, abs=1e-6)
        assert row["label"] == LABELS[int(np.argmax(expected))]
        params = json.loads(row["teacher"]["params"])
        assert params["label_temperature"] == 1.0 and params["label_source"] == "logprobs"
    assert result.schema["label_probs"] == pl.List(pl.Float32)
    assert all("card, transfer, billing" in last_user(r) for r in teacher.requests)

    sharper = run(
        config.model_copy(update={"temperature": 0.5}), frame, ScriptedTeacher(answer, tokenizer=str(tiny_llama))
    )
    probs = np.array(distributions["My card is blocked."]) ** 2
    np.testing.assert_allclose(sharper["label_probs"][0].to_list(), probs / probs.sum(), atol=1e-6)


def test_labels_missing_from_top_k(label_ids):
    # 'billing' is not among the top-k: it gets an even share of the residual mass, capped by the top-k minimum
    top_ids = [[label_ids[0], label_ids[1], 7]]
    sample = Sample(
        "card", "stop", [label_ids[0]], [math.log(0.6)], top_ids, [[math.log(0.6), math.log(0.2), math.log(0.1)]]
    )
    logprobs = label_logprobs(sample, label_ids)
    np.testing.assert_allclose(np.exp(logprobs), [0.6, 0.2, 0.1], atol=1e-9)
    sample.top_logprobs = [[math.log(0.6), math.log(0.3), math.log(0.08)]]
    np.testing.assert_allclose(np.exp(label_logprobs(sample, label_ids)), [0.6, 0.3, 0.02], atol=1e-9)
    sample.top_ids = [[3, 4, 7]]
    sample.token_ids = [3]
    assert label_logprobs(sample, label_ids) is None  # no label anywhere near the top


def test_label_rows_without_label_tokens_are_dropped(tiny_llama, label_ids):
    teacher = ScriptedTeacher(lambda r: Reply("unsure", first_token={3: -0.1, 4: -2.5}), tokenizer=str(tiny_llama))
    result = run(LabelConfig(type="label", labels=LABELS), records(TASK, inputs=("Hello?",)), teacher)
    assert result["drop_reason"].to_list() == ["no_label_in_top_k"]


def test_label_set_whose_labels_share_a_first_token_is_refused(tiny_llama):
    teacher = ScriptedTeacher(lambda r: "x", tokenizer=str(tiny_llama))
    with pytest.raises(ConfigError, match="'negative' and 'neutral' start with the same token"):
        run(LabelConfig(type="label", labels=["positive", "negative", "neutral"]), records(TASK), teacher)


def test_soft_targets_from_classifier_teacher():
    teacher_labels = ["transfer", "billing", "card"]  # the classifier's own order
    probs = {
        "My card is blocked.": [0.1, 0.2, 0.7],
        "Charged twice.": [0.05, 0.9, 0.05],
        "Where is my money?": [0.8, 0.1, 0.1],
    }
    teacher = ScriptedTeacher(lambda r: "", labels=teacher_labels, class_probs=lambda r: probs[last_user(r)])
    result = run(LabelConfig(type="label", labels=LABELS), records(*[TASK] * 3, inputs=tuple(probs)), teacher)
    for row in result.to_dicts():
        given = dict(zip(teacher_labels, probs[row["input"]]))
        np.testing.assert_allclose(row["label_probs"], [given[label] for label in LABELS], atol=1e-6)
        assert row["label"] == max(given, key=given.get)
        assert json.loads(row["teacher"]["params"])["label_source"] == "classifier"
    assert [last_user(r) for r in teacher.requests] == list(probs)  # the classifier sees the text only
    wrong = ScriptedTeacher(lambda r: "", labels=["a", "b", "c"], class_probs=lambda r: [0.2, 0.3, 0.5])
    with pytest.raises(ConfigError, match="missing from teacher"):
        run(LabelConfig(type="label", labels=LABELS), records(TASK), wrong)


def test_scripted_teacher_queue_answers_in_order():
    teacher = ScriptedTeacher(["first answer", [Reply("a", "length"), Reply("b")], Failure("gone")])
    config = RespondConfig(type="respond", n=2, top_logprobs=2, batch_size=1)
    result = run(config, records("Q one here?", "Q two here?", "Q three here?"), teacher)
    assert result["response"].to_list()[:2] == ["first answer", "b"]
    assert result["drop_reason"].to_list() == [None, None, "teacher_error: gone"]
    with pytest.raises(AssertionError, match="ran out of replies"):
        run(config, records("One more question?"), teacher)
