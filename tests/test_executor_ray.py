"""The Ray executor on a real Ray cluster started by the test (one head node on 127.0.0.1, 2 CPUs).

The same config through `executor: local` and `executor: ray` publishes the same dataset;
a driver killed mid-generation resumes without re-issuing answered requests (counted at
the fake OpenAI server); limits hold for the whole cluster; a killed worker is retried.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
import yaml
from fixtures.fake_openai_server import FakeOpenAIServer
from fixtures.ray_cluster import RAY_ENV, free_port, ray_cluster
from test_run import SEEDS, write_config

from curation.store import DatasetStore

pytestmark = pytest.mark.slow

CURATION = [
    {"stage": "heuristics", "language": None, "truncated": False},
    {"stage": "exact_dedup"},
    {"stage": "minhash_dedup", "threshold": 0.5, "ngram": 2},
    {"stage": "entropy", "max_entropy": 2.5, "name": "entropy_cap"},
    {"stage": "entropy", "max_quantile": 0.9},
]
COLUMNS = ["id", "instruction", "response", "chosen_sample", "drop_stage", "drop_reason", "dup_cluster", "mean_entropy"]


@pytest.fixture(scope="module")
def cluster():
    with ray_cluster(num_cpus=2) as running:
        yield running


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(latency_s=0.05) as fake:
        yield fake


def config_for(directory: Path, url: str, executor) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = write_config(directory, url, curation=CURATION)
    config = yaml.safe_load(path.read_text())
    config["executor"] = executor
    config["teacher"]["concurrency"] = 1  # per worker: at most `workers` requests in flight
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def stillhouse(config: Path, env: dict[str, str], wait: bool = True):
    env = {**env, "STILLHOUSE_TEST_KEY": "sk-test-secret", "COLUMNS": "200"}
    command = [sys.executable, "-m", "stillhouse.cli", "run", str(config)]
    process = subprocess.Popen(
        command, cwd=config.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if not wait:
        return process
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


def assert_same(frame: pl.DataFrame, reference: pl.DataFrame) -> None:
    """Equal row for row; float scores up to summation order (1e-12: polars sums a list in blocks)."""
    assert frame.columns == reference.columns and frame.dtypes == reference.dtypes
    for column in frame.columns:
        pair = pl.DataFrame({"id": frame["id"], "got": frame[column], "want": reference[column]})
        if frame[column].dtype.is_float():
            differs = (pl.col("got") - pl.col("want")).abs().gt(1e-12).fill_null(True)
            differs = differs & ~(pl.col("got").is_null() & pl.col("want").is_null())
        else:
            differs = pl.col("got").ne_missing(pl.col("want"))
        differing = pair.filter(differs)
        assert differing.is_empty(), f"{column} differs:\n{differing}"


def published(directory: Path) -> tuple[pl.DataFrame, list[dict]]:
    version = DatasetStore(directory / "datasets").resolve("resume@latest")
    frame = version.read_all().select(COLUMNS).sort("id")
    return frame, version.manifest["funnel"]


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, server, cluster):
    """The dataset of an uninterrupted local run, and the requests it took."""
    directory = tmp_path_factory.mktemp("local")
    start = server.counts["requests"]
    code, _, err = stillhouse(config_for(directory, server.url, "local"), cluster.env())
    assert code == 0, err
    frame, funnel = published(directory)
    return frame, funnel, server.counts["requests"] - start


def test_local_and_ray_executors_publish_the_same_dataset(tmp_path, server, cluster, local_reference):
    local_frame, local_funnel, local_requests = local_reference
    assert local_requests == len(SEEDS)
    assert local_frame["drop_stage"].drop_nulls().n_unique() >= 2  # the comparison covers real drops
    executor = {"type": "ray", "address": cluster.address, "workers": 2, "block_rows": 5}
    start = server.counts["requests"]
    code, out, err = stillhouse(config_for(tmp_path / "ray", server.url, executor), cluster.env())
    assert code == 0, err
    assert server.counts["requests"] - start == local_requests  # every request once, over two actors
    ray_frame, ray_funnel = published(tmp_path / "ray")
    assert_same(ray_frame, local_frame)  # ids, responses, drop stages and reasons, scores
    assert ray_funnel == local_funnel
    shards = sorted(p.name for p in (tmp_path / "ray" / "runs" / "resume" / "cache" / "shards").iterdir())
    assert "worker-0.sqlite" in shards and "worker-1.sqlite" in shards  # both actors answered
    for root in (tmp_path / "ray", Path(cluster.temp_dir)):  # the key reached the actors, never a file
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and not path.is_socket():
                assert b"sk-test-secret" not in path.read_bytes(), path


def test_driver_killed_mid_generation_resumes_without_reissuing(tmp_path, server, cluster, local_reference):
    local_frame, local_funnel, local_requests = local_reference
    executor = {"type": "ray", "address": cluster.address, "workers": 2, "block_rows": 7}
    config = config_for(tmp_path / "crash", server.url, executor)
    start = server.counts["requests"]
    process = stillhouse(config, cluster.env(), wait=False)
    deadline = time.time() + 300
    while server.counts["requests"] - start < 9 and time.time() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)  # the driver: its actors go with it
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert 9 <= server.counts["requests"] - start < local_requests

    code, out, err = stillhouse(config, cluster.env())
    assert code == 0, err
    in_flight = executor["workers"]  # concurrency 1 per worker
    assert server.counts["requests"] - start <= local_requests + in_flight
    frame, funnel = published(tmp_path / "crash")
    assert_same(frame, local_frame)
    assert funnel == local_funnel

    before = server.counts["requests"]  # finished: a rerun sends nothing
    code, _, err = stillhouse(config, cluster.env())
    assert code == 0, err
    assert server.counts["requests"] == before
    assert DatasetStore(tmp_path / "crash" / "datasets").versions("resume") == [1]


@pytest.fixture
def ray_driver(cluster, monkeypatch):
    """This test process as a driver of the cluster."""
    import ray
    from ray._private import ray_constants

    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    # read once at `import ray`: if anything imported Ray before fixtures.ray_cluster set the
    # variable, Ray would swap 127.0.0.1 for the machine's address and never reach the head
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    monkeypatch.setenv("STILLHOUSE_TEST_KEY", "sk-test-secret")
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()


def _teacher_config(url: str, **settings):
    from pydantic import TypeAdapter

    from factory.teachers.config import TeacherConfig

    base = {"backend": "openai", "model": "fake-model", "base_url": f"{url}/v1", "api_key_env": "STILLHOUSE_TEST_KEY"}
    return TypeAdapter(TeacherConfig).validate_python({**base, "max_retries": 0, "timeout_s": 30, **settings})


def _requests(count: int, max_tokens: int = 8):
    from factory.teachers.base import TeacherRequest

    return [TeacherRequest.chat(f"Question number {i} about parcels?", max_tokens=max_tokens) for i in range(count)]


def test_rate_limit_and_budget_hold_for_the_whole_cluster(tmp_path, ray_driver):
    from factory.aio import EventLoop
    from stillhouse.executors.ray_teacher import RayTeacher

    loop = EventLoop()
    with FakeOpenAIServer() as fake:
        # 120 requests/minute for the cluster: 8 requests take >= 7 x 0.5 s, whatever the actor count
        # (two actors with a limiter each would take half that).
        teacher = RayTeacher(
            _teacher_config(fake.url, rpm=120, concurrency=4),
            tmp_path / "a",
            workers=2,
            max_retries=0,
            address=ray_driver.address,
        )
        started = time.monotonic()
        generations = loop.run(teacher.generate(_requests(8)))
        elapsed = time.monotonic() - started
        loop.run(teacher.close())
        assert all(g.ok for g in generations) and fake.counts["requests"] == 8
        assert elapsed >= 3.3, f"8 requests at 120 rpm took {elapsed:.2f} s: the limit is per actor"

        # A budget that one actor alone could spend: the two together never pass it.
        probe = _requests(1, max_tokens=8)[0]
        from factory.teachers.limits import completion_token_bound, prompt_token_bound

        worst = prompt_token_bound(probe) + completion_token_bound(probe)
        budget = 3 * worst
        teacher = RayTeacher(
            _teacher_config(fake.url, concurrency=4, budget={"max_tokens": budget}),
            tmp_path / "b",
            workers=2,
            max_retries=0,
            address=ray_driver.address,
        )
        sent_before = fake.counts["requests"]
        generations = loop.run(teacher.generate(_requests(12)))
        loop.run(teacher.close())
        loop.close()
        spent = sum(g.usage.prompt_tokens + g.usage.completion_tokens for g in generations if g.ok)
        assert spent <= budget
        not_issued = [g for g in generations if not g.ok]
        assert not_issued and all("budget exhausted" in g.error for g in not_issued)
        assert fake.counts["requests"] - sent_before == sum(g.ok for g in generations)


def test_killed_worker_is_retried_and_reissues_nothing_answered(tmp_path, ray_driver):
    import ray

    from factory.aio import EventLoop
    from stillhouse.executors.ray_teacher import RayTeacher

    loop = EventLoop()
    with FakeOpenAIServer(latency_s=0.3) as fake:
        teacher = RayTeacher(
            _teacher_config(fake.url, concurrency=1), tmp_path, workers=2, max_retries=2, address=ray_driver.address
        )
        victim = ray.get(teacher.workers[0].pid.remote())
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(g=loop.run(teacher.generate(_requests(12)))))
        thread.start()
        deadline = time.time() + 120
        while fake.counts["ok"] < 4 and time.time() < deadline:
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)  # a worker process dies mid-step
        thread.join(timeout=300)
        assert not thread.is_alive()
        generations = result["g"]
        assert [g.ok for g in generations] == [True] * 12
        assert fake.counts["requests"] <= 12 + 1  # at most the one request the dead worker had in flight
        loop.run(teacher.close())
        loop.close()


def test_unreachable_cluster_is_one_line(tmp_path, server):
    port = free_port()  # nothing listens there
    config = config_for(tmp_path, server.url, {"type": "ray", "address": f"127.0.0.1:{port}"})
    start = server.counts["requests"]
    code, out, err = stillhouse(config, {**os.environ, **RAY_ENV})
    assert code == 1
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert f"executor: no Ray cluster reachable at 127.0.0.1:{port}" in err
    assert server.counts["requests"] == start  # failed before any teacher request
    assert not (tmp_path / "datasets").exists() or not DatasetStore(tmp_path / "datasets").names()


def test_executor_config_shorthand_and_validation():
    from stillhouse.config import RunConfig

    base = json.loads(json.dumps({"name": "x", "seeds": {"path": __file__}, "publish": {"name": "x"}}))
    assert RunConfig.model_validate(base).executor.type == "local"
    ray_config = RunConfig.model_validate({**base, "executor": "ray"}).executor
    assert ray_config.type == "ray" and ray_config.address == "auto" and ray_config.workers == 2
    with pytest.raises(ValueError, match="workers"):
        RunConfig.model_validate({**base, "executor": {"type": "ray", "workers": 0}})


def _blockwise(stage, frame: pl.DataFrame, rows: int) -> pl.DataFrame:
    """What the Ray executor does with a global stage, without Ray: prepare per block, then apply."""
    from curation.stages.base import with_drop_columns

    frame = with_drop_columns(frame)
    prepared = pl.concat([stage.prepare(frame.slice(start, rows)) for start in range(0, frame.height, rows)])
    return stage.apply(prepared).drop(list(stage.prepared_columns))


def test_global_stages_split_into_blocks_give_the_whole_frame_answer():
    """MinHash signed per block and semantic dedup embedded per block decide as on the whole frame."""
    from conftest import shared_data

    from curation.config import MinHashDedupConfig, SemanticDedupConfig
    from curation.stages import MinHashDedup, SemanticDedup
    from curation.stages.semantic_dedup import sentence_transformer_encoder
    from factory.schema import conform, record_ids

    rows = json.loads(shared_data("alpaca", "alpaca_plus_validation_unseen_1000_alpaca.json").read_text())
    frame = pl.DataFrame(
        {
            "instruction": [r["instruction"] for r in rows],
            "input": [r["input"] for r in rows],
            "response": [r["output"] for r in rows],
            "origin": ["seed"] * len(rows),
        }
    )
    planted = frame.head(60).with_columns(  # near duplicates
        instruction=pl.col("instruction") + " Please.", response=pl.col("response") + " Thanks."
    )
    frame = pl.concat([frame, planted]).with_columns(
        drop_stage=pl.lit(None, pl.String), drop_reason=pl.lit(None, pl.String)
    )
    frame = frame.with_columns(record_ids(frame))
    frame = frame.with_columns(  # an earlier stage's drop: never signed, never a keeper
        drop_stage=pl.when(pl.int_range(pl.len()) % 97 == 3).then(pl.lit("heuristics")),
        drop_reason=pl.when(pl.int_range(pl.len()) % 97 == 3).then(pl.lit("too_short")),
    )
    minhash = MinHashDedup(MinHashDedupConfig(threshold=0.7), show_progress=False)
    whole = minhash.apply(frame)
    assert (whole["drop_stage"] == "minhash_dedup").sum() >= 40
    assert _blockwise(minhash, frame, 97).equals(whole)

    import torch

    torch.set_num_threads(2)
    semantic = SemanticDedup(SemanticDedupConfig(threshold=0.9), encoder=sentence_transformer_encoder(None, 64))
    small = pl.from_arrow(conform(frame.head(150).vstack(frame.slice(1000, 20)).drop("drop_stage", "drop_reason")))
    whole = semantic.apply(small)
    assert (whole["drop_stage"] == "semantic_dedup").sum() >= 15
    split = _blockwise(semantic, small, 41)
    assert split.select(pl.exclude("drop_reason")).equals(whole.select(pl.exclude("drop_reason")))
    # cosines agree to float rounding across batchings; the decisions are identical
    assert (
        (
            split["drop_reason"].str.split(" cosine").list.first()
            == whole["drop_reason"].str.split(" cosine").list.first()
        )
        .fill_null(True)
        .all()
    )
