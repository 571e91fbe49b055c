"""What a run does when its teacher answers garbage for some rows or runs out of budget:
it publishes what was answered with the unanswered count on the summary, manifest and card,
and the same command later sends exactly the requests never answered."""

from __future__ import annotations

import json

import pytest
from fixtures.fake_openai_server import FakeOpenAIServer
from test_run import SEEDS, stillhouse, write_config

from curation.store import DatasetStore

pytestmark = pytest.mark.slow


def state_of(directory) -> dict:
    return json.loads((directory / "runs" / "resume" / "state.json").read_text())


def test_garbage_for_half_the_rows_publishes_with_the_count_then_the_rerun_completes(tmp_path):
    marker = "topic number 1"  # seeds 1 and 10..19: 11 of 24 get a malformed body every time
    garbled = [seed for seed in SEEDS if marker in seed]
    store = DatasetStore(tmp_path / "datasets")
    with FakeOpenAIServer(always_fail_marker=marker, always_fail_fault="malformed") as server:
        code, out, err = stillhouse(write_config(tmp_path, server.url))
        assert code == 0, err
        assert f"{len(garbled)} teacher request(s) failed (last error: failed after 1 attempt(s): bad response" in out
        version = store.resolve("resume@latest")
        assert version.manifest["teacher"] == {
            "failed_requests": len(garbled),
            "not_issued_requests": 0,
            "kept_samples_without_token_ids": 2 * version.read(["id"]).height,  # the fake sends no ids
        }
        card = (version.path / "README.md").read_text()
        assert f"- teacher: {len(garbled)} requests failed and 0 were not issued" in card
        assert f"{len(garbled)} failed and 0 not issued teacher requests behind resume@v1" in out
        rejected = version.read_rejected(["drop_reason"])["drop_reason"].to_list()
        assert sum(reason.startswith("teacher_error: ") for reason in rejected) == len(garbled)
        sent = server.counts["requests"]
        server.always_fail_marker = None  # the server is fixed
        code, out, err = stillhouse(write_config(tmp_path, server.url))
        assert code == 0, err
        assert server.counts["requests"] - sent == len(garbled)  # exactly the unanswered, the cache the rest
    assert store.versions("resume") == [1, 2]  # the completed data is a new version, not the stale one
    complete = store.resolve("resume@latest")
    assert complete.manifest["teacher"]["failed_requests"] == 0
    assert complete.read_all().filter(complete.read_all()["drop_reason"].str.starts_with("teacher_error")).height == 0
    assert state_of(tmp_path)["status"] == "finished"


def test_a_budget_stop_says_what_was_spent_and_a_raised_budget_completes_the_starved_rows(tmp_path):
    teacher = {
        "backend": "openai",
        "model": "fake-model",
        "api_key_env": "STILLHOUSE_TEST_KEY",
        "concurrency": 1,
        "max_retries": 0,
        "budget": {"max_tokens": 600},
    }
    store = DatasetStore(tmp_path / "datasets")
    with FakeOpenAIServer() as server:
        config = write_config(tmp_path, server.url, teacher={**teacher, "base_url": f"{server.url}/v1"})
        code, out, err = stillhouse(config)
        assert code == 0, err
        first = server.counts["requests"]
        left = len(SEEDS) - first
        assert 0 < first < len(SEEDS)
        note = " ".join(out.split())  # rich wraps long lines
        assert f"the budget stopped {left} teacher request(s), {left} prompt(s) left" in note
        assert "of 600 tokens spent); raise teacher.budget in" in note
        assert "run the same command again to send exactly the unanswered ones" in note
        assert store.resolve("resume@latest").manifest["teacher"]["not_issued_requests"] == left
        raised = {**teacher, "base_url": f"{server.url}/v1", "budget": {"max_tokens": 100_000}}
        code, out, err = stillhouse(write_config(tmp_path, server.url, teacher=raised))
        assert code == 0, err
        assert server.counts["requests"] == len(SEEDS)  # only the starved rows were sent
    latest = store.resolve("resume@latest")
    assert latest.manifest["teacher"]["not_issued_requests"] == 0
    reasons = latest.read_all()["drop_reason"].drop_nulls().to_list()
    assert not any(reason.startswith("not_issued") for reason in reasons)


def test_a_dead_teacher_names_its_status_in_one_line_and_leaves_latest_alone(tmp_path):
    store = DatasetStore(tmp_path / "datasets")
    with FakeOpenAIServer() as good:
        assert stillhouse(write_config(tmp_path, good.url))[0] == 0
    (tmp_path / "seeds.jsonl").write_text("".join(json.dumps({"prompt": f"{s} (new)"}) + "\n" for s in SEEDS))
    with FakeOpenAIServer(fault_rate=1.0, faults=("500",)) as dead:
        code, out, err = stillhouse(write_config(tmp_path, dead.url))
    [line] = [line for line in err.splitlines() if line.startswith("error:")]  # the rest is progress bars
    assert "Traceback" not in err and code == 1
    assert line.startswith("error: task-0-respond: the teacher answered none of 24 request(s)")
    assert "last error: failed after 1 attempt(s): 500 from server" in line
    assert store.versions("resume") == [1] and store.resolve("resume@latest").ref == "resume@v1"


def test_a_server_sending_ids_for_a_tokenizer_not_here_is_refused_before_the_first_request(tmp_path):
    with FakeOpenAIServer(owned_by="vllm", root="/models/Qwen2.5-7B-Instruct") as server:
        code, out, err = stillhouse(write_config(tmp_path, server.url))
        assert server.counts["requests"] == 0
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and "set teacher.tokenizer" in line and "/models/Qwen2.5-7B-Instruct" in line
    assert not (tmp_path / "datasets").exists()
