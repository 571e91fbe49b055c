import json
import multiprocessing
import time

import polars as pl
import pytest

from curation.store import CorruptVersionError, DatasetStore, StoreError
from curation.version_diff import diff_versions


def make_frame(n: int = 6, dropped: int = 2, tag: str = "") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [f"id{i}" for i in range(n)],
            "instruction": [f"question {i}{tag}" for i in range(n)],
            "input": [""] * n,
            "origin": ["seed"] * n,
            "response": [f"answer {i}" for i in range(n)],
            "label": ["a" if i % 2 else "b" for i in range(n)],
            "label_probs": [[0.9, 0.1] if i % 2 else [0.2, 0.8] for i in range(n)],
            "drop_stage": [None] * (n - dropped) + ["heuristics"] * dropped,
            "drop_reason": [None] * (n - dropped) + ["too_short: 3 chars < 10"] * dropped,
            "judge_score": [float(i) for i in range(n)],
        }
    )


def test_publish_writes_complete_version(tmp_path):
    store = DatasetStore(tmp_path)
    version = store.publish("tickets", make_frame(), label_set=["a", "b"], config={"teacher": {"api_key": "sk-1"}})
    assert version.ref == "tickets@v1"
    files = sorted(p.name for p in version.path.iterdir())
    assert files == ["README.md", "data.parquet", "manifest.json", "rejected.parquet"]
    manifest = version.manifest
    assert manifest["rows"] == {"kept": 4, "rejected": 2, "total": 6}
    assert manifest["funnel"] == [{"stage": "heuristics", "rows_in": 6, "dropped": {"too_short": 2}, "rows_out": 4}]
    assert manifest["label_set"] == ["a", "b"]
    assert manifest["config"]["teacher"]["api_key"] == "***"  # secrets never reach a manifest
    assert "sk-1" not in (version.path / "manifest.json").read_text()
    assert set(manifest["files"]) == {"README.md", "data.parquet", "rejected.parquet"}
    assert version.read()["id"].to_list() == ["id0", "id1", "id2", "id3"]
    assert version.read_rejected()["drop_reason"].to_list() == ["too_short: 3 chars < 10"] * 2
    card = (version.path / "README.md").read_text()
    assert "tickets@v1" in card and "| heuristics | 6 | too_short 2 | 4 |" in card


def test_refs_resolve_by_number_and_latest(tmp_path):
    store = DatasetStore(tmp_path)
    store.publish("d", make_frame())
    second = store.publish("d", make_frame(tag="!"), parent="d@latest")
    assert second.manifest["parent"] == "d@v1"
    assert store.resolve("d@latest").version == 2
    assert store.resolve("d").version == 2
    assert store.resolve("d@v1").version == 1
    with pytest.raises(StoreError, match=r"unknown version d@v9 \(versions: v1, v2\)"):
        store.resolve("d@v9")
    with pytest.raises(StoreError, match="unknown dataset 'nope'"):
        store.resolve("nope@latest")
    with pytest.raises(StoreError, match="does not exist"):
        DatasetStore(tmp_path / "missing").resolve("d")


def _publish_worker(root, start_at, index):
    while time.time() < start_at:
        time.sleep(0.001)
    DatasetStore(root).publish("race", make_frame(n=50, tag=f"-{index}"), description=f"writer {index}")


def test_concurrent_publishes_get_distinct_consecutive_versions(tmp_path):
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 4
    workers = [context.Process(target=_publish_worker, args=(tmp_path, start_at, i)) for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    store = DatasetStore(tmp_path)
    assert store.versions("race") == list(range(1, 9))
    writers = set()
    for number in range(1, 9):
        version = store.resolve(f"race@v{number}")  # verifies every file's hash
        assert version.manifest["version"] == number
        assert version.read().height == 48
        writers.add(version.manifest["description"])
    assert len(writers) == 8  # each publish landed exactly once
    assert not [p for p in (tmp_path / "race").iterdir() if p.name.startswith(".tmp")]


def test_tampered_file_is_detected(tmp_path):
    store = DatasetStore(tmp_path)
    version = store.publish("d", make_frame())
    data = version.data_path
    data.chmod(0o644)
    data.write_bytes(data.read_bytes()[:-8] + b"tampered")
    with pytest.raises(CorruptVersionError, match="d@v1: data.parquet does not match the sha256"):
        store.resolve("d@v1")
    with pytest.raises(CorruptVersionError):
        store.resolve("d@v1", verify=False).read()


def test_published_files_are_read_only(tmp_path):
    version = DatasetStore(tmp_path).publish("d", make_frame())
    for path in version.path.iterdir():
        assert path.stat().st_mode & 0o222 == 0


def test_malformed_manifest_is_reported(tmp_path):
    store = DatasetStore(tmp_path)
    version = store.publish("d", make_frame())
    manifest = version.path / "manifest.json"
    manifest.chmod(0o644)
    manifest.write_text("{not json")
    with pytest.raises(StoreError, match="manifest.json is malformed"):
        store.resolve("d")
    manifest.write_text(json.dumps({"name": "d"}))
    with pytest.raises(StoreError, match="missing keys: schema_version"):
        store.resolve("d")


def test_failed_publish_leaves_no_version(tmp_path):
    store = DatasetStore(tmp_path)
    with pytest.raises(Exception, match="missing required column"):
        store.publish("d", make_frame().drop("origin"))
    assert store.versions("d") == []
    assert not list(tmp_path.glob("d/.tmp-*"))


def test_round_trip_through_datasets_and_polars(tmp_path):
    from datasets import load_dataset

    frame = make_frame()
    version = DatasetStore(tmp_path).publish("d", frame)
    polars_rows = pl.read_parquet(version.data_path)
    assert polars_rows["response"].to_list() == frame["response"].to_list()[:4]
    hf = load_dataset("parquet", data_files={"train": str(version.data_path)}, cache_dir=str(tmp_path / "hf"))["train"]
    assert hf.num_rows == 4
    assert hf["id"] == ["id0", "id1", "id2", "id3"]
    assert [round(p, 4) for p in hf["label_probs"][1]] == [0.9, 0.1]


def test_diff_counts_added_removed_changed_and_funnel(tmp_path):
    store = DatasetStore(tmp_path)
    old = store.publish("d", make_frame())
    frame = make_frame()
    frame = frame.with_columns(
        response=pl.when(pl.col("id") == "id1").then(pl.lit("better answer")).otherwise(pl.col("response")),
        drop_stage=pl.when(pl.col("id") == "id0").then(pl.lit("review")).otherwise(pl.col("drop_stage")),
        drop_reason=pl.when(pl.col("id") == "id0").then(pl.lit("rejected")).otherwise(pl.col("drop_reason")),
    )
    extra = make_frame(n=1, dropped=0).with_columns(id=pl.lit("new"), instruction=pl.lit("brand new"))
    new = store.publish("d", pl.concat([frame, extra]), parent=old.ref)
    diff = diff_versions(old, new)
    assert diff.added == ["new"]
    assert diff.removed == ["id0"]
    assert diff.newly_rejected == ["id0"]
    assert diff.changed == ["id1"]
    assert diff.funnel_deltas == [{"stage": "review", "reason": "rejected", "old": 0, "new": 1}]


def _edit_manifest(version, change):
    path = version.path / "manifest.json"
    path.chmod(0o644)
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=2))


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["rows"].update(kept=5),
        lambda m: m.update(label_set=["a", "c"]),
        lambda m: m["funnel"][0]["dropped"].update(too_short=1),
    ],
    ids=["row_count", "label_set", "funnel"],
)
def test_tampered_manifest_fails_verify_and_every_read(tmp_path, run_cli, change):
    store = DatasetStore(tmp_path)
    store.publish("d", make_frame(), label_set=["a", "b"])
    good = store.publish("d", make_frame(tag="!"), label_set=["a", "b"])
    _edit_manifest(store.resolve("d@v1"), change)
    with pytest.raises(
        CorruptVersionError, match=r"d@v1: manifest.json does not match its seal \(edited after publish"
    ):
        store.resolve("d@v1", verify=False)
    code, _, err = run_cli("datasets", "verify", "d@v1", "--root", tmp_path)
    assert code == 1 and "d@v1: manifest.json does not match its seal" in err and err.strip().count("\n") == 0
    assert store.resolve("d@v2").read().height == good.read().height  # the other version is untouched


def test_resealed_manifest_with_wrong_counts_or_labels_fails_verify(tmp_path):
    """Even a manifest whose seal was recomputed must agree with its files."""
    from curation.store import manifest_seal

    store = DatasetStore(tmp_path)
    store.publish("d", make_frame(), label_set=["a", "b"])

    def reseal(change):
        def apply(manifest):
            change(manifest)
            manifest["seal"] = manifest_seal(manifest)

        return apply

    store.publish("e", make_frame(), label_set=["a", "b"])
    _edit_manifest(store.resolve("d@v1"), reseal(lambda m: m["rows"].update(kept=5, total=7)))
    with pytest.raises(CorruptVersionError, match="d@v1: manifest.json says 5 kept rows, data.parquet has 4"):
        store.resolve("d@v1").read()
    _edit_manifest(store.resolve("e@v1"), reseal(lambda m: m.update(label_set=["a", "c"])))
    with pytest.raises(CorruptVersionError, match="e@v1: data.parquet has label 'b', which is not in the manifest"):
        store.resolve("e@v1")


def test_broken_manifest_does_not_hide_other_datasets(tmp_path, run_cli):
    store = DatasetStore(tmp_path)
    store.publish("good", make_frame())
    broken = store.publish("broken", make_frame())
    manifest = broken.path / "manifest.json"
    manifest.chmod(0o644)
    manifest.write_text("{")
    entries = {entry.name: entry for entry in store.listing()}
    assert entries["good"].latest.ref == "good@v1" and entries["good"].error is None
    assert entries["broken"].latest is None and "manifest.json is malformed" in entries["broken"].error
    code, out, _ = run_cli("datasets", "list", "--root", tmp_path)
    assert code == 0
    assert "good@v1" in out and "BROKEN" in out and "broken" in out


_KILL_SCRIPT = """
import sys, polars as pl
from curation.store import DatasetStore
n = 400_000
frame = pl.DataFrame({"id": [f"id{i}" for i in range(n)], "instruction": [f"question number {i}" for i in range(n)],
                      "input": [""] * n, "origin": ["seed"] * n, "response": [f"answer {i} " * 20 for i in range(n)]})
print("ready", flush=True)
DatasetStore(sys.argv[1]).publish("d", frame)
"""


def test_sigkill_during_publish_leaves_no_stale_staging(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    store = DatasetStore(tmp_path)
    store.publish("d", make_frame())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(tmp_path)], env=env, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"ready"
        deadline = time.time() + 60
        while not list((tmp_path / "d").glob(".tmp-*")) and time.time() < deadline:
            time.sleep(0.002)
        os.kill(child.pid, signal.SIGKILL)  # mid-publish: the staging dir exists, no version yet
    finally:
        child.wait(timeout=60)
    staging = list((tmp_path / "d").glob(".tmp-*"))
    assert len(staging) == 1 and f"-{child.pid}-" in staging[0].name  # temp names carry the publisher's pid
    assert store.versions("d") == [1]  # nothing half-published
    assert [entry.name for entry in store.listing()] == ["d"]  # the listing cleans the dead publisher's dir
    assert not list((tmp_path / "d").glob(".tmp-*"))
    staging[0].mkdir()  # and so does the next publish
    assert store.publish("d", make_frame(tag="?")).version == 2
    assert not list((tmp_path / "d").glob(".tmp-*"))


def _keyed_publish_worker(root, start_at, index):
    while time.time() < start_at:
        time.sleep(0.001)
    DatasetStore(root).publish("keyed", make_frame(n=50), description=f"writer {index}", key="run-fingerprint-1")


def test_idempotent_publish_checks_existence_under_the_lock(tmp_path):
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 4
    workers = [context.Process(target=_keyed_publish_worker, args=(tmp_path, start_at, i)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    store = DatasetStore(tmp_path)
    assert store.versions("keyed") == [1]  # four racing publishers of one key: one version
    again = store.publish("keyed", make_frame(n=50), key="run-fingerprint-1")
    assert again.ref == "keyed@v1"
    assert store.publish("keyed", make_frame(n=50), key="another").ref == "keyed@v2"
    assert not list((tmp_path / "keyed").glob(".tmp-*"))
