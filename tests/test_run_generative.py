"""A generative run end to end on a tiny real local model:
Self-Instruct -> Evol-Instruct -> respond with logprobs -> curation -> publish."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml

from curation.store import DatasetStore
from factory.teachers.tokenizers import tokenizer_hash

SEED_TASKS = [
    ("Write a short note to a customer about a delayed parcel.", ""),
    ("List three ways to save water at home.", ""),
    (
        "Summarise the paragraph in one line for a busy manager.",
        "The team shipped the new billing page and fixed two login bugs.",
    ),
    ("Translate the sentence into French and keep the tone polite.", "Please reset my card pin."),
    ("Explain why the sky looks blue in two sentences.", ""),
    ("Rewrite the instruction so it needs more reasoning steps.", "Add 2 and 3."),
]


@pytest.mark.slow
def test_generative_run_on_tiny_llama(tmp_path, tiny_llama, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seeds = tmp_path / "seed_tasks.jsonl"
    seeds.write_text(
        "".join(
            json.dumps({"instruction": text, "input": context, "is_classification": False}) + "\n"
            for text, context in SEED_TASKS
        )
    )
    config = {
        "name": "generative",
        "seeds": {"path": "seed_tasks.jsonl", "columns": {"instruction": "instruction", "input": "input"}},
        "teacher": {"backend": "transformers", "model": str(tiny_llama), "device": "cpu", "batch_size": 8},
        "tasks": [
            {"type": "self_instruct", "target_size": 4, "max_rounds": 2, "prompts_per_round": 2,
             "human_examples": 3, "machine_examples": 1, "list_length": 6, "max_tokens": 48},
            {"type": "evol_instruct", "generations": 1, "mutations": ["deepen", "concretize"],
             "max_tokens": 32, "response_max_tokens": 24},
            {"type": "respond", "n": 2, "temperature": 0.8, "max_tokens": 16, "top_logprobs": 3},
        ],
        "curation": [
            {"stage": "heuristics", "language": None, "min_chars": 1, "truncated": False, "refusals": True},
            {"stage": "exact_dedup"},
            {"stage": "entropy", "max_quantile": 0.9},
        ],
        "publish": {"name": "generative"},
    }  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    code, out, err = run_cli("run", path)
    assert code == 0, err + out

    version = DatasetStore(tmp_path / "datasets_out").resolve("generative@latest")
    everything = version.read_all()
    kept = version.read()
    assert kept.height > 0
    # Every seed is there, answered; evolutions carry lineage back to a row of the dataset.
    assert everything.filter(pl.col("origin") == "seed").height == len(SEED_TASKS)
    evolved = everything.filter(pl.col("origin").str.starts_with("evol:"))
    assert evolved.height > 0
    assert set(evolved["parent_id"].to_list()) <= set(everything["id"].to_list())
    # Respond kept n samples per prompt with token ids, sampled logprobs and top-3 alternatives.
    answered = kept.filter(pl.col("samples").list.len() > 0)
    assert answered.height == kept.height
    sample = answered["samples"][0][0]
    assert len(sample["token_ids"]) == len(sample["logprobs"]) == len(sample["top_ids"]) > 0
    assert all(len(top) == 3 for top in sample["top_logprobs"])
    assert all(lp <= 0 for lp in sample["logprobs"])
    from transformers import AutoTokenizer

    expected_hash = tokenizer_hash(AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True))
    assert set(kept["teacher"].struct.field("tokenizer_hash").to_list()) == {expected_hash}
    # The funnel names every stage in order and accounts for every row.
    funnel = version.manifest["funnel"]
    stages = [step["stage"] for step in funnel]
    assert stages[-3:] == ["heuristics", "exact_dedup", "entropy"]
    assert funnel[0]["rows_in"] == everything.height and funnel[-1]["rows_out"] == kept.height
    assert kept["mean_entropy"].is_not_null().all()
