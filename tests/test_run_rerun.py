"""A finished run, run again, does no work: no teacher fitting, labelling, training or evaluation,
and it prints the same figures (the classifier path of the quickstart, at a small size)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

QUICKSTART = Path(__file__).resolve().parents[1] / "configs"


def small_quickstart(directory: Path) -> Path:
    data = directory / "data"
    data.mkdir()
    for name, lines in (("teacher_train.jsonl", None), ("tickets.jsonl", 60), ("test.jsonl", 40)):
        text = (QUICKSTART / "data" / "quickstart" / name).read_text(encoding="utf-8").splitlines()
        (data / name).write_text("\n".join(text[:lines] if lines else text) + "\n", encoding="utf-8")
    config = yaml.safe_load((QUICKSTART / "quickstart.yaml").read_text(encoding="utf-8"))
    config["seeds"]["path"] = "data/tickets.jsonl"
    config["teacher_training"] = {"data": "data/teacher_train.jsonl", "epochs": 20}
    config["eval"]["test"] = "data/test.jsonl"
    config["train"]["epochs"] = 2
    config["publish"]["root"] = str(directory / "datasets")
    config["run_dir"] = str(directory / "runs")
    config["teacher"]["model"] = str(directory / "runs" / "quickstart" / "teacher")
    path = directory / "quickstart.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def figures(out: str) -> str:
    """The printed student-vs-teacher table."""
    start = out.index("student vs teacher")
    return "\n".join(line.rstrip() for line in out[start : out.index("run quickstart", start)].splitlines()).strip()


@pytest.mark.slow
def test_a_second_run_reuses_every_step_and_prints_the_same_figures(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = small_quickstart(tmp_path)
    code, first, err = run_cli("run", config)
    assert code == 0, err + first
    state_path = tmp_path / "runs" / "quickstart" / "state.json"
    before = json.loads(state_path.read_text())
    # Nothing a step produced may be recomputed: remove what only a recomputation would rewrite.
    stamps = {name: step.get("finished_at") for name, step in before["steps"].items() if name != "summary"}

    code, second, err = run_cli("run", config)
    assert code == 0, err + second
    after = json.loads(state_path.read_text())
    assert {name: after["steps"][name].get("finished_at") for name in stamps} == stamps
    reused = set(after["steps"]["summary"]["reused"])
    assert {"teacher_training", "task-0-label", "curation", "publish", "train", "eval"} <= reused
    assert "reused" in second and "this run: 0 requests sent" in second
    assert figures(second) == figures(first)
    assert re.search(r"macro-F1\s+\S+\s+\S+", figures(second))
    # the F1 ratio comes with its bootstrap interval over the test rows
    interval = json.loads((tmp_path / "runs" / "quickstart" / "eval" / "evaluation.json").read_text())
    low, high = interval["ratios"]["f1_interval_95"]
    assert low <= interval["ratios"]["f1"] <= high and f"({low:.3f} to {high:.3f})" in figures(second)
    assert [p.name for p in sorted((tmp_path / "datasets" / "tickets").glob("v*"))] == ["v1"]
    # the student matched the teacher on the teacher's own examples too (none of them is in the pool)
    provenance = json.loads(
        (tmp_path / "runs" / "quickstart" / "student" / "model" / "stillhouse_training.json").read_text()
    )
    assert provenance["config"]["student"]["match_data"].endswith("teacher_train.jsonl")
    assert provenance["matched_teacher"]["match_data_texts"] == 84


def test_a_removed_step_output_is_recomputed_not_trusted(tmp_path, run_cli, monkeypatch):
    """A step recorded done whose output is gone is computed again (and the run still finishes)."""
    monkeypatch.chdir(tmp_path)
    config = small_quickstart(tmp_path)
    raw = yaml.safe_load(config.read_text())
    raw.pop("train"), raw.pop("eval")
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    code, out, err = run_cli("run", config)
    assert code == 0, err + out
    shutil.rmtree(tmp_path / "runs" / "quickstart" / "steps" / "curation")
    code, out, err = run_cli("run", config)
    assert code == 0, err + out
    assert "curation: recorded output is missing; computing it again" in out
    assert (tmp_path / "runs" / "quickstart" / "steps" / "curation" / "output.parquet").is_file()
