"""`stillhouse run` with a judge that answers gibberish (the fake OpenAI server): the run fails, unless allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fixtures.fake_openai_server import FakeOpenAIServer

from curation.store import DatasetStore

SEEDS = [f"Write one short sentence about topic {i}." for i in range(6)]


def write_config(directory: Path, url: str, **judge: object) -> Path:
    (directory / "seeds.jsonl").write_text("".join(json.dumps({"prompt": text}) + "\n" for text in SEEDS))
    config = {
        "name": "judged",
        "run_dir": str(directory / "runs"),
        "seeds": {"path": "seeds.jsonl", "columns": {"instruction": "prompt"}},
        "teacher": {"backend": "openai", "model": "fake-model", "base_url": f"{url}/v1", "max_retries": 0},
        "tasks": [{"type": "respond", "n": 1, "max_tokens": 8}],
        "curation": [{"stage": "judge", "max_tokens": 16, **judge}],
        "publish": {"name": "judged", "root": str(directory / "datasets")},
    }
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def server():
    with FakeOpenAIServer(latency_s=0.0) as fake:
        yield fake


def test_a_gibberish_judge_fails_the_run_and_publishes_nothing(tmp_path, server, run_cli, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    code, out, err = run_cli("run", write_config(tmp_path, server.url))
    assert code != 0
    assert "judge 'judge' is not working: 6 of 6 replies unscored (6 unparsable after a retry, 0 failed)" in err
    assert "allow_unparsable: true" in err
    assert DatasetStore(tmp_path / "datasets").versions("judged") == []
    # every unparsable reply was retried once: 6 respond + 6 judge + 6 retries
    assert server.counts["requests"] == 18


def test_allow_unparsable_publishes_and_says_how_many(tmp_path, server, run_cli, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    code, out, err = run_cli("run", write_config(tmp_path, server.url, allow_unparsable=True, on_unparsable="keep"))
    assert code == 0, err
    assert "WARNING: judge 'judge' is not working: 6 of 6" in err + out
    kept = DatasetStore(tmp_path / "datasets").resolve("judged@latest").read()
    assert kept.height == len(SEEDS) and kept["judge_score"].is_null().all()
    assert kept["judge_error"].str.starts_with("unparsable reply").all()
