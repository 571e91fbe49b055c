"""`--dry-run` estimates against what a run then records (fake OpenAI server that counts
prompt tokens with the teacher's tokenizer, as vLLM does)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fixtures.fake_openai_server import FakeOpenAIServer
from rich.console import Console

from factory.teachers.base import TeacherRequest
from stillhouse.config import load_run_config
from stillhouse.estimate import PromptCounter, estimate_run, estimate_vs_actual
from stillhouse.run import Runner

JUDGE = ("Rate the response", "Fine.\nScore: 7")  # the fake model answers the judge rubric
SEEDS = [f"Explain in two sentences why parcel number {i} arrived {i % 5 + 1} days late." for i in range(30)]


def write_config(directory: Path, url: str, tokenizer: str | None, **teacher) -> Path:
    (directory / "seeds.jsonl").write_text("".join(json.dumps({"prompt": text}) + "\n" for text in SEEDS))
    config = {
        "name": "estimate",
        "run_dir": str(directory / "runs"),
        "seeds": {"path": "seeds.jsonl", "columns": {"instruction": "prompt"}},
        "teacher": {
            "backend": "openai",
            "model": "fake-model",
            "base_url": url,
            "concurrency": 4,
            "tokenizer": tokenizer,
            "prices": {
                "input_per_1m": 1.0,
                "output_per_1m": 2.0,
                "batch_input_per_1m": 0.5,
                "batch_output_per_1m": 1.0,
            },
            **teacher,
        },  # fmt: skip
        "tasks": [{"type": "respond", "n": 2, "max_tokens": 12, "top_logprobs": 2}],
        "curation": [{"stage": "exact_dedup"}, {"stage": "judge", "min_score": None, "max_tokens": 16}],
        "publish": {"name": "estimate", "root": str(directory / "datasets")},
    }
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_estimate_counts_task_and_judge_requests_and_matches_the_run(tmp_path, tiny_llama):
    from transformers import AutoTokenizer

    with FakeOpenAIServer(prompt_tokenizer=AutoTokenizer.from_pretrained(tiny_llama), canned_replies=[JUDGE]) as server:
        config = load_run_config(write_config(tmp_path, server.url, str(tiny_llama)))
        estimate = estimate_run(config)
        assert server.counts["requests"] == 0  # the estimate sends nothing
        assert [step.step for step in estimate.steps] == ["respond", "judge (score_1_10)"]
        assert estimate.requests == 2 * len(SEEDS)  # one respond and one judge request per seed
        result = Runner(config, tmp_path / "run.yaml", Console(quiet=True)).execute()
    stats = result.state.teacher
    assert server.counts["requests"] == estimate.requests
    rows = {what: (estimated, actual) for what, estimated, actual, _ in estimate_vs_actual(estimate.as_dict(), stats)}
    assert rows["teacher requests"] == (f"{estimate.requests:,}", f"{server.counts['requests']:,}")
    # respond prompts are exact; the judge's carry the response at its max_tokens length
    assert 0.75 * stats["prompt_tokens"] <= estimate.prompt_tokens <= 1.25 * stats["prompt_tokens"]
    respond = estimate.steps[0]
    assert respond.prompt_tokens == result.state.steps["task-0-respond"]["teacher"]["prompt_tokens"]  # exact
    assert stats["completion_tokens"] <= estimate.completion_tokens  # completions: the upper bound
    assert respond.completion_tokens == len(SEEDS) * 2 * 12
    # priced at the online rate, half that in batch mode
    batch = estimate_run(load_run_config(write_config(tmp_path, server.url, str(tiny_llama), mode="batch")))
    assert batch.usd == pytest.approx(estimate.usd / 2)


def test_prompt_counter_uses_the_teachers_tokenizer_and_says_so(tiny_llama):
    from transformers import AutoTokenizer

    from factory.teachers import OpenAITeacherConfig
    from factory.teachers.local_models import chat_prompt_ids

    request = TeacherRequest.chat("Why is the sky blue? Answer briefly.", system="Be brief.")
    known = PromptCounter(OpenAITeacherConfig(model="m", tokenizer=str(tiny_llama)))
    assert known(request) == len(chat_prompt_ids(AutoTokenizer.from_pretrained(tiny_llama), request))
    assert known.name == str(tiny_llama)
    unknown = PromptCounter(OpenAITeacherConfig(model="m"))
    assert "chars/token" in unknown.name and 0 < unknown(request) < len("".join(c for _, c in request.messages))
    broken = PromptCounter(OpenAITeacherConfig(model="m", tokenizer="/nonexistent/tokenizer"))
    assert "did not load" in broken.name and broken(request) == unknown(request)
