"""Self-consistency: do the teacher's n samples for a prompt agree with each other?

- classification: share of samples whose parsed label is the majority label;
- final answer ("Final answer: X", "The answer is X", \\boxed{X}, else the last number):
  share of samples whose normalised answer is the majority answer;
- open-ended: mean pairwise token Jaccard similarity of the samples.

Unparsable samples count against agreement. Rows with fewer than two samples get no
score (null) and are never dropped here. All of it runs on exploded samples with polars.
"""

from __future__ import annotations

import re

import polars as pl

from curation.config import ConsistencyConfig
from curation.stages.base import Scope, Stage

ANSWER_PATTERNS = [
    r"(?i)final answer\s*(?:is)?\s*[:：]?\s*([^\n]+)",
    r"(?i)the answer is\s*[:：]?\s*([^\n]+)",
    r"\\boxed\{([^{}]*)\}",
]
NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"


def explicit_answer(text: pl.Expr) -> pl.Expr:
    return pl.coalesce([text.str.extract(pattern, 1) for pattern in ANSWER_PATTERNS])


def normalize_answer(answer: pl.Expr) -> pl.Expr:
    """Numbers compare as numbers ('$1,000.0' == '1000'); other answers by lowercased words."""
    cleaned = answer.str.replace_all(r"[*_`]", "").str.strip_chars()
    number = cleaned.str.extract(r"^(" + NUMBER + r")(?:\s|$|[.,;:!)])", 1).str.replace_all(r"[$,]", "")
    number = number.str.replace(r"(\.\d*?)0+$", "${1}").str.replace(r"\.$", "")
    words = cleaned.str.to_lowercase().str.replace_all(r"[\p{P}\p{S}]+", " ").str.replace_all(r"\s+", " ")
    return pl.coalesce([number, words.str.strip_chars()]).replace("", None)


def parse_label(text: pl.Expr, labels: list[str]) -> pl.Expr:
    """The label mentioned first in the text (whole words, case-insensitive); longer labels win ties."""
    ordered = sorted(labels, key=len, reverse=True)
    positions = [
        text.str.find(r"(?i)(?:^|[^\w])" + re.escape(label) + r"(?:[^\w]|$)").alias(f"_p{i}")
        for i, label in enumerate(ordered)
    ]
    first = pl.min_horizontal(positions)
    return pl.coalesce([pl.when(p == first).then(pl.lit(label)) for p, label in zip(positions, ordered)])


class Consistency(Stage):
    def __init__(self, config: ConsistencyConfig | None = None) -> None:
        super().__init__()
        self.config = config or ConsistencyConfig()
        self.name = self.config.name or "consistency"

    @property
    def scope(self) -> Scope:
        """Row-local unless the label set is read off the whole frame (see `_labels`)."""
        if self.config.labels or self.config.mode in ("final_answer", "open"):
            return Scope.ROW
        return Scope.GLOBAL

    @property
    def required_columns(self) -> tuple[str, ...]:
        return ("samples",)

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        samples = (
            frame.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"), "samples")
            .explode("samples")
            .filter(pl.col("samples").is_not_null())
            .select("_row", pl.col("samples").struct.field("text").fill_null("").alias("text"))
            .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("_row").alias("_sample"))
        )
        labels = self._labels(frame)
        method = self._methods(samples, labels)
        samples = samples.join(method, on="_row", how="left")
        answers = samples.with_columns(
            pl.when(pl.col("method") == "label")
            .then(parse_label(pl.col("text"), labels) if labels else pl.lit(None, dtype=pl.String))
            .when(pl.col("method") == "final_answer")
            .then(
                normalize_answer(
                    pl.coalesce(explicit_answer(pl.col("text")), pl.col("text").str.extract_all(NUMBER).list.last())
                )
            )
            .alias("answer")
        )
        scores = pl.concat(
            [self._majority_share(answers.filter(pl.col("method") != "similarity")), self._similarity(samples)],
            how="vertical",
        )
        rows = pl.DataFrame({"_row": pl.int_range(frame.height, dtype=pl.Int64, eager=True)})
        scored = rows.join(scores, on="_row", how="left").join(method, on="_row", how="left").sort("_row")
        frame = frame.with_columns(
            scored["consistency"].alias("consistency"),
            pl.when(scored["consistency"].is_not_null()).then(scored["method"]).alias("consistency_method"),
        )
        if self.config.min_consistency is None:
            return frame
        return self.drop(
            frame,
            pl.col("consistency") < self.config.min_consistency,
            pl.format(
                "low_consistency: {} {} < {}",
                pl.col("consistency_method"),
                pl.col("consistency").round(2),
                pl.lit(self.config.min_consistency),
            ),
        )

    def _labels(self, frame: pl.DataFrame) -> list[str]:
        if self.config.labels:
            return self.config.labels
        if self.config.mode in ("auto", "classification") and "label" in frame.columns:
            return frame["label"].drop_nulls().unique().sort().to_list()
        return []

    def _methods(self, samples: pl.DataFrame, labels: list[str]) -> pl.DataFrame:
        """Which agreement measure each row gets (only rows with at least two samples)."""
        mode = self.config.mode
        per_row = samples.group_by("_row").agg(
            pl.len().alias("n"), explicit_answer(pl.col("text")).is_not_null().all().alias("all_answered")
        )
        if mode == "classification" or (mode == "auto" and labels):
            method = pl.lit("label")
        elif mode == "final_answer":
            method = pl.lit("final_answer")
        elif mode == "open":
            method = pl.lit("similarity")
        else:
            method = pl.when(pl.col("all_answered")).then(pl.lit("final_answer")).otherwise(pl.lit("similarity"))
        return per_row.filter(pl.col("n") >= 2).select("_row", "n", method.alias("method"))

    @staticmethod
    def _majority_share(answers: pl.DataFrame) -> pl.DataFrame:
        majority = (
            answers.filter(pl.col("answer").is_not_null())
            .group_by("_row", "answer")
            .len()
            .group_by("_row")
            .agg(pl.col("len").max().alias("agree"))
        )
        return (
            answers.select("_row", "n")
            .unique("_row")
            .join(majority, on="_row", how="left")
            .select("_row", (pl.col("agree").fill_null(0) / pl.col("n")).alias("consistency"))
        )

    @staticmethod
    def _similarity(samples: pl.DataFrame) -> pl.DataFrame:
        """Mean pairwise token Jaccard over every pair of samples of a row."""
        open_rows = samples.filter(pl.col("method") == "similarity")
        tokens = (
            open_rows.select(
                "_row", "_sample", pl.col("text").str.to_lowercase().str.extract_all(r"\w+").alias("token")
            )
            .explode("token")
            .drop_nulls("token")
            .unique()
        )
        sizes = tokens.group_by("_row", "_sample").len("size")
        pairs = (
            open_rows.select("_row", "_sample")
            .join(open_rows.select("_row", pl.col("_sample").alias("_other")), on="_row")
            .filter(pl.col("_sample") < pl.col("_other"))
        )
        shared = (
            tokens.join(tokens.rename({"_sample": "_other"}), on=["_row", "token"])
            .filter(pl.col("_sample") < pl.col("_other"))
            .group_by("_row", "_sample", "_other")
            .len("shared")
        )
        return (
            pairs.join(shared, on=["_row", "_sample", "_other"], how="left")
            .join(sizes, on=["_row", "_sample"], how="left")
            .join(sizes.rename({"_sample": "_other", "size": "other_size"}), on=["_row", "_other"], how="left")
            .with_columns(pl.col("shared", "size", "other_size").fill_null(0))
            .with_columns(
                pl.when(pl.col("size") + pl.col("other_size") == 0)
                .then(1.0)  # two empty samples agree perfectly
                .otherwise(pl.col("shared") / (pl.col("size") + pl.col("other_size") - pl.col("shared")))
                .alias("jaccard")
            )
            .group_by("_row")
            .agg(pl.col("jaccard").mean().alias("consistency"))
        )
