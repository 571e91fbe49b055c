"""The dataset store on object storage, against a real S3-compatible server (moto) on 127.0.0.1."""

import json
import multiprocessing
import os
import time

import pytest
from fixtures.s3_server import BUCKET, moto_server, s3_env
from test_store import make_frame

from curation.store import CorruptVersionError, DatasetStore, StoreError

ROOT = f"s3://{BUCKET}/store"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    with moto_server(str(tmp_path_factory.mktemp("moto"))) as endpoint:
        yield endpoint


@pytest.fixture
def s3_root(s3_endpoint, monkeypatch, request):
    import fsspec

    for key, value in s3_env(s3_endpoint).items():
        monkeypatch.setenv(key, value)
    fs, _ = fsspec.core.url_to_fs(ROOT)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    root = f"{ROOT}/{request.node.name.replace('[', '-').replace(']', '')}"
    yield root
    fs.invalidate_cache()
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _fs():
    import fsspec

    return fsspec.core.url_to_fs(ROOT)[0]


def test_publish_and_read_on_s3(s3_root, run_cli):
    store = DatasetStore(s3_root)
    assert store.names() == []
    version = store.publish("tickets", make_frame(), label_set=["a", "b"], config={"teacher": {"api_key": "sk-1"}})
    assert version.ref == "tickets@v1" and version.path == f"{s3_root}/tickets/v1"
    assert set(version.manifest["files"]) == {"README.md", "data.parquet", "rejected.parquet"}
    assert version.manifest["rows"] == {"kept": 4, "rejected": 2, "total": 6}
    again = DatasetStore(s3_root)  # a fresh client sees the same version, verified
    assert again.names() == ["tickets"]
    assert again.resolve("tickets@latest").read()["id"].to_list() == ["id0", "id1", "id2", "id3"]
    assert again.resolve("tickets").read_rejected()["drop_reason"].to_list() == ["too_short: 3 chars < 10"] * 2
    assert "sk-1" not in _fs().cat_file(f"{s3_root}/tickets/v1/manifest.json").decode()
    second = again.publish("tickets", make_frame(tag="!"), parent="tickets@latest")
    assert second.ref == "tickets@v2" and second.manifest["parent"] == "tickets@v1"
    code, out, _ = run_cli("datasets", "list", "--root", s3_root)
    assert code == 0 and "tickets@v2" in out
    code, out, _ = run_cli("datasets", "verify", "tickets@v1", "--root", s3_root)
    assert code == 0 and "tickets@v1: OK" in out


def test_version_is_visible_only_once_its_manifest_is_written(s3_root):
    store = DatasetStore(s3_root)
    store.publish("d", make_frame())
    fs = _fs()
    # a publisher that died after taking v2 and uploading its data, before its manifest
    fs.pipe_file(f"{s3_root}/d/v2/.claim", b"{}")
    fs.pipe_file(f"{s3_root}/d/v2/data.parquet", b"half written")
    assert store.versions("d") == [1]
    assert store.resolve("d@latest").ref == "d@v1"
    with pytest.raises(StoreError, match=r"unknown version d@v2 \(versions: v1\)"):
        store.resolve("d@v2")
    assert store.publish("d", make_frame(tag="!")).ref == "d@v3"  # the claimed number is never reused
    assert store.versions("d") == [1, 3]


def _s3_publish_worker(root, env, start_at, index):
    os.environ.update(env)
    while time.time() < start_at:
        time.sleep(0.001)
    DatasetStore(root).publish("race", make_frame(n=50, tag=f"-{index}"), description=f"writer {index}")


def test_concurrent_publishers_never_share_a_version(s3_root, s3_endpoint):
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 6
    env = s3_env(s3_endpoint)
    workers = [context.Process(target=_s3_publish_worker, args=(s3_root, env, start_at, i)) for i in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=180)
        assert worker.exitcode == 0
    store = DatasetStore(s3_root)
    versions = store.versions("race")
    assert versions == list(range(1, 7))  # conditional writes: six publishers, six distinct numbers
    writers = {store.resolve(f"race@v{n}").manifest["description"] for n in versions}
    assert len(writers) == 6


def test_tampered_objects_are_detected_on_s3(s3_root):
    store = DatasetStore(s3_root)
    store.publish("d", make_frame())
    store.publish("e", make_frame())
    fs = _fs()
    data = f"{s3_root}/d/v1/data.parquet"
    fs.pipe_file(data, fs.cat_file(data)[:-8] + b"tampered")
    with pytest.raises(CorruptVersionError, match="d@v1: data.parquet does not match the sha256"):
        store.resolve("d@v1")
    manifest_path = f"{s3_root}/e/v1/manifest.json"
    manifest = json.loads(fs.cat_file(manifest_path))
    manifest["rows"]["kept"] = 5
    fs.pipe_file(manifest_path, json.dumps(manifest).encode())
    with pytest.raises(CorruptVersionError, match="e@v1: manifest.json does not match its seal"):
        store.resolve("e@v1", verify=False)


def test_keyed_publish_is_idempotent_on_s3(s3_root):
    store = DatasetStore(s3_root)
    first = store.publish("k", make_frame(), key="fingerprint-1")
    assert store.publish("k", make_frame(), key="fingerprint-1").ref == first.ref
    assert store.publish("k", make_frame(), key="fingerprint-2").ref == "k@v2"
    assert store.versions("k") == [1, 2]


def test_unreachable_object_store_is_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from fixtures.s3_server import free_port

    env = {**os.environ, **s3_env(f"http://127.0.0.1:{free_port()}"), "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", "from stillhouse.cli import main; main()", "datasets", "list", "--root", ROOT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert f"in {ROOT}: EndpointConnectionError: Could not connect to the endpoint URL" in done.stderr


def test_seeds_are_read_from_s3(s3_root):
    from stillhouse.seeds import SeedError, load_seeds

    lines = [json.dumps({"text": f"Seed question number {i}?"}) for i in range(5)] + [
        '{"text": "Seed question number 0?"}'
    ]
    _fs().pipe_file(f"{s3_root}/seeds.jsonl", ("\n".join(lines) + "\n").encode())
    records, merged = load_seeds(f"{s3_root}/seeds.jsonl", columns={"instruction": "text"})
    assert records.height == 5 and merged == 1
    assert records["instruction"].to_list()[0] == "Seed question number 0?"
    _fs().pipe_file(f"{s3_root}/bad.jsonl", b'{"text": "fine"}\n{oops\n')
    with pytest.raises(SeedError, match=rf"^{s3_root}/bad.jsonl:2: invalid JSON"):
        load_seeds(f"{s3_root}/bad.jsonl", columns={"instruction": "text"})
    with pytest.raises(SeedError, match=rf"^{s3_root}/missing.jsonl: seed file not found$"):
        load_seeds(f"{s3_root}/missing.jsonl", columns={"instruction": "text"})


def test_run_reads_seeds_from_and_publishes_to_s3(s3_root, run_cli, tmp_path):
    import yaml

    texts = [f"Tell a customer how parcel number {i} will be delivered next week." for i in range(6)] + ["Hi?"]
    _fs().pipe_file(f"{s3_root}/seeds.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts).encode())
    config = {
        "name": "s3run",
        "run_dir": str(tmp_path / "runs"),
        "seeds": {"path": f"{s3_root}/seeds.jsonl", "columns": {"instruction": "text"}},
        "curation": [
            {"stage": "heuristics", "column": "instruction", "language": None, "truncated": False, "min_chars": 10}
        ],
        "publish": {"name": "s3run", "root": f"{s3_root}/datasets"},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, err = run_cli("run", path)
    assert code == 0, err
    store = DatasetStore(f"{s3_root}/datasets")
    version = store.resolve("s3run@latest")
    assert version.ref == "s3run@v1"
    assert version.manifest["rows"] == {"kept": 6, "rejected": 1, "total": 7}
    assert version.read_rejected()["drop_reason"].to_list() == ["too_short: 3 chars < 10"]
    code, out, err = run_cli("run", path)  # finished: everything reused, nothing published twice
    assert code == 0, err
    assert store.versions("s3run") == [1]
