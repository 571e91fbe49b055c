"""Which kept rows go to the annotators: a stratified, reproducible sample.

Strata are origin x quantile bucket of every watched score column present, with
rows allocated proportionally to stratum size (largest remainder). On top of that
the rows nearest each filter threshold (highest entropy, lowest judge score, lowest
consistency among the kept rows) are always included: they are the filters' closest
calls, where a wrong threshold shows first. Rows are ordered inside a stratum by a
seeded hash of their id, so the same version and config always give the same sample.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

import numpy as np
import polars as pl

Direction = Literal["high", "low"]
# Which end of each score column sits next to its filter's threshold among the kept rows.
DEFAULT_WATCH: dict[str, Direction] = {"judge_score": "low", "mean_entropy": "high", "consistency": "low"}
MISSING_BUCKET = "missing"


def watched_columns(frame: pl.DataFrame, columns: Iterable[str]) -> list[str]:
    """Those of `columns` this frame has, numeric and not entirely null."""
    return [
        column
        for column in columns
        if column in frame.columns and frame[column].dtype.is_numeric() and frame[column].is_not_null().any()
    ]


def sample_size(kept_rows: int, fraction: float, min_rows: int | None, max_rows: int | None) -> int:
    size = round(kept_rows * fraction)
    if min_rows is not None:
        size = max(size, min_rows)
    if max_rows is not None:
        size = min(size, max_rows)
    return min(size, kept_rows)


def bucket_edges(values: pl.Series, buckets: int) -> list[float]:
    """Inner quantile edges of a score column (duplicates removed: ties make fewer buckets)."""
    finite = values.drop_nulls().drop_nans().cast(pl.Float64).to_numpy()
    if finite.size == 0:
        return []
    return sorted(set(np.quantile(finite, np.linspace(0, 1, buckets + 1)[1:-1]).round(6).tolist()))


def bucket_labels(values: pl.Series, edges: list[float]) -> pl.Series:
    """Readable bucket of each value: 'q1 <= 0.41', 'q2 (0.41, 0.73]', 'q3 > 0.73'; nulls are 'missing'."""
    if not edges:
        names = ["all"]
    else:
        names = [f"q1 <= {_fmt(edges[0])}"]
        names += [f"q{i + 2} ({_fmt(lo)}, {_fmt(hi)}]" for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))]
        names.append(f"q{len(edges) + 1} > {_fmt(edges[-1])}")
    numbers = values.cast(pl.Float64).fill_nan(None).to_numpy()
    index = np.searchsorted(np.asarray(edges, dtype=float), np.nan_to_num(numbers, nan=0.0), side="left")
    labels = [names[i] for i in index]
    return pl.Series(values.name, labels, dtype=pl.String).zip_with(
        pl.Series(~np.isnan(numbers)), pl.Series([MISSING_BUCKET] * len(labels), dtype=pl.String)
    )


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def seeded_order(ids: pl.Series, seed: int) -> pl.Series:
    """A reproducible pseudo-random key per id (sha256, stable across machines and versions)."""
    return pl.Series("_order", [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:16] for i in ids], dtype=pl.String)


def largest_remainder(sizes: list[int], total: int) -> list[int]:
    """Split `total` across strata proportionally to `sizes` (Hamilton's method), never above a size."""
    available = sum(sizes)
    total = min(total, available)
    if total <= 0 or available == 0:
        return [0] * len(sizes)
    quotas = [size * total / available for size in sizes]
    counts = [int(q) for q in quotas]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(quotas[i] - counts[i]), -sizes[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def stratified_sample(
    kept: pl.DataFrame,
    *,
    size: int,
    watch: dict[str, Direction],
    boundary_rows: int,
    buckets: int,
    seed: int,
) -> pl.DataFrame:
    """The sampled rows of `kept` with a `sample_reason` column ('nearest <column> threshold' or 'stratum ...')."""
    columns = watched_columns(kept, watch)
    frame = kept.with_columns(seeded_order(kept["id"], seed))
    strata = [pl.col("origin")]
    for column in columns:
        frame = frame.with_columns(
            bucket_labels(frame[column], bucket_edges(frame[column], buckets)).alias(f"_b_{column}")
        )
        strata.append(pl.col(f"_b_{column}"))
    frame = frame.with_columns(pl.concat_str(strata, separator=" | ").alias("_stratum"))

    boundary: dict[str, str] = {}
    for column in columns:
        nearest = (
            frame.filter(pl.col(column).is_not_null() & ~pl.col(column).cast(pl.Float64).is_nan())
            .sort([column, "_order"], descending=[watch[column] == "high", False])
            .head(boundary_rows)["id"]
        )
        for row_id in nearest:
            boundary.setdefault(row_id, f"nearest {column} threshold")

    pool = frame.filter(~pl.col("id").is_in(list(boundary)))
    sizes = pool.group_by("_stratum").len().sort("_stratum")
    allocation = largest_remainder(sizes["len"].to_list(), size - len(boundary))
    quota = pl.DataFrame({"_stratum": sizes["_stratum"], "_quota": allocation}, schema_overrides={"_quota": pl.Int64})
    drawn = (
        pool.join(quota, on="_stratum")
        .with_columns(pl.col("_order").rank("ordinal").over("_stratum").alias("_position"))
        .filter(pl.col("_position") <= pl.col("_quota"))
        .with_columns(("stratum " + pl.col("_stratum")).alias("sample_reason"))
    )
    chosen = frame.filter(pl.col("id").is_in(list(boundary))).with_columns(
        pl.col("id").replace_strict(boundary, return_dtype=pl.String).alias("sample_reason")
    )
    helpers = [c for c in drawn.columns if c.startswith("_")]
    return (
        pl.concat([chosen, drawn.drop(["_quota", "_position"])], how="vertical")
        .sort("_order")
        .drop([c for c in helpers if c in chosen.columns])
    )
