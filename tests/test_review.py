"""Human review in Argilla, against a real argilla-server 2.8 started by the session fixture.

A version built from real Alpaca rows (with plausible curation scores) is pushed,
annotators submit responses through the Argilla SDK with their own API keys, and the
pulled child version is checked row by row.
"""

from __future__ import annotations

import json
from uuid import UUID

import argilla as rg
import numpy as np
import polars as pl
import pytest
from conftest import shared_data
from fixtures.argilla_server import argilla_server  # noqa: F401 - session fixture

from curation.review import (
    ReviewConfig,
    ReviewConnectionError,
    ReviewError,
    pull,
    push,
    read_state,
    review_report,
    select_sample,
    status,
)
from curation.review_apply import combine_responses, judge_range, judge_threshold, per_reviewer
from curation.store import DatasetStore
from factory.schema import record_ids

ORIGINS = ["seed", "self_instruct", "evol:deepen"]


def _alpaca_frame(rows: int = 400) -> pl.DataFrame:
    raw = json.loads(shared_data("alpaca", "alpaca_plus_validation_unseen_1000_alpaca.json").read_text())[:rows]
    rng = np.random.default_rng(7)
    frame = pl.DataFrame(
        {
            "instruction": [r["instruction"] for r in raw],
            "input": [r["input"] for r in raw],
            "response": [r["output"] for r in raw],
            "origin": [ORIGINS[i % 3] for i in range(len(raw))],
        }
    )
    frame = frame.with_columns(record_ids(frame))
    judge = rng.integers(1, 6, frame.height).astype(float)
    entropy = rng.gamma(2.0, 0.4, frame.height)
    consistency = rng.uniform(0.2, 1.0, frame.height)
    dropped = judge < 2  # the judge filter dropped score-1 rows; they stay in rejected.parquet
    return frame.with_columns(
        pl.Series("judge_score", judge),
        pl.Series("mean_entropy", entropy),
        pl.Series("consistency", consistency),
        pl.when(pl.Series(dropped)).then(pl.lit("judge")).alias("drop_stage"),
        pl.when(pl.Series(dropped)).then(pl.lit("low_judge_score: 1 < 2")).alias("drop_reason"),
    )


@pytest.fixture
def store(tmp_path) -> DatasetStore:
    return DatasetStore(tmp_path / "datasets")


@pytest.fixture
def alpaca_version(store):
    judge = {"stage": "judge", "rubric": "ultrafeedback", "min_score": 2.0}  # as a run's manifest records it
    return store.publish("alpaca-review", _alpaca_frame(), config={"curation": [judge]})


@pytest.fixture
def config(argilla_server, monkeypatch, request) -> ReviewConfig:  # noqa: F811
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.api_key)
    return ReviewConfig(
        api_url=argilla_server.api_url,
        workspace=argilla_server.workspace,
        dataset_name=f"review-{request.node.name}"[:60],
        fraction=0.05,
        min_rows=24,
        batch_size=10,
    )


def _annotator(server, name: str) -> rg.Argilla:  # noqa: F811
    return rg.Argilla(api_url=server.api_url, api_key=server.annotators[name])


def _submit(client: rg.Argilla, dataset_name: str, workspace: str, answers: dict[str, dict]) -> None:
    """Submit responses exactly as the annotator behind `client` does in the UI: find the records in
    their own queue (the /me search endpoint) and post one response per record under their identity."""
    dataset = client.datasets(dataset_name, workspace=workspace)
    queue = client.http_client.post(f"/api/v1/me/datasets/{dataset.id}/records/search", json={}, params={"limit": 500})
    queue.raise_for_status()
    found = {item["record"]["external_id"]: item["record"] for item in queue.json()["items"]}
    assert set(answers) <= set(found)
    for record_id, values in answers.items():
        server = found[record_id]
        record = rg.Record(id=record_id, fields=server["fields"], _server_id=UUID(server["id"]), _dataset=dataset)
        for question, value in values.items():
            record.responses.add(rg.Response(question, value, user_id=client.me.id, status="submitted"))
        client.api.records.create_record_responses(record.api_model())


def _server_ids(server, config) -> list[str]:  # noqa: F811
    owner = rg.Argilla(api_url=server.api_url, api_key=server.api_key)
    dataset = owner.datasets(config.dataset_name, workspace=config.workspace)
    return [record.id for record in dataset.records]


def test_sample_is_stratified_and_includes_threshold_neighbours(store):
    version = store.publish("sampled", _alpaca_frame(1000))
    kept = version.read()
    config = ReviewConfig(fraction=0.07)
    sample = select_sample(version, config)
    assert sample["id"].n_unique() == sample.height >= round(0.07 * kept.height)
    assert sample.height <= round(0.07 * kept.height) + 3 * config.boundary_rows
    # the closest calls of every filter are always there
    assert set(kept.sort("mean_entropy", descending=True)["id"][:3]) <= set(sample["id"])
    assert set(kept.sort("consistency")["id"][:3]) <= set(sample["id"])
    assert kept.sort("judge_score")["judge_score"][0] in sample["judge_score"].to_list()
    # every origin is represented roughly in proportion
    shares = sample["origin"].value_counts(normalize=True)
    assert set(shares["origin"]) == set(ORIGINS)
    assert shares["proportion"].min() > 0.2
    # reproducible for a seed, different for another
    assert select_sample(version, config)["id"].to_list() == sample["id"].to_list()
    assert select_sample(version, config.model_copy(update={"seed": 1}))["id"].to_list() != sample["id"].to_list()


def test_judge_scale_and_threshold_come_from_the_judge_stage_config():
    scores = pl.DataFrame({"judge_score": [2.0, 3.0, 4.0]})
    assert judge_range(scores) == (1.0, 5.0)  # inferred from the values
    assert judge_range(scores, manifest_config={"curation": [{"stage": "judge", "rubric": "score_1_10"}]}) == (1, 10)
    assert judge_range(scores, override=(0, 4)) == (0.0, 4.0)
    ultra = {"curation": [{"stage": "heuristics"}, {"stage": "judge", "rubric": "ultrafeedback", "min_score": 4}]}
    assert judge_threshold((1.0, 5.0), None, ultra) == 4.0
    assert judge_threshold((1.0, 5.0), None, {}) == 3.0
    assert judge_threshold((1.0, 5.0), 2.5, ultra) == 2.5


def test_config_rejects_unknown_keys_and_bad_fraction():
    with pytest.raises(ValueError, match="extra"):
        ReviewConfig(fractoin=0.05)
    with pytest.raises(ValueError, match="fraction"):
        ReviewConfig(fraction=0.5)
    with pytest.raises(ValueError, match="min_rows"):
        ReviewConfig(min_rows=10, max_rows=5)


def test_several_annotators_any_reject_wins_and_first_correction_applies():
    responses = pl.DataFrame(
        [
            ("a", "zoe", "verdict", "accept"),
            ("a", "zoe", "correction", "fix by zoe"),
            ("a", "amy", "verdict", "accept"),
            ("a", "amy", "correction", "fix by amy"),
            ("a", "amy", "quality", "2"),
            ("a", "zoe", "quality", "5"),
            ("b", "amy", "verdict", "accept"),
            ("b", "zoe", "verdict", "reject"),
            ("b", "zoe", "note", "off topic"),
            ("b", "amy", "correction", "ignored: rejected"),
            ("c", "amy", "verdict", "accept"),
            ("c", "amy", "correction", " original c "),  # the pre-filled text, untouched
        ],
        schema=["id", "reviewer", "question", "value"],
        orient="row",
    )
    originals = pl.DataFrame({"id": ["a", "b", "c"], "original": ["original a", "original b", "original c"]})
    verdicts = {row["id"]: row for row in combine_responses(per_reviewer(responses, originals)).to_dicts()}
    assert verdicts["a"]["status"] == "corrected" and verdicts["a"]["correction"] == "fix by amy"
    assert verdicts["a"]["rating"] == 4 and verdicts["a"]["reviewer"] == "amy, zoe"  # median 3.5 rounds to 4
    assert verdicts["b"]["status"] == "rejected" and verdicts["b"]["correction"] is None
    assert verdicts["b"]["note"] == "zoe: off topic" and not verdicts["b"]["unanimous"]
    assert verdicts["c"]["status"] == "accepted" and verdicts["c"]["correction"] is None


@pytest.mark.slow
@pytest.mark.argilla
def test_push_review_pull_publishes_reviewed_child(argilla_server, store, alpaca_version, config):  # noqa: F811
    result = push(alpaca_version, config)
    sample = select_sample(alpaca_version, config)
    assert result.logged == result.sample_rows == sample.height >= 24
    assert sorted(_server_ids(argilla_server, config)) == sorted(sample["id"].to_list())
    assert read_state(alpaca_version)["complete"] is True

    ids = sample.sort("id")["id"].to_list()
    rejected, corrected, accepted = ids[:3], ids[3], ids[4:10]
    alice = {i: {"verdict": "reject", "quality": 1, "note": "wrong answer"} for i in rejected}
    alice[corrected] = {"verdict": "accept", "quality": 3, "correction": "A corrected answer.", "note": "fixed"}
    alice.update({i: {"verdict": "accept", "quality": 5} for i in accepted})
    _submit(_annotator(argilla_server, "alice"), config.dataset_name, config.workspace, alice)
    # bob agrees on one accepted record and rejects another one alice accepted: any reject wins
    bob = {accepted[0]: {"verdict": "accept", "quality": 4}, accepted[1]: {"verdict": "reject", "note": "unsafe"}}
    _submit(_annotator(argilla_server, "bob"), config.dataset_name, config.workspace, bob)

    progress = status(alpaca_version, config)
    assert progress["total"] == sample.height and progress["completed"] == 10
    assert progress["users"]["alice"]["submitted"] == 10 and progress["users"]["bob"]["submitted"] == 2

    child = pull(alpaca_version, config, store)
    assert child.manifest["parent"] == alpaca_version.ref and child.version == alpaca_version.version + 1
    kept, dropped = child.read(), child.read_rejected()
    parent_kept = alpaca_version.read()
    assert kept.height == parent_kept.height - 4
    by_review = dropped.filter(pl.col("drop_stage") == "review")
    assert sorted(by_review["id"]) == sorted([*rejected, accepted[1]])
    assert set(by_review.filter(pl.col("id").is_in(rejected))["drop_reason"]) == {"rejected_by_reviewer: wrong answer"}
    assert by_review.filter(pl.col("id") == accepted[1])["drop_reason"][0] == "rejected_by_reviewer: bob: unsafe"
    assert dropped.height == alpaca_version.read_rejected().height + 4  # earlier drops carried over

    fixed = kept.filter(pl.col("id") == corrected).row(0, named=True)
    original = parent_kept.filter(pl.col("id") == corrected)["response"][0]
    assert fixed["response"] == "A corrected answer."
    assert fixed["review"] == {
        "status": "corrected",
        "reviewer": "alice",
        "rating": 3,
        "correction": "A corrected answer.",
        "original": original,
        "note": "fixed",
    }
    both = kept.filter(pl.col("id") == accepted[0])["review"][0]
    assert both["status"] == "accepted" and both["reviewer"] == "alice, bob" and both["rating"] == 4  # median 4.5
    untouched = kept.filter(~pl.col("id").is_in(ids[:10]))
    assert untouched["review"].is_null().all()
    assert untouched.select(pl.exclude("review")).equals(
        parent_kept.filter(pl.col("id").is_in(untouched["id"])).select(pl.exclude("review"))
    )

    funnel = child.manifest["funnel"]
    assert funnel[:-1] == alpaca_version.manifest["funnel"]
    assert funnel[-1] == {
        "stage": "review",
        "rows_in": parent_kept.height,
        "dropped": {"rejected_by_reviewer": 4},
        "rows_out": parent_kept.height - 4,
    }
    report = review_report(child)
    assert report["totals"] == {
        "sampled": sample.height,
        "reviewed": 10,
        "accepted": 5,
        "corrected": 1,
        "rejected": 4,
        "pending": sample.height - 10,
        "rejection_rate": 0.4,
    }
    assert sum(row["rejected"] for row in report["by_origin"]) == 4
    assert set(report["by_bucket"]) == {"judge_score", "mean_entropy", "consistency"}
    agreement = report["judge_agreement"]
    assert agreement["judge_range"] == [1.0, 5.0] and agreement["threshold"] == 2.0  # from the judge stage's config
    # the judge kept (accepted) every reviewed row; the annotators accepted 6 of 10
    assert agreement["records"] == 10 and agreement["agreement_rate"] == 0.6
    assert agreement["judge_accepts_human_rejects"] == 4 and agreement["rated"] == 10
    assert agreement["rating_judge_spearman"] is not None
    assert report["inter_annotator"] == {"records": 2, "unanimous_rate": 0.5}
    stored = [json.dumps(child.manifest), (child.path / "review.json").read_text()]
    stored.append(json.dumps(read_state(alpaca_version)))
    assert not any(argilla_server.api_key in text for text in stored)


@pytest.mark.slow
@pytest.mark.argilla
def test_repeated_and_interrupted_push_never_duplicates(argilla_server, alpaca_version, config, monkeypatch):  # noqa: F811
    from argilla._api._records import RecordsAPI

    sample_ids = sorted(select_sample(alpaca_version, config)["id"].to_list())
    real_upsert = RecordsAPI.bulk_upsert
    calls = []

    def fail_after_first_batch(self, *args, **kwargs):
        if calls:
            import httpx

            raise httpx.ReadError("connection dropped")
        calls.append(1)
        return real_upsert(self, *args, **kwargs)

    monkeypatch.setattr(RecordsAPI, "bulk_upsert", fail_after_first_batch)
    with pytest.raises(ReviewConnectionError, match=f"cannot reach the Argilla server at {config.api_url}"):
        push(alpaca_version, config)
    assert len(_server_ids(argilla_server, config)) == config.batch_size  # half done on the server
    assert read_state(alpaca_version)["complete"] is False
    monkeypatch.undo()
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.api_key)

    resumed = push(alpaca_version, config)
    assert resumed.already_there == config.batch_size and resumed.logged == len(sample_ids) - config.batch_size
    again = push(alpaca_version, config)
    assert again.logged == 0 and again.already_there == len(sample_ids)
    assert sorted(_server_ids(argilla_server, config)) == sample_ids
    assert read_state(alpaca_version)["complete"] is True


@pytest.mark.slow
@pytest.mark.argilla
def test_down_server_and_wrong_key_give_one_error_and_publish_nothing(
    argilla_server,  # noqa: F811
    store,
    alpaca_version,
    config,
    monkeypatch,
    run_cli,
):
    from fixtures.argilla_server import free_port

    down = config.model_copy(update={"api_url": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(ReviewConnectionError, match=f"cannot reach the Argilla server at {down.api_url}"):
        push(alpaca_version, down)
    with pytest.raises(ReviewConnectionError, match="cannot reach"):
        pull(alpaca_version, down, store)
    monkeypatch.setenv("ARGILLA_API_KEY", "not-the-key")
    with pytest.raises(ReviewConnectionError, match="rejected the API key in \\$ARGILLA_API_KEY"):
        pull(alpaca_version, config, store)
    assert store.versions(alpaca_version.name) == [alpaca_version.version]
    assert read_state(alpaca_version) is None

    root = store.root
    code, out, err = run_cli("review", "push", alpaca_version.ref, "--root", root, "--api-url", down.api_url)
    assert code == 1 and err.count("\n") == 1 and down.api_url in err and "Traceback" not in err
    code, out, err = run_cli("review", "pull", alpaca_version.ref, "--root", root, "--api-url", config.api_url)
    assert code == 1 and "rejected the API key" in err and "not-the-key" not in err
    assert store.versions(alpaca_version.name) == [alpaca_version.version]


@pytest.mark.slow
@pytest.mark.argilla
def test_pull_before_push_and_before_any_response(argilla_server, store, alpaca_version, config):  # noqa: F811
    with pytest.raises(ReviewError, match="run `stillhouse review push alpaca-review@v1` first"):
        pull(alpaca_version, config, store)
    push(alpaca_version, config)
    with pytest.raises(ReviewError, match="no submitted responses yet"):
        pull(alpaca_version, config, store)
    assert store.versions(alpaca_version.name) == [1]


def _banking_version(store):
    """A classification version from real banking77 tickets with plausible teacher soft labels."""
    label_set = json.loads(shared_data("banking77", "categories.json").read_text())
    tickets = pl.read_csv(shared_data("banking77", "train.csv")).head(300)
    rng = np.random.default_rng(3)
    gold = [label_set.index(c) for c in tickets["category"]]
    probs = rng.dirichlet(np.full(len(label_set), 0.05), tickets.height)
    probs = 0.5 * probs + 0.5 * np.eye(len(label_set))[gold]  # a teacher that is mostly right
    frame = pl.DataFrame(
        {
            "instruction": ["Classify the intent of this support ticket."] * tickets.height,
            "input": tickets["text"],
            "origin": ["import"] * tickets.height,
            "label": [label_set[i] for i in probs.argmax(1)],
            "label_probs": pl.Series(probs.astype(np.float32).tolist(), dtype=pl.List(pl.Float32)),
            "consistency": rng.uniform(0.5, 1.0, tickets.height),
        }
    ).unique("input", keep="first", maintain_order=True)
    return store.publish("tickets", frame.with_columns(record_ids(frame)), label_set=label_set), label_set


@pytest.mark.slow
@pytest.mark.argilla
def test_classification_label_correction(argilla_server, store, config):  # noqa: F811
    version, label_set = _banking_version(store)
    push(version, config)
    sample = select_sample(version, config).sort("id")
    wrong, untouched, rejected = sample.row(0, named=True), sample.row(1, named=True), sample.row(2, named=True)
    new_label = next(label for label in label_set if label != wrong["label"])
    answers = {
        wrong["id"]: {"verdict": "accept", "correction": new_label, "quality": 2},
        # an annotator who submits the pre-filled teacher label unchanged corrects nothing
        untouched["id"]: {"verdict": "accept", "correction": untouched["label"]},
        rejected["id"]: {"verdict": "reject"},
    }
    _submit(_annotator(argilla_server, "alice"), config.dataset_name, config.workspace, answers)

    child = pull(version, config, store)
    assert child.label_set == label_set and child.manifest["parent"] == version.ref
    kept = child.read()
    fixed = kept.filter(pl.col("id") == wrong["id"]).row(0, named=True)
    assert fixed["label"] == new_label
    assert fixed["label_probs"] == [float(label == new_label) for label in label_set]  # the human label, one-hot
    assert fixed["review"]["status"] == "corrected" and fixed["review"]["original"] == wrong["label"]
    same = kept.filter(pl.col("id") == untouched["id"]).row(0, named=True)
    assert same["label"] == untouched["label"] and same["review"]["status"] == "accepted"
    assert same["label_probs"] == pytest.approx(untouched["label_probs"])
    dropped = child.read_rejected()
    assert dropped["id"].to_list() == [rejected["id"]] and dropped["drop_reason"][0] == "rejected_by_reviewer"
    assert "judge_agreement" not in review_report(child)  # no judge scores in this version


@pytest.mark.slow
@pytest.mark.argilla
def test_cli_push_status_pull(argilla_server, store, alpaca_version, config, run_cli):  # noqa: F811
    options = ["--root", store.root, "--api-url", config.api_url, "--workspace", config.workspace]
    options += ["--dataset-name", config.dataset_name]
    code, out, err = run_cli("review", "push", alpaca_version.ref, *options, "--fraction", "0.05", "--min-rows", "24")
    assert code == 0, err
    assert config.dataset_name in out and "nearest mean_entropy threshold" in out
    sample_ids = sorted(_server_ids(argilla_server, config))
    assert len(sample_ids) == select_sample(alpaca_version, config).height

    answers = {i: {"verdict": "accept", "quality": 4} for i in sample_ids[:5]}
    answers[sample_ids[5]] = {"verdict": "reject", "quality": 1, "note": "made-up facts"}
    _submit(_annotator(argilla_server, "bob"), config.dataset_name, config.workspace, answers)
    # status and pull find the server, workspace and dataset of the push by themselves
    code, out, err = run_cli("review", "status", alpaca_version.ref, "--root", store.root)
    assert code == 0, err
    assert f"6 of {len(sample_ids)} records reviewed" in out and "bob" in out

    code, out, err = run_cli("review", "pull", alpaca_version.ref, "--root", store.root)
    assert code == 0, err
    assert "by origin" in out and "annotators vs judge" in out and "alpaca-review@v2" in out
    child = store.resolve("alpaca-review@v2")
    assert child.read_rejected().filter(pl.col("drop_stage") == "review")["drop_reason"].to_list() == [
        "rejected_by_reviewer: made-up facts"
    ]
    assert read_state(alpaca_version)["pulls"][0]["ref"] == "alpaca-review@v2"

    code, out, err = run_cli("review", "push", alpaca_version.ref, "--root", store.root, "--fraction", "0.5")
    assert code == 1 and "fraction" in err and err.count("\n") == 1
