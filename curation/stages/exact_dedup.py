"""Exact duplicates after normalisation (case, punctuation, whitespace); the best-scored copy stays."""

from __future__ import annotations

import polars as pl

from curation.config import ExactDedupConfig
from curation.stages.base import Stage, active, keep_rank
from curation.text import joined, normalize


class ExactDedup(Stage):
    def __init__(self, config: ExactDedupConfig | None = None) -> None:
        super().__init__()
        self.config = config or ExactDedupConfig()
        self.name = self.config.name or "exact_dedup"

    @property
    def required_columns(self) -> tuple[str, ...]:
        return ("id", *self.config.columns)

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        text = joined(self.config.columns)
        rank = keep_rank(frame, self.config.keep_order, text)
        work = frame.select(
            pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"),
            pl.col("id").cast(pl.String),
            normalize(text).hash().alias("_key"),
            pl.Series("_rank", rank),
            # rows with no text at all are the heuristics' business, not duplicates of each other
            (pl.Series(active(frame)) & (normalize(text) != "")).alias("_active"),
        )
        keepers = (
            work.filter("_active")
            .sort("_rank")
            .group_by("_key", maintain_order=True)
            .agg(pl.col("_row").first().alias("_keeper"), pl.col("id").first().alias("_keeper_id"))
        )
        marked = work.join(keepers, on="_key", how="left").sort("_row")
        duplicate = (marked["_active"] & (marked["_row"] != marked["_keeper"])).fill_null(False)
        reason = marked.select(pl.format("exact_duplicate: of {}", pl.col("_keeper_id")))[:, 0]
        return self.drop(frame, duplicate, reason)
