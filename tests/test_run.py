"""`stillhouse run`: bad configs, dry runs, and resuming after SIGKILL at many points."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fixtures.fake_openai_server import FakeOpenAIServer

from curation.store import DatasetStore

REPO = Path(__file__).resolve().parents[1]
SEEDS = [f"Write one friendly sentence about topic number {i} for a customer newsletter." for i in range(24)]


def write_config(directory: Path, url: str, **overrides) -> Path:
    seeds = directory / "seeds.jsonl"
    if not seeds.exists():
        seeds.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in SEEDS))
    config = {
        "name": "resume",
        "run_dir": str(directory / "runs"),
        "seeds": {"path": "seeds.jsonl", "columns": {"instruction": "prompt"}},
        "teacher": {
            "backend": "openai",
            "model": "fake-model",
            "base_url": f"{url}/v1",
            "api_key_env": "STILLHOUSE_TEST_KEY",
            "concurrency": 1,
            "max_retries": 0,
            "timeout_s": 10,
        },
        "tasks": [{"type": "respond", "n": 2, "max_tokens": 12, "top_logprobs": 3, "shard_size": 4, "batch_size": 4}],
        "curation": [
            {"stage": "heuristics", "language": None, "truncated": False},
            {"stage": "exact_dedup"},
            {"stage": "entropy", "max_quantile": 0.9},
        ],
        "publish": {"name": "resume", "root": str(directory / "datasets")},
    }
    for key, value in overrides.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def stillhouse(config: Path, *extra: str, crash_at: str | None = None, wait: bool = True):
    env = {**os.environ, "STILLHOUSE_TEST_KEY": "sk-test-secret", "COLUMNS": "200"}
    env.pop("STILLHOUSE_CRASH_AT", None)
    if crash_at:
        env["STILLHOUSE_CRASH_AT"] = crash_at
    command = [sys.executable, "-m", "stillhouse.cli", "run", str(config), *extra]
    process = subprocess.Popen(
        command, cwd=config.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if not wait:
        return process
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


@pytest.fixture
def server():
    with FakeOpenAIServer(latency_s=0.02) as fake:
        yield fake


def published_ids(directory: Path) -> tuple[list[str], list[str]]:
    version = DatasetStore(directory / "datasets").resolve("resume@latest")
    return sorted(version.read(["id"])["id"].to_list()), sorted(version.read_rejected(["id"])["id"].to_list())


@pytest.mark.slow
def test_sigkill_at_every_point_then_resume_matches_uninterrupted_run(tmp_path, server):
    clean_dir, crash_dir = tmp_path / "clean", tmp_path / "crash"
    clean_dir.mkdir()
    crash_dir.mkdir()

    code, out, err = stillhouse(write_config(clean_dir, server.url))
    assert code == 0, err
    clean_requests = server.counts["requests"]
    assert clean_requests == len(SEEDS)  # one request (n=2 samples) per seed
    clean_kept, clean_rejected = published_ids(clean_dir)
    assert clean_kept and len(clean_kept) + len(clean_rejected) == len(SEEDS)

    config = write_config(crash_dir, server.url)
    start = server.counts["requests"]
    # A kill in the middle of the task: after some answers, with one request at most in flight.
    process = stillhouse(config, wait=False)
    deadline = time.time() + 120
    while server.counts["requests"] - start < 9 and time.time() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    mid_task_kills = 1
    for point in ("before-save:task-0-respond", "after:task-0-respond", "after:curation", "before-save:publish"):
        code, _, err = stillhouse(config, crash_at=point)
        assert code == -signal.SIGKILL, f"expected a SIGKILL at {point}: {err[-2000:]}"

    code, out, err = stillhouse(config)
    assert code == 0, err
    crash_requests = server.counts["requests"] - start
    # Nothing answered is asked again: at most the one request in flight at the mid-task kill.
    assert clean_requests <= crash_requests <= clean_requests + mid_task_kills
    assert published_ids(crash_dir) == (clean_kept, clean_rejected)
    store = DatasetStore(crash_dir / "datasets")
    assert store.versions("resume") == [1]  # the kill after publish did not publish twice

    # Run again after it finished: every step is reused, nothing is sent.
    before = server.counts["requests"]
    code, out, err = stillhouse(config)
    assert code == 0, err
    assert server.counts["requests"] == before
    assert store.versions("resume") == [1]
    state = json.loads((crash_dir / "runs" / "resume" / "state.json").read_text())
    assert state["status"] == "finished"
    assert "sk-test-secret" not in (crash_dir / "runs" / "resume" / "state.json").read_text()
    for path in (crash_dir / "runs").rglob("*"):
        if path.is_file():
            assert b"sk-test-secret" not in path.read_bytes(), path


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"curation": [{"stage": "dedupe_magic"}]}, "curation.0"),
        ({"seeds": {"path": "missing.jsonl", "columns": {"instruction": "prompt"}}}, "seed file"),
        ({"seeds": {"path": "seeds.jsonl", "columns": {"instruction": "question"}}}, "names column 'question'"),
        ({"curation": [{"stage": "entropy", "max_entropy": -1}]}, "greater than or equal to 0"),
        ({"tasks": [{"type": "respond", "n": 0}]}, "tasks.0.respond.n"),
        ({"tasks": [{"type": "respond", "temprature": 0.5}]}, "unknown key 'temprature'"),
    ],
)
def test_bad_configs_fail_before_any_request(tmp_path, server, run_cli, overrides, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, server.url, **overrides)
    code, out, err = run_cli("run", config)
    assert code == 1
    assert message in err, err
    assert "Traceback" not in err and err.strip().count("\n") == 0
    assert server.counts["requests"] == 0


def test_missing_api_key_is_one_line_and_publishes_nothing(tmp_path, run_cli, monkeypatch):
    # Loopback servers may run without a key; a remote one may not. The key is checked
    # before any connection, so this `.invalid` host (which never resolves) is never contacted.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STILLHOUSE_TEST_KEY", raising=False)
    code, _, err = run_cli("run", write_config(tmp_path, "https://api.stillhouse.invalid"))
    assert code == 1 and "STILLHOUSE_TEST_KEY" in err and "Traceback" not in err
    assert err.strip().count("\n") == 0
    assert not (tmp_path / "datasets").exists()


def test_dry_run_estimates_and_sends_nothing(tmp_path, server, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    teacher = {
        "backend": "openai",
        "model": "fake-model",
        "base_url": f"{server.url}/v1",
        "api_key_env": "STILLHOUSE_TEST_KEY",
        "prices": {"input_per_1m": 1.0, "output_per_1m": 2.0},
    }
    code, out, err = run_cli("run", write_config(tmp_path, server.url, teacher=teacher), "--dry-run")
    assert code == 0, err
    assert "dry run: nothing was sent" in out
    assert f"{len(SEEDS)} seeds" in out and "$" in out
    assert server.counts["requests"] == 0
    assert not (tmp_path / "datasets").exists()


def test_runs_list_and_show(tmp_path, server, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STILLHOUSE_TEST_KEY", "sk-test")
    config = write_config(tmp_path, server.url, curation=[{"stage": "exact_dedup"}])
    code, out, err = run_cli("run", config)
    assert code == 0, err
    assert "resume@v1" in out
    code, out, _ = run_cli("runs", "list", "--runs", tmp_path / "runs")
    assert code == 0 and "finished" in out and "resume@v1" in out
    code, out, _ = run_cli("runs", "show", "resume", "--runs", tmp_path / "runs")
    assert code == 0 and "task-0-respond" in out and "publish" in out
    code, _, err = run_cli("runs", "show", "nope", "--runs", tmp_path / "runs")
    assert code == 1 and "no run at" in err


def test_judge_over_real_http_succeeds_on_the_first_run(tmp_path, server):
    # The judge and the task share the run's one event loop: keep-alive connections opened
    # by the judge are closed on the loop that opened them ("Event loop is closed" before).
    judge = {"stage": "judge", "min_score": None, "batch_size": 8, "on_unparsable": "keep", "allow_unparsable": True}
    config = write_config(tmp_path, server.url, curation=[{"stage": "exact_dedup"}, judge])
    code, out, err = stillhouse(config)
    assert code == 0, err[-3000:]
    assert "Event loop is closed" not in err + out
    # one respond and one judge request per seed, and the judge's one retry of each reply
    # (the fake server's words never end in a parsable `Score: N` line)
    assert server.counts["requests"] == 3 * len(SEEDS)
    kept = DatasetStore(tmp_path / "datasets").resolve("resume@latest").read_all()
    assert "judge_score" in kept.columns


def test_a_teacher_that_fails_every_request_publishes_nothing_then_a_rerun_completes(tmp_path):
    with FakeOpenAIServer(latency_s=0.0) as good:
        config = write_config(tmp_path, good.url)
        code, _, err = stillhouse(config)
        assert code == 0, err
    store = DatasetStore(tmp_path / "datasets")
    assert store.versions("resume") == [1]
    # A second run over new seeds whose teacher answers nothing must not replace @latest.
    (tmp_path / "seeds.jsonl").write_text("".join(json.dumps({"prompt": f"{s} (again)"}) + "\n" for s in SEEDS))
    with FakeOpenAIServer(fault_rate=1.0, faults=("500",)) as dead:
        config = write_config(tmp_path, dead.url)
        code, out, err = stillhouse(config)
        assert dead.counts["requests"] == len(SEEDS)
    assert code == 1
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "answered none of 24 request(s)" in errors[0], err
    assert store.versions("resume") == [1]
    state = json.loads((tmp_path / "runs" / "resume" / "state.json").read_text())
    assert state["status"] == "failed"
    assert state["steps"]["task-0-respond"]["status"] == "failed"
    assert "answered none" in state["steps"]["task-0-respond"]["error"]
    # The server recovers: the same command sends exactly the requests never answered.
    with FakeOpenAIServer() as recovered:
        code, _, err = stillhouse(write_config(tmp_path, recovered.url))
        assert code == 0, err
        assert recovered.counts["requests"] == len(SEEDS)
    assert store.versions("resume") == [1, 2]


def test_partial_failure_publishes_and_the_next_run_retries_only_the_failed(tmp_path):
    marker = "topic number 1"  # seeds 1 and 10..19 always get a 500
    failing = [s for s in SEEDS if marker in s]
    with FakeOpenAIServer(always_fail_marker=marker) as flaky:
        code, out, err = stillhouse(write_config(tmp_path, flaky.url))
        assert code == 0, err
        assert flaky.counts["requests"] == len(SEEDS)
        assert f"{len(failing)} teacher request(s) failed" in out
        state = json.loads((tmp_path / "runs" / "resume" / "state.json").read_text())
        assert state["status"] == "partial" and state["steps"]["task-0-respond"]["status"] == "partial"
        flaky.always_fail_marker = None  # the server recovers
        code, out, err = stillhouse(write_config(tmp_path, flaky.url))
        assert code == 0, err
        assert flaky.counts["requests"] == len(SEEDS) + len(failing)  # the cache answers the rest
    state = json.loads((tmp_path / "runs" / "resume" / "state.json").read_text())
    assert state["status"] == "finished"


def test_evaluation_table_shows_the_ece_floor_without_a_ratio():
    from rich.console import Console

    from stillhouse.run import evaluation_table

    model = {"macro_f1": 0.8, "accuracy": 0.8, "ece": 0.04, "ece_floor": 0.03, "latency_ms": {"p50": 1.0, "p95": 2.0}}
    teacher = {**model, "macro_f1": 0.9, "ece_floor": 0.02, "latency_ms": {"p50": 10.0, "p95": 20.0}}
    console = Console(width=120, record=True)
    console.print(evaluation_table({"student": model, "teacher": teacher}))
    lines = {line.split("│")[1].strip(): line for line in console.export_text().splitlines() if line.count("│") > 2}
    assert "0.889" in lines["macro-F1"]  # 0.8 / 0.9
    assert "1.000" in lines["expected calibration error"]
    floor = [cell.strip() for cell in lines["ECE floor (sampling noise)"].split("│")[1:-1]]
    assert floor == ["ECE floor (sampling noise)", "0.03", "0.02", "-"]
