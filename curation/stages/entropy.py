"""Teacher uncertainty: mean per-token entropy (nats) of the chosen sample, from its stored top-k logprobs.

The top-k alternatives do not cover the whole vocabulary, so the mass they leave out,
1 - sum(top-k probabilities), counts as one more outcome. That bucket stands for many
tokens, so the result is a lower bound on the true entropy, but a consistent one. For
classification rows the entropy of `label_probs` is used instead. Computed on exploded
lists with polars, no row loops.
"""

from __future__ import annotations

import polars as pl

from curation.config import EntropyConfig
from curation.stages.base import Scope, Stage, StageInputError, active, chosen_samples


def _plogp(p: pl.Expr) -> pl.Expr:
    return pl.when(p > 0).then(p * p.log()).otherwise(0.0)


def token_entropy(top_logprobs: pl.Series) -> pl.Series:
    """Mean over positions of the entropy of top-k probabilities plus the residual bucket; null without data."""
    rows = top_logprobs.len()
    positions = (
        pl.DataFrame({"lp": top_logprobs})
        .with_row_index("_row")
        .explode("lp")
        .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("_row").alias("_pos"))
        .filter(pl.col("lp").list.len() > 0)  # a position without alternatives carries no information
        .explode("lp")
        .with_columns(pl.col("lp").cast(pl.Float64).exp().alias("p"))
        .group_by("_row", "_pos")
        .agg(pl.col("p").sum().alias("covered"), _plogp(pl.col("p")).sum().alias("plogp"))
        .with_columns((1.0 - pl.col("covered")).clip(0.0, 1.0).alias("residual"))
        .with_columns((-(pl.col("plogp") + _plogp(pl.col("residual")))).alias("entropy"))
        .group_by("_row")
        .agg(pl.col("entropy").mean())
    )
    index = pl.DataFrame({"_row": pl.int_range(rows, dtype=pl.UInt32, eager=True)})
    return index.join(positions, on="_row", how="left").sort("_row")["entropy"]


def label_entropy(label_probs: pl.Series) -> pl.Series:
    """Entropy of each row's class distribution; null where there is none."""
    return (
        pl.DataFrame({"p": label_probs})
        .select(
            pl.when(pl.col("p").list.len() > 0)
            .then(-pl.col("p").list.eval(_plogp(pl.element().cast(pl.Float64))).list.sum())
            .alias("entropy")
        )
        .to_series()
    )


class Entropy(Stage):
    def __init__(self, config: EntropyConfig | None = None) -> None:
        super().__init__()
        self.config = config or EntropyConfig()
        self.name = self.config.name or "entropy"

    @property
    def scope(self) -> Scope:
        """A quantile cut looks at every kept row; an absolute one at each row alone."""
        return Scope.GLOBAL if self.config.max_quantile is not None else Scope.ROW

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        if "samples" not in frame.columns and "label_probs" not in frame.columns:
            raise StageInputError(
                f"stage '{self.name}' needs column 'samples' (top-k logprobs) or 'label_probs', which the frame lacks"
            )
        sampled = pl.Series("e", [None] * frame.height, dtype=pl.Float64)
        if "samples" in frame.columns:
            sampled = token_entropy(chosen_samples(frame, ["top_logprobs"])["top_logprobs"])
        if "label_probs" in frame.columns:
            sampled = label_entropy(frame["label_probs"]).fill_null(sampled)
        frame = frame.with_columns(sampled.alias("mean_entropy"))
        limit, label = self._limit(frame)
        if limit is None:
            return frame
        return self.drop(
            frame,
            pl.col("mean_entropy") > limit,
            pl.format("high_entropy: {} > {}", pl.col("mean_entropy").round(3), pl.lit(label)),
        )

    def _limit(self, frame: pl.DataFrame) -> tuple[float | None, str]:
        """The effective cut: the lower of the absolute threshold and the quantile of rows still kept."""
        candidates = []
        if self.config.max_entropy is not None:
            candidates.append((self.config.max_entropy, f"{self.config.max_entropy:g}"))
        if self.config.max_quantile is not None:
            kept = frame.filter(active(frame))["mean_entropy"].drop_nulls()
            if len(kept):
                value = float(kept.quantile(self.config.max_quantile, interpolation="linear"))
                candidates.append((value, f"q{self.config.max_quantile:g}={value:.3f}"))
        return min(candidates) if candidates else (None, "")
