"""Human review in Argilla: push a stratified sample of a version, pull verdicts back, apply them.

    push(version, config)          create/reuse the Argilla dataset, log the sample (idempotent by id)
    status(version, config)        records reviewed / total, per annotator
    pull(version, config, store)   read every submitted response, then publish a child version

Record ids in Argilla are the Stillhouse ids and records already on the server are
never sent again, so a repeated or interrupted push never duplicates anything. The
Argilla dataset's guidelines name the version it was made for; a small state file
beside the versions (`<root>/<name>/.review/v<N>.json`, never inside the immutable
version directory) records the sample that was pushed. The API key is read from the
environment variable named in the config and is never stored.

Verdicts of several annotators on one record combine as documented in
`curation.review_apply.combine_responses` (any reject wins).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from curation.config import ReviewConfig
from curation.funnel import funnel_from_frame
from curation.review_apply import REVIEW_REPORT_FILE, ReviewVerdicts, judge_range, review_report
from curation.review_sample import sample_size, stratified_sample, watched_columns
from curation.store import DatasetStore, DatasetVersion
from factory.atomic import write_text_atomic
from factory.errors import StillhouseError

__all__ = [
    "ReviewConfig",
    "ReviewError",
    "ReviewConnectionError",
    "PushResult",
    "push",
    "status",
    "pull",
    "review_report",
    "REVIEW_REPORT_FILE",
]

VERDICT, QUALITY, CORRECTION, NOTE = "verdict", "quality", "correction", "note"
SCORE_METADATA = ("judge_score", "mean_entropy", "consistency")
JUDGE_AGENT = "stillhouse-judge"
MARKER = "stillhouse-version:"


class ReviewError(StillhouseError):
    """The review cannot proceed (no dataset pushed, a name clash, nothing reviewed, ...)."""


class ReviewConnectionError(ReviewError):
    """The Argilla server is down, unreachable, or refused the API key."""


# -- connection -------------------------------------------------------------------
def connect(config: ReviewConfig):
    """An authenticated `argilla.Argilla` client, or one clear `ReviewConnectionError`."""
    import argilla as rg

    key = os.environ.get(config.api_key_env)
    if not key:
        raise ReviewConnectionError(f"no Argilla API key: set the environment variable {config.api_key_env}")
    with argilla_errors(config):
        client = rg.Argilla(api_url=config.api_url, api_key=key, timeout=config.timeout_s, retries=1)
        client.me  # noqa: B018 - authenticates now rather than halfway through
    return client


@contextlib.contextmanager
def argilla_errors(config: ReviewConfig) -> Iterator[None]:
    """Turn transport and server errors into one line naming the server."""
    import httpx
    from argilla._exceptions import ArgillaCredentialsError, ArgillaError, UnauthorizedError

    try:
        yield
    except (ArgillaCredentialsError, UnauthorizedError):
        raise ReviewConnectionError(
            f"the Argilla server at {config.api_url} rejected the API key in ${config.api_key_env} (wrong key?)"
        ) from None
    except httpx.HTTPError as exc:
        raise ReviewConnectionError(
            f"cannot reach the Argilla server at {config.api_url} ({type(exc).__name__}: {exc or 'no answer'}); "
            "is it running? (set --api-url or ARGILLA_API_URL)"
        ) from None
    except ArgillaError as exc:
        raise ReviewError(f"Argilla server at {config.api_url}: {exc}") from None


def _quietly(function, *args, **kwargs):
    """Call an SDK function without its own tqdm bars (we show one rich bar with the total)."""
    with contextlib.redirect_stderr(io.StringIO()):
        return function(*args, **kwargs)


# -- the Argilla dataset ------------------------------------------------------------
def is_classification(version: DatasetVersion, frame: pl.DataFrame) -> bool:
    if version.label_set:
        return True
    return frame["label"].is_not_null().any() and frame["response"].is_null().all()


def _guidelines(version: DatasetVersion, classification: bool) -> str:
    target = "label" if classification else "response"
    return (
        f"Spot check of Stillhouse dataset {version.ref}.\n\n"
        f"For each record, judge whether the teacher's {target} is correct and useful for the instruction "
        "and input.\n\n"
        "- **verdict**: accept, or reject to remove the record from the dataset.\n"
        "- **quality**: 1 (useless) to 5 (excellent); the suggestion is the LLM judge's score.\n"
        f"- **correction**: the corrected {target}, if you accept it only after fixing it.\n"
        "- **note**: why (shown as the drop reason of rejected records).\n\n"
        f"{MARKER} {version.ref} (manifest sha256 {version.manifest_sha256})"
    )


def _settings(version: DatasetVersion, kept: pl.DataFrame, classification: bool):
    import argilla as rg

    fields = [
        rg.TextField(name="instruction", title="Instruction", use_markdown=False),
        rg.TextField(name="input", title="Input", required=False, use_markdown=False),
    ]
    if classification:
        fields.append(rg.TextField(name="label", title="Teacher label and probabilities", use_markdown=True))
        correction = rg.LabelQuestion(
            name=CORRECTION,
            title="Correct label (change it only if the teacher's label is wrong)",
            labels=list(version.label_set or sorted(kept["label"].drop_nulls().unique().to_list())),
            required=False,
        )
    else:
        fields.append(rg.TextField(name="response", title="Teacher response", use_markdown=False))
        correction = rg.TextQuestion(
            name=CORRECTION, title="Corrected response (edit only if it needs fixing)", required=False
        )
    questions = [
        rg.LabelQuestion(name=VERDICT, title="Keep this record?", labels={"accept": "Accept", "reject": "Reject"}),
        rg.RatingQuestion(name=QUALITY, title="Quality (1-5)", values=[1, 2, 3, 4, 5], required=False),
        correction,
        rg.TextQuestion(name=NOTE, title="Note (why)", required=False),
    ]
    metadata = [rg.TermsMetadataProperty(name="origin", options=sorted(kept["origin"].unique().to_list()))]
    metadata += [rg.FloatMetadataProperty(name=c) for c in watched_columns(kept, SCORE_METADATA)]
    return rg.Settings(
        fields=fields, questions=questions, metadata=metadata, guidelines=_guidelines(version, classification)
    )


def _find_dataset(client, version: DatasetVersion, config: ReviewConfig):
    """The review dataset of this version, None if absent; refuses one made for another version."""
    name = config.argilla_dataset(version)
    if client.workspaces(config.workspace) is None:
        raise ReviewError(f"Argilla workspace '{config.workspace}' does not exist on {config.api_url}")
    with warnings.catch_warnings():  # the SDK warns when the dataset does not exist yet: that is the normal case
        warnings.simplefilter("ignore", UserWarning)
        dataset = client.datasets(name, workspace=config.workspace)
    if dataset is None:
        return None
    marker = f"{MARKER} {version.ref} "
    if marker not in (dataset.guidelines or ""):
        raise ReviewError(
            f"Argilla dataset '{name}' in workspace '{config.workspace}' was not made for {version.ref}; "
            "choose another --dataset-name"
        )
    return dataset


def _render_label(label: str | None, probs: list[float] | None, label_set: list[str] | None) -> str:
    if label is None:
        return "(no label)"
    text = f"**{label}**"
    if probs and label_set and len(probs) == len(label_set):
        top = sorted(zip(label_set, probs), key=lambda pair: -pair[1])[:5]
        text += "\n\nteacher probabilities: " + ", ".join(f"{name} {p:.2f}" for name, p in top)
    return text


def _judge_rating(score: float | None, scale: tuple[float, float] | None) -> int | None:
    if score is None or scale is None or not math.isfinite(score):
        return None
    low, high = scale
    position = (min(max(score, low), high) - low) / (high - low) if high > low else 0.5
    return int(round(1 + 4 * position))


def _records(
    sample: pl.DataFrame, version: DatasetVersion, classification: bool, scale: tuple[float, float] | None
) -> list:
    """Argilla records for sampled rows; `scale` is the judge_score range mapped onto the 1-5 rating."""
    import argilla as rg

    scores = watched_columns(sample, SCORE_METADATA)
    records = []
    for row in sample.iter_rows(named=True):
        fields = {"instruction": row["instruction"]}
        if row["input"]:
            fields["input"] = row["input"]
        suggestions = []
        if classification:
            fields["label"] = _render_label(row["label"], row["label_probs"], version.label_set)
            if row["label"] is not None:
                suggestions.append(rg.Suggestion(CORRECTION, row["label"], agent="teacher"))
        else:
            fields["response"] = row["response"] or "(empty response)"
        metadata: dict[str, Any] = {"origin": row["origin"]}
        metadata.update({c: float(row[c]) for c in scores if row[c] is not None and math.isfinite(row[c])})
        rating = _judge_rating(row.get("judge_score"), scale)
        if rating is not None:
            suggestions.append(rg.Suggestion(QUALITY, rating, agent=JUDGE_AGENT))
        records.append(rg.Record(id=row["id"], fields=fields, metadata=metadata, suggestions=suggestions))
    return records


# -- local state ----------------------------------------------------------------------
def state_path(version: DatasetVersion) -> Path:
    """`<root>/<name>/.review/v<N>.json`: beside the versions, never inside an immutable one."""
    return version.path.parent / ".review" / f"v{version.version}.json"


def _write_state(version: DatasetVersion, state: dict[str, Any]) -> None:
    path = state_path(version)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(state, indent=2) + "\n")


def read_state(version: DatasetVersion) -> dict[str, Any] | None:
    path = state_path(version)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# -- push / status / pull ---------------------------------------------------------------
class PushResult(BaseModel):
    argilla_dataset: str
    workspace: str
    api_url: str
    dataset_url: str
    kept_rows: int
    sample_rows: int
    already_there: int
    logged: int
    sample_reasons: dict[str, int]


def select_sample(version: DatasetVersion, config: ReviewConfig, kept: pl.DataFrame | None = None) -> pl.DataFrame:
    """The rows `push` sends for this version and config (deterministic).

    Rows that already carry a human verdict (from an earlier review round) are not asked again.
    """
    kept = version.read() if kept is None else kept
    if "review" in kept.columns:
        kept = kept.filter(pl.col("review").is_null())
    if kept.height == 0:
        raise ReviewError(f"{version.ref} has no kept rows left to review")
    size = sample_size(kept.height, config.fraction, config.min_rows, config.max_rows)
    return stratified_sample(
        kept,
        size=size,
        watch=config.watch,
        boundary_rows=config.boundary_rows,
        buckets=config.buckets,
        seed=config.seed,
    )


def push(version: DatasetVersion, config: ReviewConfig, console: Console | None = None) -> PushResult:
    """Create or reuse the Argilla dataset of `version` and log its sample; records already there are skipped."""
    import argilla as rg

    kept = version.read()
    sample = select_sample(version, config, kept)
    classification = is_classification(version, kept)
    scale = judge_range(kept, config.judge_range, version.manifest.get("config"))
    client = connect(config)
    with argilla_errors(config):
        dataset = _find_dataset(client, version, config)
        if dataset is None:
            dataset = rg.Dataset(
                name=config.argilla_dataset(version),
                workspace=config.workspace,
                settings=_settings(version, kept, classification),
                client=client,
            )
            dataset.create()
        present = {record.id for record in dataset.records(with_suggestions=False, with_responses=False)}
        state = {
            **(read_state(version) or {}),
            "version": version.ref,
            "argilla_dataset": dataset.name,
            "workspace": config.workspace,
            "api_url": config.api_url,
            "config": config.model_dump(mode="json"),
            "sample_ids": sample["id"].to_list(),
            "complete": False,
            "pushed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        _write_state(version, state)
        todo = sample.filter(~pl.col("id").is_in(list(present)))
        with Progress(
            TextColumn("pushing to Argilla"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
        ) as progress:
            task = progress.add_task("push", total=todo.height)
            for start in range(0, todo.height, config.batch_size):
                batch = todo.slice(start, config.batch_size)
                records = _records(batch, version, classification, scale)
                _quietly(dataset.records.log, records, batch_size=batch.height)
                progress.advance(task, batch.height)
        _write_state(version, {**state, "complete": True})
    reasons = sample["sample_reason"].str.replace(r"^stratum .*", "stratified").value_counts(sort=True)
    return PushResult(
        argilla_dataset=dataset.name,
        workspace=config.workspace,
        api_url=config.api_url,
        dataset_url=f"{config.api_url.rstrip('/')}/dataset/{dataset.id}/annotation-mode",
        kept_rows=kept.height,
        sample_rows=sample.height,
        already_there=sample.height - todo.height,
        logged=todo.height,
        sample_reasons=dict(zip(reasons["sample_reason"].to_list(), reasons["count"].to_list())),
    )


def _existing_dataset(client, version: DatasetVersion, config: ReviewConfig):
    dataset = _find_dataset(client, version, config)
    if dataset is None:
        raise ReviewError(
            f"no Argilla dataset '{config.argilla_dataset(version)}' in workspace '{config.workspace}' on "
            f"{config.api_url}: run `stillhouse review push {version.ref}` first"
        )
    return dataset


def status(version: DatasetVersion, config: ReviewConfig) -> dict[str, Any]:
    """Review progress: records on the server, how many are completed, and each annotator's responses."""
    client = connect(config)
    with argilla_errors(config):
        dataset = _existing_dataset(client, version, config)
        progress = dataset.progress(with_users_distribution=True)
    state = read_state(version)
    users = {
        name: {
            kind: counts["completed"].get(kind, 0) + counts["pending"].get(kind, 0)
            for kind in ("submitted", "draft", "discarded")
        }
        for name, counts in progress.get("users", {}).items()
    }
    return {
        "version": version.ref,
        "argilla_dataset": dataset.name,
        "workspace": config.workspace,
        "api_url": config.api_url,
        "sample_rows": len(state["sample_ids"]) if state else None,
        "push_complete": state["complete"] if state else None,
        "total": progress["total"],
        "completed": progress["completed"],
        "pending": progress["pending"],
        "users": users,
    }


def read_responses(client, dataset, console: Console | None = None) -> tuple[pl.DataFrame, list[str]]:
    """Every submitted response (one row per record, annotator and question) and the ids of all records."""
    rows: list[dict[str, Any]] = []
    usernames: dict[Any, str] = {}
    record_ids: list[str] = []
    total = dataset.progress()["total"]
    with Progress(
        TextColumn("reading responses"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    ) as progress:
        task = progress.add_task("pull", total=total)
        for record in dataset.records(with_responses=True, with_suggestions=False):
            record_ids.append(str(record.id))
            rows.extend(_submitted(client, record, usernames))
            progress.advance(task)
    schema = {"id": pl.String, "reviewer": pl.String, "question": pl.String, "value": pl.String}
    return pl.DataFrame(rows, schema=schema), record_ids


def _submitted(client, record, usernames: dict[Any, str]) -> list[dict[str, Any]]:
    """The submitted responses of one record (drafts and discarded ones are not verdicts)."""
    rows = []
    for response in record.responses:
        if getattr(response.status, "value", response.status) != "submitted":
            continue
        if response.user_id not in usernames:
            user = client.users(id=response.user_id)
            usernames[response.user_id] = user.username if user is not None else str(response.user_id)
        value = response.value
        rows.append(
            {
                "id": str(record.id),
                "reviewer": usernames[response.user_id],
                "question": response.question_name,
                "value": None if value is None else str(value),
            }
        )
    return rows


def pull(
    version: DatasetVersion, config: ReviewConfig, store: DatasetStore, console: Console | None = None
) -> DatasetVersion:
    """Read every submitted response, then publish the reviewed child version of `version`.

    Rejected rows move to rejected.parquet (drop_stage `review`, drop_reason
    `rejected_by_reviewer: <note>`); corrections replace the response/label and keep
    the original in `review.original`; `review` records each verdict. The review
    report (rejection rates, judge agreement) is stored in the version as review.json.
    """
    client = connect(config)
    with argilla_errors(config):
        dataset = _existing_dataset(client, version, config)
        # every response is read before anything is written: a dropped connection publishes nothing
        responses, record_ids = read_responses(client, dataset, console)
    frame = version.read_all()
    unknown = sorted(set(record_ids) - set(frame["id"].to_list()))
    if unknown:
        raise ReviewError(
            f"Argilla dataset '{dataset.name}' has {len(unknown)} records that are not rows of {version.ref} "
            f"(first: {unknown[0]})"
        )
    if responses.height == 0:
        raise ReviewError(
            f"no submitted responses yet in Argilla dataset '{dataset.name}' (0 of {len(record_ids)} reviewed); "
            "nothing to pull"
        )
    classification = is_classification(version, version.read(["label", "response"], verify=False))
    stage = ReviewVerdicts(
        responses,
        classification=classification,
        label_set=version.label_set,
        sampled_ids=record_ids,
        config=config,
        manifest_config=version.manifest.get("config"),
    )
    reviewed = stage.apply(frame)
    report = stage.report
    earlier = [step["stage"] for step in version.manifest["funnel"]]
    funnel = funnel_from_frame(reviewed, stages=[*earlier, *([stage.name] if stage.name not in earlier else [])])
    report.update(parent=version.ref, argilla_dataset=dataset.name, workspace=config.workspace)
    totals = report["totals"]
    child = store.publish(
        version.name,
        reviewed,
        parent=version.ref,
        config={**version.manifest.get("config", {}), "review": config.model_dump(mode="json")},
        funnel=funnel,
        label_set=version.label_set,
        description=(
            f"{version.ref} after human review in Argilla: {totals['reviewed']} of {totals['sampled']} sampled rows "
            f"reviewed, {totals['rejected']} rejected, {totals['corrected']} corrected."
        ),
        extra_files={REVIEW_REPORT_FILE: (json.dumps(report, indent=2) + "\n").encode("utf-8")},
    )
    state = read_state(version) or {"version": version.ref, "argilla_dataset": dataset.name}
    pulled = {"ref": child.ref, "reviewed": totals["reviewed"], "at": child.manifest["created_at"]}
    _write_state(version, {**state, "pulls": [*state.get("pulls", []), pulled]})
    return child
