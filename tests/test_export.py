"""`stillhouse export`: chat formats trained by TRL's SFTTrainer, top-k KD layouts for axolotl and DistillKit."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from test_trainer_causal import TOP_K, kd_store, tiny_student  # noqa: F401  (module fixtures)

from curation.store import DatasetStore
from factory.teachers.tokenizers import tokenizer_hash
from trainer.causal import prompt_ids
from trainer.export import METADATA_FILE, PLACEHOLDER_LOGPROB


def test_messages_export_trains_with_trl_sft_trainer(kd_store, tiny_student, tmp_path, run_cli):  # noqa: F811
    pytest.importorskip("trl", reason="trl is not installed")
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    code, out, err = run_cli("export", "gen@v1", "--format", "messages", "--out", tmp_path / "messages",
                             "--root", kd_store)  # fmt: skip
    assert code == 0, err
    assert "exported 6 rows of gen@v1 as messages" in out
    metadata = json.loads((tmp_path / "messages" / METADATA_FILE).read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_student, local_files_only=True)
    assert metadata["tokenizer_hash"] == [tokenizer_hash(tokenizer)] and metadata["rows"] == 6
    version = DatasetStore(kd_store).resolve("gen@v1")
    assert metadata["manifest_sha256"] == version.manifest_sha256

    dataset = load_dataset("json", data_files=str(tmp_path / "messages" / "data.jsonl"), split="train")
    assert dataset[0]["messages"][0] == {"role": "user", "content": version.read()["instruction"][0]}
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3,
        report_to=[], save_strategy="no", use_cpu=True, logging_steps=1, max_length=128,
    )  # fmt: skip
    trainer = SFTTrainer(model=str(tiny_student), args=args, train_dataset=dataset, processing_class=tokenizer)
    # TRL's own preparation applies the chat template and masks nothing we did not ask for
    first = trainer.train_dataset[0]["input_ids"]
    assert first[: len(prompt_ids(tokenizer, version.read()["instruction"][0], ""))] == prompt_ids(
        tokenizer, version.read()["instruction"][0], ""
    )
    result = trainer.train()
    assert result.global_step == 3 and np.isfinite(result.training_loss)


def test_openai_and_sharegpt_carry_the_same_turns(kd_store, tmp_path, run_cli):  # noqa: F811
    frame = DatasetStore(kd_store).resolve("gen@v1").read()
    for fmt in ("openai-chat", "sharegpt"):
        code, _, err = run_cli("export", "gen@v1", "-f", fmt, "-o", tmp_path / fmt, "--root", kd_store)
        assert code == 0, err
        lines = [json.loads(line) for line in (tmp_path / fmt / "data.jsonl").read_text().splitlines()]
        assert len(lines) == frame.height
    openai = json.loads((tmp_path / "openai-chat" / "data.jsonl").read_text().splitlines()[1])
    assert openai == {"messages": [{"role": "user", "content": frame["instruction"][1]},
                                   {"role": "assistant", "content": frame["response"][1]}]}  # fmt: skip
    sharegpt = json.loads((tmp_path / "sharegpt" / "data.jsonl").read_text().splitlines()[1])
    assert sharegpt == {"conversations": [{"from": "human", "value": frame["instruction"][1]},
                                          {"from": "gpt", "value": frame["response"][1]}]}  # fmt: skip


@pytest.mark.parametrize("fmt", ["axolotl-kd", "distillkit"])
def test_kd_exports_align_teacher_rows_to_the_templated_tokens(kd_store, tiny_student, tmp_path, run_cli, fmt):  # noqa: F811
    from transformers import AutoTokenizer

    code, _, err = run_cli("export", "gen@v1", "-f", fmt, "-o", tmp_path / fmt, "--root", kd_store,
                           "--tokenizer", tiny_student)  # fmt: skip
    assert code == 0, err
    tokenizer = AutoTokenizer.from_pretrained(tiny_student, local_files_only=True)
    frame = DatasetStore(kd_store).resolve("gen@v1").read()
    table = pq.read_table(tmp_path / fmt / "data.parquet").to_pylist()
    metadata = json.loads((tmp_path / fmt / METADATA_FILE).read_text())
    assert metadata["rows"] == len(table) and metadata["top_k"] == TOP_K
    left_out = {r["row"] for r in metadata["left_out"]}
    assert len(table) + len(left_out) == frame.height
    if fmt == "distillkit":  # pre-tokenized: every row keeps the teacher's own token ids
        assert not left_out
    else:  # axolotl re-tokenizes the text; a random tiny teacher samples ids the tokenizer would not produce
        assert all("does not re-tokenize" in r["reason"] for r in metadata["left_out"]) and table
    for index, row in zip(sorted(set(range(frame.height)) - left_out), table):
        sample = frame["samples"][index][0]
        prompt = prompt_ids(tokenizer, frame["instruction"][index], "")
        if fmt == "axolotl-kd":
            # axolotl (v2 loader) tokenizes `messages` with the chat template and lays the rows on the end
            # of input_ids; target row j is the distribution over input_ids[j + 1]
            input_ids = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=False)
            ids, values = np.array(row["target_token_ids"]), np.array(row["logprobs"])
            start = len(input_ids) - len(ids)
            assert start == len(prompt) - 1
        else:
            input_ids, ids, values = row["input_ids"], np.array(row["token_ids"]), np.array(row["top_values"])
            start = 0
            assert len(ids) == len(input_ids)  # DistillKit's KL takes one top-k row per input position
            response = [t for t, label in zip(input_ids, row["labels"]) if label != -100]
            assert response == list(sample["token_ids"])
        assert input_ids[len(prompt) : len(prompt) + len(sample["token_ids"])] == list(sample["token_ids"])
        teacher_rows = slice(len(prompt) - 1 - start, len(prompt) - 1 - start + len(sample["token_ids"]))
        assert ids[teacher_rows].tolist() == [list(x) for x in sample["top_ids"]]
        assert np.allclose(values[teacher_rows], np.array([list(x) for x in sample["top_logprobs"]]))
        # every other row puts all mass on the sequence's own next token; nothing is -inf or NaN
        for t in set(range(len(ids))) - set(range(len(ids))[teacher_rows]):
            if start + t + 1 < len(input_ids):
                assert ids[t, 0] == input_ids[start + t + 1] and values[t, 0] == 0.0
            assert (values[t, 1:] == PLACEHOLDER_LOGPROB).all()
        assert np.isfinite(values).all() and (ids < len(tokenizer)).all()


def test_kd_export_without_logprobs_names_the_rows(kd_store, tiny_student, tmp_path, run_cli):  # noqa: F811
    store = DatasetStore(kd_store)
    rows = store.resolve("gen@v1").read().to_dicts()
    for index in (1, 3):
        rows[index]["samples"] = [dict(rows[index]["samples"][0], top_ids=[], top_logprobs=[])]
    store.publish("nologprobs", pl.DataFrame(rows))
    code, _, err = run_cli("export", "nologprobs@v1", "-f", "axolotl-kd", "-o", tmp_path / "x", "--root", kd_store,
                           "--tokenizer", tiny_student)  # fmt: skip
    assert code == 1 and err.strip().count("\n") == 0
    assert "nologprobs@v1: rows 1, 3 have no top-k logprobs" in err.replace("\n", "")
    assert not (tmp_path / "x").exists()
