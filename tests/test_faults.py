"""Faults of the machine and bad input: one line naming the path, a non-zero exit,
nothing already produced lost, and the same command resumes after the fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from fixtures.fake_openai_server import FakeOpenAIServer
from test_run import SEEDS, published_ids, stillhouse, write_config

from curation.store import DatasetStore
from stillhouse.cli import INTERRUPTED
from stillhouse.runlock import LOCK_FILE
from stillhouse.seeds import SeedError, read_table


def one_line(err: str) -> str:
    """The error line: exactly one, last on stderr (progress bars may come before it)."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], err
    return lines[-1]


def wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture
def slow_server():
    with FakeOpenAIServer(latency_s=0.1) as fake:
        yield fake


@pytest.fixture
def mount_tmpfs():
    """Mount a small tmpfs (root only); unmounted at teardown."""
    mounted: list[Path] = []

    def mount(path: Path, options: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip() or 'not root'})")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def store_snapshot(root: Path) -> dict[str, bytes]:
    """Every published file's bytes: a fault must leave these untouched."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- two runs of one config -----------------------------------------------------------
@pytest.mark.slow
def test_second_run_of_the_same_config_is_refused_while_the_first_runs(tmp_path, slow_server):
    config = write_config(tmp_path, slow_server.url)
    first = stillhouse(config, wait=False)
    wait_for(lambda: slow_server.counts["requests"] >= 2)
    sent_before = slow_server.counts["requests"]

    code, _, err = stillhouse(config)
    assert code == 1
    assert f"already running (pid {first.pid})" in one_line(err)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    # The refused run sent nothing: every request was the first run's, one per seed.
    assert sent_before <= slow_server.counts["requests"] == len(SEEDS)
    assert DatasetStore(tmp_path / "datasets").versions("resume") == [1]


def test_lock_left_by_a_dead_process_is_taken_over(tmp_path, run_cli, monkeypatch):
    with FakeOpenAIServer() as server:
        monkeypatch.setenv("STILLHOUSE_TEST_KEY", "sk-test")
        config = write_config(tmp_path, server.url, curation=[{"stage": "exact_dedup"}])
        lock = tmp_path / "runs" / "resume" / LOCK_FILE
        lock.parent.mkdir(parents=True)
        dead = subprocess.Popen(["true"])
        dead.wait()
        lock.write_text(f"{dead.pid}\n")
        code, out, err = run_cli("run", config)
    assert code == 0, err
    assert "resume@v1" in out
    assert lock.read_text() == ""  # released at the end of the run


# -- the output root is read-only -----------------------------------------------------
@pytest.mark.slow
def test_read_only_store_root_is_one_line_and_the_fixed_rerun_resumes(tmp_path, mount_tmpfs):
    with FakeOpenAIServer() as server:
        mount = mount_tmpfs(tmp_path / "mnt", "ro,size=4m")
        config = write_config(tmp_path, server.url, publish={"name": "resume", "root": str(mount / "datasets")})
        code, _, err = stillhouse(config)
        assert code == 1
        line = one_line(err)
        assert f"{mount / 'datasets'}: read-only file system" in line and "run the same command again" in line
        assert server.counts["requests"] == len(SEEDS)

        remount(mount, "rw")
        code, out, err = stillhouse(config)
        assert code == 0, err
        assert server.counts["requests"] == len(SEEDS)  # nothing asked twice
        kept = DatasetStore(mount / "datasets").resolve("resume@v1").read(["id"])
        assert kept.height > 0


# -- disk full ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("where", ["run_dir", "store"])
def test_disk_full_is_one_line_and_the_rerun_after_freeing_space_resumes(tmp_path, mount_tmpfs, where):
    with FakeOpenAIServer() as server:
        clean = tmp_path / "clean"
        clean.mkdir()
        code, _, err = stillhouse(write_config(clean, server.url))
        assert code == 0, err
        clean_ids = published_ids(clean)
        clean_requests = server.counts["requests"]

        mount = mount_tmpfs(tmp_path / "mnt", "size=8m")
        full = tmp_path / "full"
        full.mkdir()
        overrides = {"run_dir": str(mount / "runs")} if where == "run_dir" else {}
        overrides["publish"] = {"name": "resume", "root": str(mount / "datasets")}
        config = write_config(full, server.url, **overrides)
        if where == "store":  # the run directory is elsewhere: only publishing needs the mount
            code, _, err = stillhouse(config)
            assert code == 0, err
            published = store_snapshot(mount / "datasets")
            (full / "seeds.jsonl").write_text("".join(json.dumps({"prompt": s + " Again."}) + "\n" for s in SEEDS))
        else:
            published = {}
        filler = mount / "filler"
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        filler.write_bytes(b"\0" * max(free - 24 * 1024, 0))  # a little room: the run starts, then fills it

        code, _, err = stillhouse(config)
        assert code == 1
        line = one_line(err)
        assert str(mount) in line, line
        assert "no space left" in line or "disk is full" in line, line
        assert store_snapshot(mount / "datasets") == published  # nothing published changed

        state = (
            mount / "runs" / "resume" / "state.json" if where == "run_dir" else full / "runs" / "resume" / "state.json"
        )
        # Whole, never torn (the last save that fitted; "failed" itself may not have fitted on a full disk).
        assert json.loads(state.read_text())["status"] in ("running", "failed", "finished")
        filler.unlink()
        code, out, err = stillhouse(config)
        assert code == 0, err
        if where == "run_dir":
            version = DatasetStore(mount / "datasets").resolve("resume@latest")
            ids = (sorted(version.read(["id"])["id"].to_list()), sorted(version.read_rejected(["id"])["id"].to_list()))
            assert ids == clean_ids
            # Answers saved before the fault are not asked again (at most the ones in flight).
            assert server.counts["requests"] - clean_requests <= 2 * len(SEEDS)
        else:
            assert DatasetStore(mount / "datasets").versions("resume") == [1, 2]
        for name, content in published.items():
            assert (mount / "datasets" / name).read_bytes() == content


# -- a corrupt response cache ---------------------------------------------------------
@pytest.mark.slow
def test_corrupt_response_cache_names_the_file_and_the_rerun_after_moving_it_resumes(tmp_path):
    with FakeOpenAIServer() as server:
        clean = tmp_path / "clean"
        clean.mkdir()
        assert stillhouse(write_config(clean, server.url))[0] == 0
        clean_ids = published_ids(clean)

        work = tmp_path / "work"
        work.mkdir()
        config = write_config(work, server.url)
        code, _, _ = stillhouse(config, crash_at="before-save:task-0-respond")  # answered, step not saved
        assert code == -signal.SIGKILL
        cache = work / "runs" / "resume" / "cache" / "teacher_cache.sqlite"
        for sidecar in cache.parent.glob("teacher_cache.sqlite-*"):
            sidecar.unlink()
        cache.write_bytes(b"this is not a database" * 100)
        state_before = (work / "runs" / "resume" / "state.json").read_text()

        code, _, err = stillhouse(config)
        assert code == 1
        line = one_line(err)
        assert f"{cache}: response cache unusable (file is not a database)" in line
        assert "move it aside" in line
        assert not (work / "datasets").exists()  # nothing published
        state = json.loads((work / "runs" / "resume" / "state.json").read_text())
        for step, entry in json.loads(state_before)["steps"].items():  # what was done stays done
            if entry["status"] == "done":
                assert (
                    state["steps"][step]["status"] == "done"
                    and state["steps"][step]["fingerprint"] == entry["fingerprint"]
                )

        cache.rename(cache.with_suffix(".corrupt"))
        code, _, err = stillhouse(config)
        assert code == 0, err
        assert published_ids(work) == clean_ids


# -- Ctrl-C ---------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_exits_130_and_the_rerun_completes(tmp_path, slow_server):
    config = write_config(tmp_path, slow_server.url)
    process = stillhouse(config, wait=False)
    wait_for(lambda: slow_server.counts["requests"] >= 5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == INTERRUPTED
    assert "Traceback" not in err
    assert json.loads((tmp_path / "runs" / "resume" / "state.json").read_text())["status"] == "failed"
    assert not (tmp_path / "datasets").exists()

    interrupted_at = slow_server.counts["requests"]
    code, out, err = stillhouse(config)
    assert code == 0, err
    # The answers before Ctrl-C are reused: at most the one request in flight is sent again.
    assert slow_server.counts["requests"] <= len(SEEDS) + 1
    assert slow_server.counts["requests"] > interrupted_at
    kept, rejected = published_ids(tmp_path)
    assert len(kept) + len(rejected) == len(SEEDS)
    assert DatasetStore(tmp_path / "datasets").versions("resume") == [1]


# -- bad input ------------------------------------------------------------------------
def test_diff_of_two_different_datasets_is_refused(tmp_path, run_cli):
    frame = pl.DataFrame({"id": ["a"], "instruction": ["x"], "input": [""], "origin": ["seed"]})
    store = DatasetStore(tmp_path)
    store.publish("tickets", frame)
    store.publish("emails", frame)
    before = store_snapshot(tmp_path)
    code, out, err = run_cli("datasets", "diff", "tickets@v1", "emails@v1", "--root", tmp_path)
    assert code == 1
    assert "cannot diff tickets@v1 with emails@v1: versions of two different datasets" in one_line(err)
    assert out == ""
    assert store_snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "content, line, message",
    [
        ("instruction,input\na,b\nc,d,e\n", 3, "3 fields, but the header has 2"),
        ("instruction,input\na,b\nc\nf,g\n", 3, "1 fields, but the header has 2"),
        ('instruction,input\n"two\nlines",b\nc,d,e\n', 4, "3 fields, but the header has 2"),
    ],
)
def test_ragged_csv_row_is_reported_with_its_line(tmp_path, content, line, message):
    path = tmp_path / "seeds.csv"
    path.write_text(content)
    with pytest.raises(SeedError) as error:
        read_table(path)
    assert str(error.value) == f"{path}:{line}: {message}"


def test_ragged_csv_seed_file_stops_the_run_before_any_request(tmp_path, run_cli, monkeypatch):
    with FakeOpenAIServer() as server:
        monkeypatch.setenv("STILLHOUSE_TEST_KEY", "sk-test")
        (tmp_path / "seeds.csv").write_text("prompt,topic\nHello there,a\nA ragged row,b,c\n")
        config = write_config(tmp_path, server.url, seeds={"path": "seeds.csv", "columns": {"instruction": "prompt"}})
        code, _, err = run_cli("run", config)
        assert code == 1
        assert f"{tmp_path / 'seeds.csv'}:3: 3 fields, but the header has 2" in one_line(err)
        assert server.counts["requests"] == 0


def test_unknown_teacher_backend_is_reported_at_the_line_of_the_value(tmp_path, run_cli):
    (tmp_path / "seeds.jsonl").write_text('{"instruction": "Say hi."}\n')
    config = tmp_path / "run.yaml"
    config.write_text(
        "name: x\nseeds:\n  path: seeds.jsonl\nteacher:\n  model: m\n  backend: openaii\npublish:\n  name: x\n"
    )
    code, _, err = run_cli("config", "validate", config)
    assert code == 1
    assert one_line(err).startswith(
        f"error: {config}:6: teacher.backend: unknown teacher 'openaii' "
        "(built-ins: openai, vllm, transformers, classifier;"
    )


def test_runs_list_tells_a_live_run_from_a_stopped_one(tmp_path, run_cli):
    from stillhouse.runlock import run_lock
    from stillhouse.runs import RunState

    state = RunState.open(tmp_path / "runs" / "night", "night")
    state.status = "running"  # what a run killed by SIGKILL (or a full disk) leaves behind
    state.save()
    code, out, _ = run_cli("runs", "list", "--runs", tmp_path / "runs")
    assert code == 0 and "stopped (run the same command to resume)" in out
    with run_lock(tmp_path / "runs" / "night"):
        code, out, _ = run_cli("runs", "show", "night", "--runs", tmp_path / "runs")
    assert code == 0 and f"night: running (pid {os.getpid()})" in out
