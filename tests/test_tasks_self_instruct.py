"""Self-Instruct end to end on a scripted teacher: pool growth, filters, classification, instances."""

from __future__ import annotations

import asyncio
import json
import random
import re

import polars as pl
import pytest
from conftest import shared_data
from fixtures.scripted_teacher import Failure, Reply, ScriptedTeacher, last_user, request_log

from factory.errors import SchemaError
from factory.shards import ShardWriter, read_shards
from factory.tasks import SelfInstructConfig, build_task
from factory.tasks.base import new_record
from factory.tasks.instruction_filters import EmptyOutput, EndsWithColon, OutputCopiesInput, SameInputDifferentOutput
from factory.tasks.parsing import Instance
from factory.tasks.self_instruct import load_seed_tasks

SEEDS = [
    "Suggest a healthy breakfast that contains no eggs.",
    "Explain the rules of chess to a beginner.",
    "Classify the following movie review as positive or negative.",
    "Write a polite email declining a meeting invitation.",
    "Give three arguments for planting trees in cities.",
    "Convert the recipe quantities from cups to grams.",
    "What causes the seasons on Earth?",
    "Summarise the news article in two sentences.",
    "Find the grammatical error in the sentence and correct it.",
    "Propose a name for a new coffee shop near a university.",
]
VOCABULARY = [f"{stem}{n}" for stem in ("alpha", "brio", "cato", "dune", "ember", "fjord") for n in range(40)]


def seed_records() -> pl.DataFrame:
    return pl.DataFrame([new_record(text, "", "seed") for text in SEEDS], schema_overrides={"parent_id": pl.String})


def examples_in(prompt: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^\d+\. (.+)$", prompt, re.M)]


def script(request):
    prompt = last_user(request)
    if prompt.startswith("We are collecting"):
        rng = random.Random(request.seed)
        examples = examples_in(prompt)
        fresh = [" ".join(["Explain"] + rng.sample(VOCABULARY, 7)) + "." for _ in range(3)]
        items = [
            fresh[0],
            examples[0].replace(".", " today."),  # near copy of an in-context example: too similar
            "Describe the picture of " + " ".join(rng.sample(VOCABULARY, 4)) + ".",  # needs an image
            "Name it.",  # too short
            "Classify " + " ".join(rng.sample(VOCABULARY, 5)) + " as positive or negative.",
            "- " + " ".join(rng.sample(VOCABULARY, 6)),  # starts with punctuation
            fresh[1],
            fresh[2],
            "Outline the TRUNCATED",  # cut off by the token limit
        ]
        # the reply continues the list the prompt started ("N."): the first item has no number
        listed = items[0] + "\n" + "\n".join(f"{n}. {t}" for n, t in enumerate(items[1:], len(examples) + 2))
        return Reply(listed, finish_reason="length")
    if prompt.startswith("Would a correct answer"):
        return "Yes." if "Classify" in prompt else "No, it is open-ended."
    if prompt.startswith("The task below asks to pick a class label"):
        return "Label: positive\nInput: What a lovely day.\n\nLabel: negative\nInput: Terrible food."
    if prompt.startswith("Write 5 example instances"):
        return "Input: <noinput>\nOutput: An answer.\n\nInput: a second input\nOutput: Another answer."
    raise AssertionError(f"unexpected prompt: {prompt[:80]}")


def run_task(config: SelfInstructConfig, records: pl.DataFrame, teacher, shards=None) -> pl.DataFrame:
    return asyncio.run(build_task(config).run(records, teacher, shards))


CONFIG = SelfInstructConfig(type="self_instruct", target_size=12, prompts_per_round=2, max_rounds=10, seed=7)


def test_self_instruct_end_to_end(tmp_path):
    teacher = ScriptedTeacher(script)
    result = run_task(CONFIG, seed_records(), teacher, ShardWriter(tmp_path / "shards"))
    kept = result.filter(pl.col("drop_stage").is_null())
    dropped = result.filter(pl.col("drop_stage").is_not_null())

    # one row per instance: every kept instruction comes with its instances' inputs
    assert kept["instruction"].n_unique() == CONFIG.target_size
    assert kept.height == 2 * CONFIG.target_size
    assert set(result["origin"]) == {"self_instruct"}
    assert (dropped["drop_stage"] == "self_instruct").all()
    codes = {reason.split(":")[0] for reason in dropped["drop_reason"]}
    assert {"too_similar", "unsuitable_for_text", "too_short", "bad_start"} <= codes
    similar = dropped.filter(pl.col("drop_reason").str.starts_with("too_similar"))["drop_reason"]
    assert all(float(reason.split("=")[1]) > 0.7 for reason in similar)
    assert not result["instruction"].str.contains("TRUNCATED").any()  # the cut-off last item is dropped

    # classification tasks: identified by the teacher, instances generated output-first, one row per label
    classification = kept.filter(pl.col("is_classification"))
    assert classification.height > 0
    assert classification["instruction"].str.starts_with("Classify").all()
    by_input = dict(classification.select("input", "instance_output").unique().iter_rows())
    assert by_input == {"What a lovely day.": "positive", "Terrible food.": "negative"}
    open_ended = kept.filter(~pl.col("is_classification"))
    assert set(open_ended["input"]) == {"", "a second input"}  # <noinput> -> empty input
    instance_prompts = [last_user(r) for r in teacher.requests if "example instances" in last_user(r)]
    label_prompts = [last_user(r) for r in teacher.requests if "pick a class label" in last_user(r)]
    assert len(label_prompts) == classification["instruction"].n_unique()
    assert len(instance_prompts) == open_ended["instruction"].n_unique()
    # the paper's penalties: presence 2 for new instructions, 1.5 for instances
    penalties = {
        (r.presence_penalty, r.frequency_penalty) for r in teacher.requests if "example instances" in last_user(r)
    }
    assert penalties == {(1.5, 0.0)}
    assert {r.presence_penalty for r in teacher.requests if last_user(r).startswith("We are collecting")} == {2.0}

    # in-context sampling: 8 human seeds first, then 6 human + 2 machine once the pool has some
    generation_prompts = [last_user(r) for r in teacher.requests if last_user(r).startswith("We are collecting")]
    machine = set(kept["instruction"])
    first, later = examples_in(generation_prompts[0]), examples_in(generation_prompts[-1])
    assert len(first) == 8 and all(text in SEEDS for text in first)
    assert sum(text in SEEDS for text in later) == 6 and sum(text in machine for text in later) == 2

    # ids are content hashes of the record, shards hold exactly what was returned
    assert result["id"].n_unique() == result.height
    assert sorted(read_shards(tmp_path / "shards")["id"]) == sorted(result["id"])


def test_self_instruct_is_deterministic():
    first, second = ScriptedTeacher(script), ScriptedTeacher(script)
    a = run_task(CONFIG, seed_records(), first)
    b = run_task(CONFIG, seed_records(), second)
    assert request_log(first) == request_log(second)
    assert a.equals(b)
    other = ScriptedTeacher(script)
    run_task(CONFIG.model_copy(update={"seed": 8}), seed_records(), other)
    assert request_log(other) != request_log(first)


def test_self_instruct_survives_failed_requests_and_stops_at_max_rounds():
    calls = {"n": 0}

    def flaky(request):
        calls["n"] += 1
        if last_user(request).startswith("We are collecting") and calls["n"] % 2 == 1:
            return Failure("rate limited for good")
        return script(request)

    config = CONFIG.model_copy(update={"target_size": 1000, "max_rounds": 2})
    task = build_task(config)
    result = asyncio.run(task.run(seed_records(), ScriptedTeacher(flaky)))
    assert task.stats["rounds"] == 2
    assert task.stats["failed_requests"] == 2
    assert result.filter(pl.col("drop_stage").is_null()).height > 0


def test_self_instruct_rejects_empty_seed_records():
    with pytest.raises(SchemaError, match="no seed records"):
        run_task(CONFIG, seed_records().head(0), ScriptedTeacher(script))


def test_load_seed_tasks_real_file():
    frame = load_seed_tasks(shared_data("self_instruct", "seed_tasks.jsonl"))
    assert frame.height == 175
    assert set(frame["origin"]) == {"seed"}
    assert 0 < frame["is_classification"].sum() < 175
    result = run_task(CONFIG.model_copy(update={"target_size": 4}), frame, ScriptedTeacher(script))
    assert result.filter(pl.col("drop_stage").is_null())["instruction"].n_unique() == 4


def test_load_seed_tasks_names_bad_line(tmp_path):
    path = tmp_path / "seeds.jsonl"
    good = {"id": "t1", "name": "n", "instruction": "Do a thing well.", "instances": [], "is_classification": False}
    path.write_text(json.dumps(good) + "\n" + '{"id": "t2", "name": "broken"}\n')
    with pytest.raises(SchemaError, match=r"seeds.jsonl:2"):
        load_seed_tasks(path)


def test_instance_filters_each_name_their_reason():
    assert EmptyOutput().check(Instance("x", " ")) == "empty_output"
    assert OutputCopiesInput().check(Instance("same", "same ")) == "output_copies_input"
    assert EndsWithColon().check(Instance("Translate:", "Bonjour")) == "incomplete_instance: input ends with ':'"
    assert EndsWithColon().check(Instance("a", "The steps are:")) == "incomplete_instance: output ends with ':'"
    good = Instance("2 + 2", "4")
    assert all(f.check(good) is None for f in (EmptyOutput(), OutputCopiesInput(), EndsWithColon()))
    rule = SameInputDifferentOutput()
    assert rule.check([Instance("", "a"), Instance("", "b")]) is None  # no input: alternatives are fine
    assert rule.check([good, good]) is None
    assert rule.check([good, Instance("2 + 2", "5")]) == "same_input_different_output: '2 + 2'"


def test_self_instruct_keeps_up_to_five_instances_and_drops_bad_ones():
    instance_replies = {
        "Explain": "\n".join(
            [
                "Input: first input\nOutput: first output",
                "Input: echo\nOutput: echo",  # output copies input
                "Input: empty one\nOutput:",  # empty output
                "Input: first input\nOutput: first output",  # exact duplicate: collapses
                "Input: cut\nOutput: The answer is:",  # incomplete
                "Input: sixth\nOutput: beyond the five asked for",
            ]
        ),
        "Classify": "Label: positive\nInput: Nice.\nLabel: negative\nInput: Nice.",  # one input, two labels
    }

    def bad_instances(request):
        prompt = last_user(request)
        if prompt.startswith("Write 5 example instances") or prompt.startswith("The task below asks"):
            return instance_replies["Classify" if "Classify" in prompt else "Explain"]
        return script(request)

    config = CONFIG.model_copy(update={"target_size": 4, "max_rounds": 1})
    task = build_task(config)
    result = asyncio.run(task.run(seed_records(), ScriptedTeacher(bad_instances)))
    rows = result.filter(pl.col("drop_reason").is_null() | ~pl.col("drop_reason").str.contains("similar|short|start"))
    explain = rows.filter(pl.col("instruction").str.starts_with("Explain"))
    per_task = explain.group_by("instruction").agg(pl.col("input").sort(), pl.col("drop_reason").sort_by("input"))
    assert per_task.height >= 1
    for inputs, reasons in zip(per_task["input"], per_task["drop_reason"]):
        assert inputs.to_list() == ["cut", "echo", "empty one", "first input"]
        assert reasons.to_list() == [
            "incomplete_instance: output ends with ':'",
            "output_copies_input",
            "empty_output",
            None,
        ]
    assert task.stats["duplicate_instances"] == per_task.height
    classify = rows.filter(pl.col("instruction").str.starts_with("Classify"))
    assert classify.height >= 1 and classify["drop_reason"].str.starts_with("same_input_different_output").all()
    assert (classify["input"] == "").all()  # the task's own row, not an instance
