"""`prefilter:` stages run on the prompts before any teacher request: what they drop is
never sent, is published as rejected with its reason, and shows in the funnel and summary."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from fixtures.fake_openai_server import FakeOpenAIServer
from pydantic import ValidationError
from rich.console import Console

from curation.store import DatasetStore
from stillhouse.config import load_run_config
from stillhouse.estimate import estimate_run
from stillhouse.run import Runner, summary_table

JUDGE = ("Rate the response", "Fine.\nScore: 7")  # the fake model answers the judge rubric
GOOD = [
    "Write one friendly sentence about our new parcel lockers.",
    "Explain why the sky looks blue at noon and red at dusk.",
    "List three ways to keep a sourdough starter alive on holiday.",
    "Summarise the plot of a heist film in two lines.",
    "Give a short apology for a delayed refund to a customer.",
    "Translate 'good morning, team' into French and Spanish.",
    "Suggest a name for a bakery that only opens at night.",
    "Describe how a bicycle gear system trades speed for force.",
    "Draft a reminder that the office closes early on Friday.",
    "Compare tea and coffee for an afternoon slump, briefly.",
]
# an empty-ish prompt, and a near-duplicate of the first good one (one character changed)
BAD = ["   ?   ", "Write one friendly sentence about our new parcel lockers!"]


def write_config(directory: Path, url: str, **overrides) -> Path:
    (directory / "seeds.jsonl").write_text("".join(json.dumps({"prompt": text}) + "\n" for text in GOOD + BAD))
    config = {
        "name": "pre",
        "run_dir": str(directory / "runs"),
        "seeds": {"path": "seeds.jsonl", "columns": {"instruction": "prompt"}},
        "teacher": {"backend": "openai", "model": "fake-model", "base_url": url, "concurrency": 4},
        "prefilter": [
            {"stage": "heuristics", "column": "instruction", "truncated": False, "refusals": False, "min_chars": 10},
            {
                "stage": "minhash_dedup",
                "columns": ["instruction", "input"],
                "threshold": 0.7,
                "shingle": "char",
                "ngram": 5,
            },
        ],  # fmt: skip
        "tasks": [{"type": "respond", "n": 1, "max_tokens": 8}],
        "curation": [{"stage": "exact_dedup"}, {"stage": "judge", "min_score": None, "max_tokens": 16}],
        "publish": {"name": "pre", "root": str(directory / "datasets")},
        **overrides,
    }
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_prefiltered_prompts_are_never_sent_and_are_published_with_their_reason(tmp_path):
    with FakeOpenAIServer(canned_replies=[JUDGE]) as server:
        config = load_run_config(write_config(tmp_path, server.url))
        estimate = estimate_run(config)
        result = Runner(config, tmp_path / "run.yaml", Console(quiet=True)).execute()
        sent = server.counts["requests"]
    # one respond and one judge request per prompt the prefilter kept, none for the others
    assert sent == 2 * len(GOOD) == estimate.requests and estimate.prefiltered == len(BAD)
    version = DatasetStore(tmp_path / "datasets").resolve("pre@latest")
    rejected = pl.read_parquet(version.path / "rejected.parquet")
    dropped = dict(zip(rejected["instruction"], rejected["drop_stage"]))
    assert dropped[BAD[0]] == "prefilter_heuristics"
    assert dropped[BAD[1]] == "prefilter_minhash_dedup"
    assert rejected.filter(pl.col("instruction") == BAD[1])["drop_reason"][0].startswith("near_duplicate")
    assert rejected["samples"].null_count() == rejected.height  # never answered
    funnel = {entry["stage"]: entry for entry in version.manifest["funnel"]}
    assert list(funnel)[:2] == ["prefilter_heuristics", "prefilter_minhash_dedup"]
    step = result.state.steps["prefilter"]
    assert step["dropped"] == 2 and step["requests_saved"] == 4  # a respond and a judge request each
    console = Console(record=True, width=200)
    console.print(summary_table(result))
    assert "2 prompts dropped before the teacher: 4 requests saved" in console.export_text()


def test_a_resumed_run_reuses_the_prefilter_step(tmp_path):
    with FakeOpenAIServer(canned_replies=[JUDGE]) as server:
        path = write_config(tmp_path, server.url)
        Runner(load_run_config(path), path, Console(quiet=True)).execute()
        again = Runner(load_run_config(path), path, Console(quiet=True)).execute()
    assert "prefilter" in again.reused


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"stage": "heuristics", "truncated": False}, "['response'], which the teacher has not written yet"),
        ({"stage": "exact_dedup"}, "['response'], which the teacher has not written yet"),
        ({"stage": "heuristics", "column": "instruction"}, "set truncated: false"),
        ({"stage": "entropy", "max_entropy": 2.0}, "only heuristics, exact_dedup"),
        ({"stage": "judge"}, "only heuristics, exact_dedup"),
    ],
)
def test_prefilter_accepts_only_stages_that_need_just_the_prompt(tmp_path, stage, message):
    path = write_config(tmp_path, "http://127.0.0.1:9/v1", prefilter=[stage])
    with pytest.raises((ValidationError, Exception), match="prefilter") as caught:
        load_run_config(path)
    assert message in str(caught.value)
