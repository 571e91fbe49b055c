"""Run 2 over seeds that overlap run 1: the prompts already in name@v1 are dropped before the teacher,
with a reason naming the row of v1, and no request is sent for them (counted at the server)."""

from __future__ import annotations

import json

import pytest
import yaml
from fixtures.fake_openai_server import FakeOpenAIServer
from test_run import SEEDS, stillhouse, write_config

from curation.store import DatasetStore


@pytest.mark.slow
def test_a_second_run_pays_nothing_for_prompts_already_published(tmp_path):
    with FakeOpenAIServer() as server:
        # Run 1 keeps every row (`against` compares with the kept rows of a version).
        code, _, err = stillhouse(write_config(tmp_path, server.url, curation=[{"stage": "exact_dedup"}]))
        assert code == 0, err
        assert server.counts["requests"] == len(SEEDS)
        store = DatasetStore(tmp_path / "datasets")
        v1 = store.resolve("resume@v1").read_all(["id", "instruction"])
        id_of = dict(zip(v1["instruction"], v1["id"]))
        assert set(SEEDS[:12]) <= set(store.resolve("resume@v1").read(["instruction"])["instruction"])

        # Run 2: a fresh run (empty response cache) over half the old prompts and as many new ones.
        second = tmp_path / "second"
        second.mkdir()
        new = [f"Write one short poem about the number {i} for a children's book." for i in range(12)]
        overlap = SEEDS[:12]
        (second / "seeds.jsonl").write_text("".join(json.dumps({"prompt": s}) + "\n" for s in overlap + new))
        config = write_config(second, server.url)
        raw = yaml.safe_load(config.read_text())
        raw["name"] = "second"
        raw["publish"]["root"] = str(tmp_path / "datasets")
        raw["prefilter"] = [{"stage": "exact_dedup", "columns": ["instruction", "input"], "against": ["resume@latest"]}]
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        before = server.counts["requests"]
        code, out, err = stillhouse(config)
        assert code == 0, err
        assert server.counts["requests"] - before == len(new)  # nothing sent for the 12 already in v1

    v2 = store.resolve("resume@v2")
    rejected = v2.read_rejected(["instruction", "drop_stage", "drop_reason"])
    known = rejected.filter(rejected["instruction"].is_in(overlap))
    assert known.height == len(overlap)
    for row in known.iter_rows(named=True):
        assert row["drop_reason"] == f"exact_duplicate: of resume@v1:{id_of[row['instruction']]}"
        assert row["drop_stage"].startswith("prefilter")
    assert "12 requests saved" in out
