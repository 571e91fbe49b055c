"""Evol-Instruct: the paper's elimination rules one by one, then end to end on a scripted teacher."""

from __future__ import annotations

import asyncio
import re

import polars as pl
import pytest
from distilabel.steps.tasks.evol_instruct.utils import MUTATION_TEMPLATES
from fixtures.scripted_teacher import Failure, ScriptedTeacher, last_user, request_log

from factory.tasks import EvolInstructConfig, build_task
from factory.tasks.base import new_record
from factory.tasks.evol_instruct import (
    TEMPLATE_KEYS,
    CopiedScaffold,
    NoInformationGain,
    OnlyStopWords,
    SorryResponse,
    render_mutation,
)


@pytest.mark.parametrize(
    "evolved, reason",
    [
        ("#Rewritten Prompt#: List five rivers.", "copied_scaffold: '#rewritten prompt#'"),
        ("Rewrite the given prompt so that it names five rivers.", "copied_scaffold: 'given prompt'"),
        ("The created prompt: name rivers by length.", "copied_scaffold: 'created prompt'"),
        ("List five rivers of Asia ordered by length, with their sources.", None),
    ],
)
def test_copied_scaffold(evolved, reason):
    assert CopiedScaffold().check(evolved) == reason


@pytest.mark.parametrize(
    "response, reason",
    [
        ("Sorry, I cannot answer that.", "sorry_response: 5 words"),
        ("I'm SORRY but this needs more context.", "sorry_response: 7 words"),
        ("Sorry to hear that. " + "Here is a long and complete answer. " * 12, None),  # long: a real answer
        ("The capital of France is Paris.", None),
        ("Sorrymuch is not a word.", None),
    ],
)
def test_sorry_response(response, reason):
    assert SorryResponse(80).check(response) == reason


@pytest.mark.parametrize(
    "response, eliminated",
    [("", True), ("...!?", True), ("The, and of it; so.", True), ("It is what it is.", True), ("Paris.", False)],
)
def test_only_stop_words(response, eliminated):
    assert (OnlyStopWords().check(response) == "only_stopwords") is eliminated


@pytest.mark.parametrize(
    "verdict, reason",
    [
        ("Equal", "no_information_gain"),
        ("Not Equal", None),  # the old parser read both of these as no verdict
        ("NOT EQUAL.", None),
        ("**Not equal**", None),
        ("They differ in depth, so: Not Equal", None),
        ("At first glance not equal, but on reflection: Equal", "no_information_gain"),
        ("No new constraint is added, so yes.", "no_information_gain"),  # yes, they are equal
        ("No.", None),
        ("", "unparsable_equality_verdict: ''"),
        ("I am unsure.", "unparsable_equality_verdict: 'I am unsure.'"),
    ],
)
def test_no_information_gain(verdict, reason):
    assert NoInformationGain().check(verdict) == reason


def given_prompt(prompt: str) -> str:
    match = re.search(r"#(?:The )?Given Prompt#:\n(.*)\n#(?:Rewritten|Created) Prompt#:", prompt, re.S)
    assert match, prompt[:200]
    return match.group(1)


def script(request):
    prompt = last_user(request)
    if prompt.startswith("I want you act as a Prompt"):
        parent = given_prompt(prompt)
        if "SCAFFOLD" in parent:
            return "#Rewritten Prompt#: " + parent
        if "EMPTY" in parent:
            return "   "
        if "SAME" in parent:
            return parent + " please"
        return f"{parent} Add step {request.seed % 997}."
    if prompt.startswith("Here are two instructions"):
        evolved = prompt.split("The second instruction:\n")[1].split("\n\n")[0]
        return "Equal" if evolved.endswith("please") else "Not Equal"
    if "SORRY" in prompt:
        return "Sorry, I can't do that."
    if "STOPWORDS" in prompt:
        return "It is what it is..."
    return f"A full answer to: {prompt[:40]}"


PARENTS = [
    "Explain photosynthesis to a ten year old.",
    "List the planets of the solar system.",
    "SCAFFOLD Describe a sunset.",
    "SAME Name three fruits.",
    "SORRY Write a sonnet.",
    "STOPWORDS Say something.",
    "EMPTY Compose a tune.",
]
CONFIG = EvolInstructConfig(type="evol_instruct", generations=2, seed=3)


def parent_records() -> pl.DataFrame:
    return pl.DataFrame([new_record(text) for text in PARENTS], schema_overrides={"parent_id": pl.String})


def run(teacher, config=CONFIG) -> pl.DataFrame:
    return asyncio.run(build_task(config).run(parent_records(), teacher))


def test_evol_instruct_end_to_end():
    teacher = ScriptedTeacher(script)
    result = run(teacher)
    parents = parent_records()
    by_parent = {row["instruction"]: row["id"] for row in parents.to_dicts()}
    reasons = {
        row["drop_reason"]: row
        for row in result.filter(pl.col("drop_stage") == "evol_instruct").to_dicts()
        if row["parent_id"] in by_parent.values()
    }
    expected = {
        "copied_scaffold: '#rewritten prompt#'": "SCAFFOLD Describe a sunset.",
        "no_information_gain": "SAME Name three fruits.",
        "sorry_response: 5 words": "SORRY Write a sonnet.",
        "only_stopwords": "STOPWORDS Say something.",
        "empty_evolution": "EMPTY Compose a tune.",
    }
    for reason, parent in expected.items():
        assert reasons[reason]["parent_id"] == by_parent[parent], reason

    kept = result.filter(pl.col("drop_stage").is_null())
    assert kept.height == 4  # the two good parents survive both generations
    assert (
        kept["origin"].str.contains(r"^evol:(add_constraints|deepen|concretize|increase_reasoning|in_breadth)$").all()
    )
    assert kept["response"].str.starts_with("A full answer").all()
    assert kept["samples"].list.len().min() == 1
    # lineage: a second-generation survivor descends from a first-generation survivor of the same seed
    ids = set(kept["id"])
    second = kept.filter(pl.col("parent_id").is_in(list(ids)))
    assert second.height == 2
    for row in second.to_dicts():
        parent = kept.filter(pl.col("id") == row["parent_id"]).row(0, named=True)
        assert row["instruction"].startswith(parent["instruction"])
        assert parent["parent_id"] in by_parent.values()

    # prompts are distilabel's canonical templates rendered with the parent
    evolve = [r for r in teacher.requests if last_user(r).startswith("I want you act as a Prompt")]
    templates = {render_mutation(MUTATION_TEMPLATES[key], PARENTS[0]) for key in TEMPLATE_KEYS.values()}
    assert last_user(evolve[0]) in templates
    # a failed evolution leaves its parent to be evolved again in the next generation
    sorry_evolutions = [r for r in evolve if given_prompt(last_user(r)) == "SORRY Write a sonnet."]
    assert len(sorry_evolutions) == 2


def test_evol_instruct_is_deterministic_and_mutations_follow_config():
    a, b = ScriptedTeacher(script), ScriptedTeacher(script)
    first, second = run(a), run(b)
    assert request_log(a) == request_log(b)
    assert first.equals(second)
    only = run(ScriptedTeacher(script), CONFIG.model_copy(update={"mutations": ["in_breadth"]}))
    assert set(only["origin"]) == {"evol:in_breadth"}


def test_evol_instruct_eliminates_evolutions_the_judge_could_not_judge():
    def judge_fails(request):
        judging = last_user(request).startswith("Here are two instructions")
        return Failure("judge timed out") if judging else script(request)

    result = run(ScriptedTeacher(judge_fails), CONFIG.model_copy(update={"generations": 1}))
    kept = result.filter(pl.col("drop_stage").is_null())
    assert kept.height == 0
    assert "teacher_error: judge timed out" in result["drop_reason"].to_list()


def test_evol_instruct_without_gain_check_and_with_failures():
    def failing(request):
        if "Explain photosynthesis" in last_user(request):
            return Failure("server error")
        return script(request)

    config = CONFIG.model_copy(update={"check_information_gain": False, "generations": 1})
    teacher = ScriptedTeacher(failing)
    task = build_task(config)
    result = asyncio.run(task.run(parent_records(), teacher))
    assert not any(last_user(r).startswith("Here are two instructions") for r in teacher.requests)
    assert task.stats["failed_requests"] == 1
    # without the judge, the SAME evolution survives
    assert result.filter(pl.col("instruction") == "SAME Name three fruits. please")["drop_stage"].to_list() == [None]
    assert task.estimate_requests(7) == 14


def test_evol_instruct_skips_records_dropped_earlier():
    frame = parent_records().with_columns(
        drop_stage=pl.when(pl.col("instruction").str.starts_with("List")).then(pl.lit("dedup")),
        drop_reason=pl.when(pl.col("instruction").str.starts_with("List")).then(pl.lit("exact_duplicate")),
    )
    teacher = ScriptedTeacher(script)
    config = CONFIG.model_copy(update={"generations": 1})
    asyncio.run(build_task(config).run(frame, teacher))
    evolved = [given_prompt(last_user(r)) for r in teacher.requests if last_user(r).startswith("I want you act")]
    assert "List the planets of the solar system." not in evolved and len(evolved) == len(PARENTS) - 1
