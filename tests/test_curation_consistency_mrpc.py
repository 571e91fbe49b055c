"""Open-mode consistency with the real offline MiniLM model on MRPC pairs people labelled (../shared/data)."""

from __future__ import annotations

import csv

import polars as pl
import pytest
from conftest import shared_data

from curation.config import ConsistencyConfig
from curation.stages import Consistency
from factory.schema import conform

pytestmark = pytest.mark.slow  # importing sentence-transformers alone takes ~10 s here


def mrpc_rows(per_class: int) -> pl.DataFrame:
    """The first `per_class` paraphrase and non-paraphrase pairs of MRPC test, as rows with two samples."""
    path = shared_data("mrpc", "msr_paraphrase_test.txt")
    with path.open(encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    pairs = pl.DataFrame({"label": [int(r[0]) for r in rows], "a": [r[3] for r in rows], "b": [r[4] for r in rows]})
    pairs = pl.concat([pairs.filter(pl.col("label") == k).head(per_class) for k in (0, 1)])
    frame = pairs.select(
        pl.format("pair{}", pl.int_range(pl.len())).alias("id"),
        pl.lit("Say it in your own words.").alias("instruction"),
        pl.lit("").alias("input"),
        pl.lit("import").alias("origin"),
        pl.concat_list(pl.struct(pl.col(c).alias("text")) for c in ("a", "b")).alias("samples"),
        "label",
    ).rename({"label": "paraphrase"})
    return pl.from_arrow(conform(frame))


def test_default_open_consistency_drops_mostly_non_paraphrases():
    import torch

    torch.set_num_threads(2)
    frame = mrpc_rows(per_class=100)
    out = Consistency(ConsistencyConfig(mode="open")).apply(frame)
    assert out["consistency_method"].unique().to_list() == ["similarity"]
    kept = out.filter(pl.col("drop_stage").is_null())
    dropped = out.filter(pl.col("drop_stage").is_not_null())
    assert kept.height and dropped.height
    # what the default cut drops is worse (more often not a paraphrase) than what it keeps
    assert kept["paraphrase"].mean() > dropped["paraphrase"].mean()
    # and on average paraphrases agree more than non-paraphrases
    means = dict(out.group_by("paraphrase").agg(pl.col("consistency").mean()).iter_rows())
    assert means[1] > means[0]
