"""distilabel's own tasks (their prompts and parsers) driven by our engine, on a scripted teacher."""

from __future__ import annotations

import asyncio

import polars as pl
import pytest
from fixtures.scripted_teacher import ScriptedTeacher, last_user

from factory.errors import ConfigError, SchemaError
from factory.tasks import DistilabelConfig, build_task
from factory.tasks.base import new_record


def frame(**extra) -> pl.DataFrame:
    rows = [new_record("What is 2 + 2?", ""), new_record("Name a colour of the sky.", "")]
    for name, values in extra.items():
        for row, value in zip(rows, values):
            row[name] = value
    return pl.DataFrame(rows, schema_overrides={"parent_id": pl.String})


def test_text_generation_task():
    teacher = ScriptedTeacher(lambda request: f"answer to {last_user(request)}")
    config = DistilabelConfig(
        type="distilabel", task="distilabel.steps.tasks.TextGeneration", params={"system_prompt": "Be brief."}
    )
    result = asyncio.run(build_task(config).run(frame(), teacher))
    assert result["response"].to_list() == ["answer to What is 2 + 2?", "answer to Name a colour of the sky."]
    assert teacher.requests[0].messages == (("system", "Be brief."), ("user", "What is 2 + 2?"))
    assert result["samples"].list.len().to_list() == [1, 1]


def test_ultrafeedback_task_parses_ratings():
    def judge(request):
        prompt = last_user(request)
        assert "<text 1> 4" in prompt or "<text 1> blue" in prompt
        return (
            "#### Output for Text 1\nRating: 5\nRationale: correct\n\n"
            "#### Output for Text 2\nRating: 1\nRationale: wrong"
        )

    config = DistilabelConfig(
        type="distilabel",
        task="distilabel.steps.tasks.UltraFeedback",
        params={"aspect": "overall-rating"},
        input_mapping={"generations": "candidates"},
        output_mapping={"ratings": "judge_ratings", "rationales": "judge_rationales"},
    )
    records = frame(candidates=[["4", "5"], ["blue", "green"]])
    result = asyncio.run(build_task(config).run(records, ScriptedTeacher(judge)))
    assert result["judge_ratings"].to_list() == [[5, 1], [5, 1]]
    assert result["judge_rationales"].to_list()[0] == ["correct", "wrong"]
    assert result["drop_stage"].is_null().all()


def test_bad_task_paths_and_missing_inputs():
    with pytest.raises(ConfigError, match="cannot import"):
        build_task(DistilabelConfig(type="distilabel", task="distilabel.steps.tasks.NoSuchTask"))
    with pytest.raises(ConfigError, match="not a distilabel Task"):
        build_task(DistilabelConfig(type="distilabel", task="polars.DataFrame"))
    task = build_task(DistilabelConfig(type="distilabel", task="distilabel.steps.tasks.UltraFeedback"))
    with pytest.raises(SchemaError, match="input 'generations' needs column 'generations'"):
        asyncio.run(task.run(frame(), ScriptedTeacher(lambda request: "")))


def test_distilabel_leaves_no_traceback_hook_and_no_warnings(tmp_path):
    """distilabel installs rich's traceback with locals on import; after our import an error
    prints Python's own short traceback, and nothing else reaches stderr."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import sys\n"
        "hook = sys.excepthook\n"
        "from factory.tasks.distilabel_task import load_distilabel_task\n"
        "from factory.tasks.evol_instruct import mutation_templates\n"
        "load_distilabel_task('distilabel.steps.tasks.TextGeneration', {})\n"
        "mutation_templates()\n"
        "assert sys.excepthook is hook, sys.excepthook\n"
        "def deep(n, payload='x' * 500):\n"
        "    return deep(n - 1) if n else 1 / 0\n"
        "deep(5)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", script],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(repo)},
    )
    assert done.returncode == 1
    assert done.stderr.startswith("Traceback (most recent call last):"), done.stderr[:2000]
    assert done.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    assert len(done.stderr.splitlines()) < 30 and "payload" not in done.stderr  # no locals dumped
