"""Apply annotators' verdicts to a version and measure them.

Several annotators on one record combine as follows (`combine_responses`):
- **any reject wins**: a spot check exists to catch errors, so one reviewer's
  credible objection removes the row (their notes become the drop reason);
- otherwise a correction wins over a plain accept; when accepting reviewers give
  different corrections, the first reviewer's by username is applied (all stay
  visible in Argilla);
- the rating is the median of the reviewers' ratings, rounded half to even (4.5 -> 4);
- `review.reviewer` lists every reviewer, `review.note` every note ("name: note").
A correction identical to the original (e.g. an untouched pre-filled suggestion) is
no correction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from curation.config import ReviewConfig
from curation.review_sample import bucket_edges, bucket_labels, watched_columns
from curation.stages.base import Scope, Stage
from factory.schema import REVIEW_TYPE

if TYPE_CHECKING:
    from curation.store import DatasetVersion

REVIEW_REPORT_FILE = "review.json"
REVIEW_STAGE = "review"
REJECTED_REASON = "rejected_by_reviewer"
QUESTIONS = ("verdict", "quality", "correction", "note")


def _judge_stage(manifest_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The judge stage's settings in the config a version was published with, if any."""
    stages = (manifest_config or {}).get("curation") or []
    return next((s for s in stages if isinstance(s, dict) and s.get("stage") == "judge"), None)


def judge_range(
    frame: pl.DataFrame,
    override: tuple[float, float] | None = None,
    manifest_config: dict[str, Any] | None = None,
) -> tuple[float, float] | None:
    """The scale of `judge_score`: given; else the judge stage's rubric (1-5 UltraFeedback, 1-10 ours);
    else inferred from the values (0-1, 1-5, 0/1-10, else min-max)."""
    if override is not None:
        return (float(override[0]), float(override[1]))
    if "judge_score" not in frame.columns:
        return None
    values = frame["judge_score"].cast(pl.Float64).drop_nulls().drop_nans()
    if values.len() == 0:
        return None
    stage = _judge_stage(manifest_config)
    if stage is not None and stage.get("rubric") in ("ultrafeedback", "score_1_10"):
        return (1.0, 5.0) if stage["rubric"] == "ultrafeedback" else (1.0, 10.0)
    low, high = float(values.min()), float(values.max())
    if low >= 0 and high <= 1:
        return (0.0, 1.0)
    if low >= 1 and high <= 5:
        return (1.0, 5.0)
    if low >= 0 and high <= 10:
        return (0.0 if low < 1 else 1.0, 10.0)
    return (low, high)


def judge_threshold(
    scale: tuple[float, float], override: float | None, manifest_config: dict[str, Any] | None = None
) -> float:
    """The score at/above which the judge accepts: given; else the judge stage's min_score; else mid-scale."""
    if override is not None:
        return override
    stage = _judge_stage(manifest_config)
    if stage is not None and isinstance(stage.get("min_score"), (int, float)):
        return float(stage["min_score"])
    return (scale[0] + scale[1]) / 2


def per_reviewer(responses: pl.DataFrame, originals: pl.DataFrame) -> pl.DataFrame:
    """One row per (record, reviewer) with verdict, quality, correction, note and the record's original target.

    `responses` has id, reviewer, question, value; `originals` has id, original.
    """
    wide = responses.pivot(on="question", index=["id", "reviewer"], values="value", aggregate_function="first")
    wide = wide.with_columns([pl.lit(None, dtype=pl.String).alias(q) for q in QUESTIONS if q not in wide.columns])
    correction = pl.col("correction").str.strip_chars()
    return wide.join(originals, on="id", how="left").with_columns(
        pl.when((correction == "") | (correction == pl.col("original").str.strip_chars()))
        .then(None)
        .otherwise(pl.col("correction"))
        .alias("correction"),
        pl.col("quality").cast(pl.Int32, strict=False),
        pl.when(pl.col("note").str.strip_chars() == "").then(None).otherwise(pl.col("note")).alias("note"),
    )


def combine_responses(reviews: pl.DataFrame) -> pl.DataFrame:
    """One verdict per record from `per_reviewer` rows (rule in the module docstring)."""
    labelled_note = pl.concat_str([pl.col("reviewer"), pl.lit(": "), pl.col("note")])
    combined = (
        reviews.sort("id", "reviewer")
        .group_by("id", maintain_order=True)
        .agg(
            (pl.col("verdict") == "reject").any().alias("_rejected"),
            pl.col("reviewer").str.join(", ").alias("reviewer"),
            pl.len().alias("reviewers"),
            (pl.col("verdict").n_unique() == 1).alias("unanimous"),
            pl.col("quality").cast(pl.Float64).median().round(0).cast(pl.Int32).alias("rating"),
            pl.col("correction").filter(pl.col("verdict") == "accept").drop_nulls().first().alias("_correction"),
            pl.when(pl.len() == 1)
            .then(pl.col("note").first())
            .otherwise(labelled_note.drop_nulls().str.join("; "))
            .alias("note"),
            pl.col("original").first(),
        )
    )
    return combined.with_columns(
        pl.when(pl.col("_rejected"))
        .then(pl.lit("rejected"))
        .when(pl.col("_correction").is_not_null())
        .then(pl.lit("corrected"))
        .otherwise(pl.lit("accepted"))
        .alias("status"),
        pl.when(pl.col("_rejected")).then(None).otherwise(pl.col("_correction")).alias("correction"),
        pl.when(pl.col("note") == "").then(None).otherwise(pl.col("note")).alias("note"),
    ).drop("_rejected", "_correction")


class ReviewVerdicts(Stage):
    """Annotators' verdicts as a curation stage: rejected rows are dropped (`drop_stage` review,
    `drop_reason` rejected_by_reviewer[: note]) through `Stage.drop`; corrections replace the
    response or label (and its soft targets) and keep the original in `review.original`;
    `review` records each verdict. After `apply`, `report` holds the review report.

    `manifest_config` (the reviewed version's manifest config) supplies the judge's scale and threshold.
    """

    name = REVIEW_STAGE
    scope = Scope.GLOBAL  # the report compares verdicts across all rows

    def __init__(
        self,
        responses: pl.DataFrame,
        *,
        classification: bool,
        label_set: list[str] | None,
        sampled_ids: list[str],
        config: ReviewConfig,
        manifest_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.responses = responses
        self.classification = classification
        self.label_set = label_set
        self.sampled_ids = sampled_ids
        self.config = config
        self.manifest_config = manifest_config
        self.report: dict[str, Any] | None = None

    @property
    def target(self) -> str:
        return "label" if self.classification else "response"

    @property
    def required_columns(self) -> tuple[str, ...]:
        return ("id", self.target)

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        target = self.target
        verdicts = combine_responses(per_reviewer(self.responses, frame.select("id", pl.col(target).alias("original"))))
        kept_before = frame.filter(pl.col("drop_stage").is_null())
        joined = frame.join(verdicts.drop("original"), on="id", how="left").with_columns(
            pl.col(target).alias("_original")
        )
        corrected = pl.col("status") == "corrected"
        note_line = pl.col("note").str.replace_all(r"\s+", " ").str.strip_chars()
        reason = (
            pl.when(note_line.is_not_null() & (note_line != ""))
            .then(pl.concat_str([pl.lit(f"{REJECTED_REASON}: "), note_line]))
            .otherwise(pl.lit(REJECTED_REASON))
        )
        joined = self.drop(joined, pl.col("status") == "rejected", reason)
        updates = [pl.when(corrected).then(pl.col("correction")).otherwise(pl.col(target)).alias(target)]
        if self.classification and self.label_set:
            one_hot = {label: [float(label == other) for other in self.label_set] for label in self.label_set}
            updates.append(
                pl.when(corrected)
                .then(pl.col("correction").replace_strict(one_hot, default=None, return_dtype=pl.List(pl.Float32)))
                .otherwise(pl.col("label_probs"))
                .alias("label_probs")
            )
        if not self.classification and "samples" in frame.columns:
            # The teacher's token logprobs describe the replaced response: distilling them would
            # teach the error the reviewer fixed. The parent version keeps them.
            updates.append(pl.when(corrected).then(None).otherwise(pl.col("samples")).alias("samples"))
            if "chosen_sample" in frame.columns:  # the response is the reviewer's now, no sample's
                updates.append(pl.when(corrected).then(None).otherwise(pl.col("chosen_sample")).alias("chosen_sample"))
        review = pl.struct(
            pl.col("status"),
            pl.col("reviewer"),
            pl.col("rating").cast(pl.Int32),
            pl.col("correction"),
            pl.when(corrected).then(pl.col("_original")).otherwise(None).alias("original"),
            pl.col("note"),
        )
        previous = pl.col("review") if "review" in frame.columns else pl.lit(None)
        updates.append(
            pl.when(pl.col("status").is_not_null())
            .then(review)
            .otherwise(previous.cast(pl.from_arrow(_empty_review()).dtype))
            .alias("review")
        )
        reviewed = joined.with_columns(updates).select(
            frame.columns + (["review"] if "review" not in frame.columns else [])
        )
        self.report = _report(kept_before, verdicts, self.sampled_ids, self.config, self.manifest_config)
        return reviewed


def _empty_review():
    import pyarrow as pa

    return pa.array([], type=REVIEW_TYPE)


def _rates(frame: pl.DataFrame, by: str) -> list[dict[str, Any]]:
    table = (
        frame.group_by(by)
        .agg(
            pl.len().alias("reviewed"),
            (pl.col("status") == "rejected").sum().alias("rejected"),
            (pl.col("status") == "corrected").sum().alias("corrected"),
        )
        .with_columns((pl.col("rejected") / pl.col("reviewed")).round(4).alias("rejection_rate"))
        .sort(by)
    )
    return table.rename({by: "group"}).to_dicts()


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.size < 3:
        return None
    ranks_a = pl.Series(a).rank("average").to_numpy()
    ranks_b = pl.Series(b).rank("average").to_numpy()
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return None
    return round(float(np.corrcoef(ranks_a, ranks_b)[0, 1]), 4)


def _report(
    kept: pl.DataFrame,
    verdicts: pl.DataFrame,
    sampled_ids: list[str],
    config: ReviewConfig,
    manifest_config: dict[str, Any] | None,
) -> dict[str, Any]:
    reviewed = kept.join(verdicts.select("id", "status", "rating", "reviewers", "unanimous"), on="id", how="inner")
    counts = {status: int((verdicts["status"] == status).sum()) for status in ("accepted", "corrected", "rejected")}
    report: dict[str, Any] = {
        "totals": {"sampled": len(sampled_ids), "reviewed": verdicts.height, **counts},
        "rule": "any reject wins; else the first accepting reviewer's correction (by username); rating = median",
        "by_origin": _rates(reviewed, "origin"),
        "by_bucket": {},
    }
    report["totals"]["pending"] = report["totals"]["sampled"] - verdicts.height
    report["totals"]["rejection_rate"] = round(counts["rejected"] / verdicts.height, 4) if verdicts.height else None
    for column in watched_columns(kept, config.watch):
        edges = bucket_edges(kept[column], config.buckets)
        bucketed = reviewed.with_columns(bucket_labels(reviewed[column], edges).alias("_bucket"))
        report["by_bucket"][column] = _rates(bucketed, "_bucket")

    multi = verdicts.filter(pl.col("reviewers") >= 2)
    report["inter_annotator"] = {
        "records": multi.height,
        "unanimous_rate": round(float(multi["unanimous"].mean()), 4) if multi.height else None,
    }
    scale = judge_range(kept, config.judge_range, manifest_config)
    if scale is not None:
        threshold = judge_threshold(scale, config.judge_threshold, manifest_config)
        judged = reviewed.filter(pl.col("judge_score").is_not_null() & ~pl.col("judge_score").cast(pl.Float64).is_nan())
        judge_accepts = (judged["judge_score"] >= threshold).to_numpy()
        human_accepts = (judged["status"] != "rejected").to_numpy()
        rated = judged.filter(pl.col("rating").is_not_null())
        report["judge_agreement"] = {
            "judge_range": list(scale),
            "threshold": threshold,
            "records": judged.height,
            "agreement_rate": round(float((judge_accepts == human_accepts).mean()), 4) if judged.height else None,
            "both_accept": int((judge_accepts & human_accepts).sum()),
            "both_reject": int((~judge_accepts & ~human_accepts).sum()),
            "judge_accepts_human_rejects": int((judge_accepts & ~human_accepts).sum()),
            "judge_rejects_human_accepts": int((~judge_accepts & human_accepts).sum()),
            "rated": rated.height,
            "rating_judge_spearman": _spearman(
                rated["rating"].cast(pl.Float64).to_numpy(), rated["judge_score"].cast(pl.Float64).to_numpy()
            ),
        }
    return report


def review_report(version: DatasetVersion) -> dict[str, Any] | None:
    """The review report stored in a version published by `pull` (None for other versions)."""
    import json

    if REVIEW_REPORT_FILE not in version.manifest["files"]:
        return None
    return json.loads(version.read_bytes(REVIEW_REPORT_FILE).decode("utf-8"))
