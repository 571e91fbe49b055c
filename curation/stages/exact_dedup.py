"""Exact duplicates after normalisation (case, punctuation, whitespace); the best-scored copy stays."""

from __future__ import annotations

import numpy as np
import polars as pl

from curation.against import load_references
from curation.config import ExactDedupConfig
from curation.stages.base import Stage, active, keep_rank
from curation.store import DatasetStore
from curation.text import joined, normalize


class ExactDedup(Stage):
    def __init__(self, config: ExactDedupConfig | None = None) -> None:
        super().__init__()
        self.config = config or ExactDedupConfig()
        self.name = self.config.name or "exact_dedup"
        self.reference_store: DatasetStore | None = None  # where `against` refs resolve (default store if None)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return ("id", *self.config.columns)

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        text = joined(self.config.columns)
        frame = self.drop_published(frame, text)
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

    def drop_published(self, frame: pl.DataFrame, text: pl.Expr) -> pl.DataFrame:
        """Drop rows whose normalised text is a kept row of an `against` version."""
        c = self.config
        keys = frame.select(normalize(text).hash().alias("_key"), (normalize(text) != "").alias("_has_text"))
        for reference in load_references(c.against, c.columns, self.reference_store):
            known = reference.cached(
                f"exact-{'+'.join(c.columns)}-polars{pl.__version__}",
                lambda reference=reference: pl.select(normalize(pl.lit(reference.texts)).hash()).to_series().to_numpy(),
            )
            lookup = pl.DataFrame({"_key": known, "_ref": np.arange(len(known))}).unique("_key", keep="first")
            matched = keys.join(lookup, on="_key", how="left", maintain_order="left")["_ref"]
            hit = matched.is_not_null() & keys["_has_text"]
            names = reference.row_ref(matched.fill_null(0).to_numpy())
            frame = self.drop(frame, hit, pl.format("exact_duplicate: of {}", pl.lit(names)))
        return frame
