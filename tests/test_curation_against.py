"""Dedup against published versions: rows already in name@vN are dropped with a reason naming that row,
and what was computed from the version is cached beside it for the next run."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from curation.config import ExactDedupConfig, MinHashDedupConfig, SemanticDedupConfig
from curation.stages import SemanticDedup, build_stage
from curation.store import DatasetStore
from factory.schema import conform, record_id


def words(seed: int, n: int = 60) -> list[str]:
    return [f"w{int(i)}" for i in np.random.default_rng(seed).integers(0, 50_000, size=n)]


def frame_of(texts: list[str]) -> pl.DataFrame:
    rows = [
        {"id": record_id(text, "", "seed"), "instruction": text, "input": "", "origin": "seed", "response": "ok"}
        for text in texts
    ]
    return pl.from_arrow(conform(pl.DataFrame(rows)))


@pytest.fixture
def published(tmp_path):
    """tickets@v1 with three kept rows, and the texts of a new run: one copy, one near copy, one new row."""
    old = [" ".join(words(seed)) for seed in (1, 2, 3)]
    store = DatasetStore(tmp_path / "store")
    version = store.publish("tickets", frame_of(old))
    near = words(2)
    near[30] = "edited"
    new = [old[0].upper() + "!", " ".join(near), " ".join(words(9))]
    return store, version, old, frame_of(new)


def reasons(frame: pl.DataFrame) -> list[str | None]:
    return frame["drop_reason"].to_list()


def test_exact_and_minhash_drop_rows_of_a_published_version_and_name_them(published):
    store, version, old, frame = published
    v1_ids = version.read(["id", "instruction"])
    id_of = dict(zip(v1_ids["instruction"], v1_ids["id"]))

    exact = build_stage(ExactDedupConfig(columns=["instruction"], against=["tickets@latest"]), store=store)
    out = exact.apply(frame)
    assert reasons(out) == [f"exact_duplicate: of tickets@v1:{id_of[old[0]]}", None, None]

    minhash = build_stage(MinHashDedupConfig(columns=["instruction"], against=["tickets@v1"]), store=store)
    out = minhash.apply(frame)
    dropped = reasons(out)
    assert dropped[0] == f"near_duplicate: of tickets@v1:{id_of[old[0]]} jaccard=1.0"
    assert dropped[1].startswith(f"near_duplicate: of tickets@v1:{id_of[old[1]]} jaccard=0.9")
    assert dropped[2] is None
    # The version's band keys were stored beside it (never inside the immutable version) ...
    cached = sorted(p.name for p in (version.path.parent / ".cache").rglob("*.npy"))
    assert any(name.startswith("minhash-") for name in cached) and any(name.startswith("exact-") for name in cached)
    assert not any(version.path.rglob("*.npy"))
    # ... and a second run reads them instead of recomputing: same answer from the cache.
    again = build_stage(MinHashDedupConfig(columns=["instruction"], against=["tickets@v1"]), store=store)
    assert reasons(again.apply(frame)) == dropped


def test_semantic_dedup_against_a_version_embeds_it_once(published):
    store, version, old, frame = published
    calls: list[int] = []

    def encoder(texts: list[str]) -> np.ndarray:
        """Bag of words hashed into 64 dims, unit length: near copies are near in cosine."""
        calls.append(len(texts))
        vectors = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().strip("!").split():
                vectors[row, hash(word) % 64] += 1
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    config = SemanticDedupConfig(columns=["instruction"], against=["tickets@v1"], threshold=0.95)
    stage = SemanticDedup(config, encoder=encoder)
    stage.reference_store = store
    out = stage.apply(frame)
    assert [r.split(" cosine=")[0] if r else None for r in reasons(out)][:2] == [
        f"semantic_duplicate: of tickets@v1:{version.read(['id'])['id'][0]}",
        f"semantic_duplicate: of tickets@v1:{version.read(['id'])['id'][1]}",
    ]
    assert reasons(out)[2] is None
    assert sorted(calls) == [3, 3]  # the new rows once, the version's rows once
    calls.clear()
    stage.apply(frame)
    assert calls == [3]  # the version's embeddings come from its cache


def test_an_unknown_version_is_one_clear_error(published):
    store, _, _, frame = published
    stage = build_stage(ExactDedupConfig(columns=["instruction"], against=["tickets@v7"]), store=store)
    with pytest.raises(Exception, match="tickets@v7|v7"):
        stage.apply(frame)
