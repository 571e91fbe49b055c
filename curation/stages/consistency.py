"""Self-consistency (Wang et al., 2022): do the teacher's n samples for a prompt agree, and keep the majority.

- classification: share of samples whose parsed label is the majority label;
- final answer (`factory.tasks.parsing`'s marker, last match: "Final answer: X",
  "The answer is X"): share of samples whose normalised answer is the majority answer;
- open-ended: mean pairwise similarity of the samples. The default
  (`similarity: embedding_jaccard`) is the mean of two views of a pair: the cosine
  of offline MiniLM sentence embeddings, which sees rewording, and word Jaccard,
  which sees the exact names and numbers that embeddings blur; `embedding` and
  `jaccard` use one alone. On MRPC (pairs people labelled paraphrase or not) the
  mean separated best on the train split; each measure's default `min_similarity`
  is the threshold with the largest TPR - FPR there. `benchmarks/consistency_mrpc.py`
  recomputes both and reports AUC, precision and recall on the test split.

Unparsable samples count against agreement. For the two answer methods the row's
`response` becomes a sample holding the majority answer (one that finished on its
own, then the best mean token logprob, then the earliest), and `chosen_sample` its
index, so the consistency score describes the text that is kept; among answers
tied for the majority, the one with the best such sample wins. Rows an earlier
stage dropped keep their response. Rows with fewer than two samples get no score
(null) and are never dropped here. All of it runs on exploded samples with polars.
"""

from __future__ import annotations

import re

import numpy as np
import polars as pl

from curation.config import ConsistencyConfig
from curation.stages.base import Scope, Stage
from curation.stages.semantic_dedup import Encoder, sentence_transformer_encoder
from factory.tasks.parsing import final_answer_expr

NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"


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
    def __init__(self, config: ConsistencyConfig | None = None, encoder: Encoder | None = None) -> None:
        super().__init__()
        self.config = config or ConsistencyConfig()
        self.name = self.config.name or "consistency"
        self._encoder = encoder

    @property
    def scope(self) -> Scope:
        """Row-local unless the label set is read off the whole frame (see `_labels`)."""
        if self.config.labels or self.config.mode in ("final_answer", "open"):
            return Scope.ROW
        return Scope.GLOBAL

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = sentence_transformer_encoder(self.config.model, self.config.batch_size)
        return self._encoder

    @property
    def required_columns(self) -> tuple[str, ...]:
        return ("samples",)

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        samples = (
            frame.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"), "samples")
            .explode("samples")
            .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("_row").alias("_sample"))
            .filter(pl.col("samples").is_not_null())
            .select(
                "_row",
                "_sample",
                pl.col("samples").struct.field("text").fill_null("").alias("text"),
                (pl.col("samples").struct.field("finish_reason") == "stop").fill_null(False).alias("_stopped"),
                pl.col("samples").struct.field("logprobs").list.mean().alias("_mean_logprob"),
            )
        )
        labels = self._labels(frame)
        method = self._methods(samples, labels)
        samples = samples.join(method, on="_row", how="inner")
        answers = samples.filter(pl.col("method") != "similarity").with_columns(
            pl.when(pl.col("method") == "label")
            .then(parse_label(pl.col("text"), labels) if labels else pl.lit(None, dtype=pl.String))
            .otherwise(normalize_answer(final_answer_expr(pl.col("text"))))
            .alias("answer")
        )
        open_samples = samples.filter(pl.col("method") == "similarity")
        similarity = self._open_similarity(open_samples)
        scores = pl.concat([self._majority_share(answers), similarity], how="vertical")
        rows = pl.DataFrame({"_row": pl.int_range(frame.height, dtype=pl.Int64, eager=True)})
        scored = (
            rows.join(scores, on="_row", how="left")
            .join(method, on="_row", how="left")
            .join(self._majority_sample(answers), on="_row", how="left")
            .sort("_row")
        )
        frame = frame.with_columns(
            scored["consistency"].alias("consistency"),
            pl.when(scored["consistency"].is_not_null()).then(scored["method"]).alias("consistency_method"),
        )
        frame = self._keep_majority_sample(frame, scored)
        limits = [
            ("similarity", self.config.min_similarity),
            ("label", self.config.min_consistency),
            ("final_answer", self.config.min_consistency),
        ]
        limit = pl.lit(None, dtype=pl.Float64)
        for method_name, value in limits:
            if value is not None:
                limit = pl.when(pl.col("consistency_method") == method_name).then(pl.lit(value)).otherwise(limit)
        return self.drop(
            frame,
            pl.col("consistency") < limit,
            pl.format(
                "low_consistency: {} {} < {}",
                pl.col("consistency_method"),
                pl.col("consistency").round(2),
                limit,
            ),
        )

    @staticmethod
    def _keep_majority_sample(frame: pl.DataFrame, scored: pl.DataFrame) -> pl.DataFrame:
        """`response` and `chosen_sample` become the majority sample on rows still kept."""
        replace = scored["_chosen"].is_not_null() & frame["drop_stage"].is_null()
        updates = [
            pl.when(replace)
            .then(scored["_chosen"])
            .otherwise(pl.col("chosen_sample"))
            .cast(pl.Int32)
            .alias("chosen_sample"),
            pl.when(replace).then(scored["_chosen_text"]).otherwise(pl.col("response")).alias("response"),
        ]
        if "chosen_sample" not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.Int32).alias("chosen_sample"))
        if "response" not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias("response"))
        if "final_answer" in frame.columns:  # respond's chain-of-thought column describes the kept text
            updates.append(
                pl.when(replace)
                .then(final_answer_expr(pl.lit(scored["_chosen_text"])))
                .otherwise(pl.col("final_answer"))
                .alias("final_answer")
            )
        return frame.with_columns(updates)

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
            pl.len().alias("n"), final_answer_expr(pl.col("text")).is_not_null().all().alias("all_answered")
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
        """Share of a row's samples that hold its most common answer (unparsed samples count against)."""
        return answers.group_by("_row").agg(
            (pl.col("answer").drop_nulls().unique_counts().max().fill_null(0) / pl.len()).alias("consistency")
        )

    @staticmethod
    def _majority_sample(answers: pl.DataFrame) -> pl.DataFrame:
        """Per row, the best sample among those holding a majority answer: `_chosen` index, `_chosen_text`."""
        voted = answers.filter(pl.col("answer").is_not_null()).with_columns(
            pl.len().over("_row", "answer").alias("_votes")
        )
        return (
            voted.sort(
                ["_row", "_votes", "_stopped", "_mean_logprob", "_sample"],
                descending=[False, True, True, True, False],
                nulls_last=True,
            )
            .unique("_row", keep="first", maintain_order=True)
            .select("_row", pl.col("_sample").alias("_chosen"), pl.col("text").alias("_chosen_text"))
        )

    def _open_similarity(self, open_rows: pl.DataFrame) -> pl.DataFrame:
        """`_row`, `consistency` for open-ended rows under the configured measure."""
        measure = self.config.similarity
        if measure == "jaccard":
            return self._jaccard_similarity(open_rows)
        if measure == "embedding":
            return self._embedding_similarity(open_rows)
        both = self._embedding_similarity(open_rows).join(
            self._jaccard_similarity(open_rows), on="_row", suffix="_jaccard"
        )
        return both.select("_row", ((pl.col("consistency") + pl.col("consistency_jaccard")) / 2).alias("consistency"))

    def _embedding_similarity(self, open_rows: pl.DataFrame) -> pl.DataFrame:
        """Mean pairwise cosine of the samples' unit embeddings: for a row's n unit vectors with sum s,
        the n(n-1) ordered pairs' dot products add up to |s|^2 - n."""
        if open_rows.height == 0:
            return pl.DataFrame(schema={"_row": pl.Int64, "consistency": pl.Float64})
        open_rows = open_rows.sort("_row", "_sample")
        vectors = self.encoder(open_rows["text"].to_list()).astype(np.float64)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)  # the identity needs unit length
        rows = open_rows["_row"].to_numpy()
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        sums = np.add.reduceat(vectors, starts, axis=0)
        n = np.diff(np.r_[starts, len(rows)]).astype(np.float64)
        mean_cosine = ((sums**2).sum(axis=1) - n) / (n * (n - 1))
        # samples pointing apart agree no more than unrelated ones: as for the other scores, 0 is no agreement
        return pl.DataFrame({"_row": rows[starts], "consistency": mean_cosine.clip(0.0, 1.0)})

    @staticmethod
    def _jaccard_similarity(open_rows: pl.DataFrame) -> pl.DataFrame:
        """Mean pairwise word Jaccard over every pair of samples of a row."""
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
