"""Review verdicts applied as a stage to a frame with samples: a correction detaches the row from its teacher sample."""

from __future__ import annotations

import polars as pl

from curation.review import ReviewConfig
from curation.review_apply import ReviewVerdicts
from factory.schema import conform


def test_a_correction_clears_samples_and_chosen_sample():
    sample = {"text": "old", "finish_reason": "stop", "token_ids": [1], "logprobs": [-0.1]}
    frame = pl.from_arrow(
        conform(
            pl.DataFrame(
                {
                    "id": ["fixed", "kept"],
                    "instruction": ["a", "b"],
                    "input": ["", ""],
                    "origin": ["seed", "seed"],
                    "samples": [[sample, {**sample, "text": "other"}], [sample, {**sample, "text": "other"}]],
                    "response": ["other", "other"],
                    "chosen_sample": [1, 1],
                }
            )
        )
    )
    responses = pl.DataFrame(
        [
            ("fixed", "amy", "verdict", "accept"),
            ("fixed", "amy", "correction", "new text"),
            ("kept", "amy", "verdict", "accept"),
        ],
        schema=["id", "reviewer", "question", "value"],
        orient="row",
    )
    stage = ReviewVerdicts(
        responses, classification=False, label_set=None, sampled_ids=["fixed", "kept"], config=ReviewConfig()
    )
    reviewed = stage.apply(frame)
    rows = {row["id"]: row for row in reviewed.to_dicts()}
    assert rows["fixed"]["response"] == "new text"
    assert rows["fixed"]["samples"] is None and rows["fixed"]["chosen_sample"] is None
    assert rows["kept"]["chosen_sample"] == 1 and rows["kept"]["response"] == "other"
