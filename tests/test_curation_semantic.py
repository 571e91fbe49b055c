"""Semantic dedup with the real offline MiniLM model, on planted rows and MRPC paraphrase pairs."""

from __future__ import annotations

import csv

import numpy as np
import polars as pl
import pytest
from conftest import shared_data

from curation.config import SemanticDedupConfig
from curation.stages import SemanticDedup
from curation.stages.semantic_dedup import sentence_transformer_encoder, similar_pairs
from factory.schema import conform

pytestmark = pytest.mark.slow  # importing sentence-transformers alone takes ~10 s here


@pytest.fixture(scope="module")
def encoder():
    import torch

    torch.set_num_threads(2)
    return sentence_transformer_encoder(None, batch_size=64)


def mrpc_pairs(limit: int) -> pl.DataFrame:
    path = shared_data("mrpc", "msr_paraphrase_test.txt")
    with path.open(encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    frame = pl.DataFrame({"label": [int(r[0]) for r in rows], "a": [r[3] for r in rows], "b": [r[4] for r in rows]})
    return pl.concat([frame.filter(pl.col("label") == k).head(limit) for k in (0, 1)])


def test_semantic_duplicates_keep_best_member(encoder):
    rows = {
        "id": ["a", "b", "c", "d"],
        "instruction": [
            "Write a short poem about the ocean at night.",
            "Write a short poem about the ocean at night!",
            "Explain how a bicycle gear system works.",
            "Translate 'good morning' into Spanish.",
        ],
        "input": ["", "", "", ""],
        "origin": ["seed"] * 4,
        "judge_score": [6.0, 9.0, 5.0, 5.0],
    }
    frame = pl.from_arrow(conform(pl.DataFrame(rows)))
    out = SemanticDedup(SemanticDedupConfig(threshold=0.95), encoder=encoder).apply(frame)
    assert out.filter(pl.col("drop_stage").is_not_null())["id"].to_list() == ["a"]
    assert out[0, "drop_reason"].startswith("semantic_duplicate: of b cosine=")
    assert out["semantic_cluster"].to_list() == [0, 0, None, None]


def test_mrpc_paraphrases_cluster_more_than_non_paraphrases(encoder):
    pairs = mrpc_pairs(60)
    sentences = pairs["a"].to_list() + pairs["b"].to_list()
    frame = pl.from_arrow(
        conform(
            pl.DataFrame(
                {
                    "id": [f"s{k}" for k in range(len(sentences))],
                    "instruction": sentences,
                    "input": [""] * len(sentences),
                    "origin": ["import"] * len(sentences),
                }
            )
        )
    )
    config = SemanticDedupConfig(threshold=0.85, cluster_size=30, probes=2)
    out = SemanticDedup(config, encoder=encoder).apply(frame)
    cluster = out["semantic_cluster"].to_numpy()
    n = pairs.height
    together = np.array([cluster[k] == cluster[k + n] and out["semantic_cluster"][k] is not None for k in range(n)])
    labels = pairs["label"].to_numpy()
    paraphrase_rate, other_rate = together[labels == 1].mean(), together[labels == 0].mean()
    assert paraphrase_rate > other_rate + 0.15
    assert paraphrase_rate > 0.3

    # cluster-then-compare finds (nearly) the pairs an all-pairs comparison finds, and nothing else
    vectors = encoder(sentences)
    exact = set(zip(*similar_pairs(vectors, 0.85, cluster_size=10**6, probes=1, seed=0)[:2]))
    approx = set(zip(*similar_pairs(vectors, 0.85, cluster_size=30, probes=2, seed=0)[:2]))
    assert approx <= exact
    assert len(approx) >= 0.9 * len(exact)
