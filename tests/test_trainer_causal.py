"""Causal students on tiny real models: token-level KD from stored top-k logprobs, SFT, LoRA, resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
import torch

from curation.store import DatasetStore
from factory.errors import StillhouseError
from factory.schema import canonical_json, record_id
from factory.teachers.tokenizers import tokenizer_hash
from trainer.causal import IGNORE, TokenTable, prompt_ids, prompt_table, sft_block
from trainer.config import CausalLMStudent, TrainConfig
from trainer.training import train

PROMPTS = [
    "Write a short note to a customer about a delayed parcel.",
    "List three ways to save water at home.",
    "Explain why the sky looks blue in two sentences.",
    "Please reset my card pin, I forgot it after the holiday.",
    "Summarise the paragraph in one line for a busy manager.",
    "Translate the sentence into French and keep the tone polite.",
]
TOP_K = 8
NEW_TOKENS = 10


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory) -> Path:
    """A second tiny Llama: other weights (seed 1), the same tokenizer as the teacher."""
    from fixtures.tiny_lm import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_student"), seed=1)


def teacher_records(teacher_dir: Path, tokenizer_hash_value: str | None) -> pl.DataFrame:
    """Sample the tiny teacher and keep its top-k logprobs per position, as the factory stores them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir, local_files_only=True).eval()
    rows = []
    for prompt in PROMPTS:
        ids = torch.tensor([prompt_ids(tokenizer, prompt, "")])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            min_new_tokens=NEW_TOKENS,
            max_new_tokens=NEW_TOKENS,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id,
        )
        tokens = out.sequences[0, ids.shape[1] :].tolist()
        logprobs = torch.log_softmax(torch.stack(out.logits, dim=1)[0].float(), dim=-1)
        top_lps, top_ids = logprobs.topk(TOP_K, dim=-1)
        text = tokenizer.decode(tokens)
        sample = {
            "text": text,
            "finish_reason": "length",
            "token_ids": tokens,
            "logprobs": logprobs.gather(-1, torch.tensor(tokens)[:, None])[:, 0].tolist(),
            "top_ids": top_ids.tolist(),
            "top_logprobs": top_lps.tolist(),
        }
        teacher = {
            "backend": "transformers",
            "model": str(teacher_dir),
            "params": canonical_json({"temperature": 1.0}),
            "tokenizer": "tiny",
            "tokenizer_hash": tokenizer_hash_value,
        }
        rows.append(
            {
                "id": record_id(prompt),
                "instruction": prompt,
                "input": "",
                "origin": "seed",
                "samples": [sample],
                "response": text,
                "teacher": teacher,
            }
        )
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def kd_store(tiny_llama, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("store")
    real_hash = tokenizer_hash(AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True))
    store = DatasetStore(root)
    store.publish("gen", teacher_records(tiny_llama, real_hash))
    store.publish("foreign", teacher_records(tiny_llama, "0123456789abcdef0123456789abcdef"))
    return root


def causal_config(root: Path, student_dir: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        dataset="gen@v1",
        store_root=root,
        objective="token_kd",
        student=CausalLMStudent(path=str(student_dir), max_length=128),
        output_dir=out,
        lr=3e-3,
        epochs=8,
        batch_size=3,
        temperature=1.0,
        alpha=1.0,
        seed=0,
        threads=2,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_student_and_teacher_share_the_tokenizer(tiny_llama, tiny_student):
    from transformers import AutoTokenizer

    a = AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True)
    b = AutoTokenizer.from_pretrained(tiny_student, local_files_only=True)
    assert tokenizer_hash(a) == tokenizer_hash(b)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_token_kd_reduces_kl_to_the_teacher(kd_store, tiny_student, tmp_path, direction):
    result = train(causal_config(kd_store, tiny_student, tmp_path / "run", kl=direction))
    steps_per_epoch = 2  # 6 records, batch 3
    first, last = result.losses[:steps_per_epoch], result.losses[-steps_per_epoch:]
    assert sum(last) / len(last) < 0.7 * sum(first) / len(first)
    assert (result.model_dir / "config.json").is_file() and (result.model_dir / "tokenizer.json").is_file()


def test_token_kd_refuses_a_different_tokenizer(kd_store, tiny_student, tmp_path):
    with pytest.raises(StillhouseError, match="teacher tokenizer hash 0123456789abcdef.*differs from student"):
        train(causal_config(kd_store, tiny_student, tmp_path / "run", dataset="foreign@v1"))
    assert not (tmp_path / "run" / "model").exists()


def test_token_kd_leaves_out_review_corrected_rows(kd_store, tiny_student, tmp_path):
    # A review pull clears a corrected row's samples: its logprobs described the replaced text.
    store = DatasetStore(kd_store)
    rows = store.resolve("gen@v1").read().to_dicts()
    original = rows[0]["response"]
    rows[0].update(
        samples=None,
        response="a corrected answer",
        review={"status": "corrected", "reviewer": "ann", "correction": "a corrected answer", "original": original},
    )
    store.publish("reviewed", pl.DataFrame(rows))
    result = train(causal_config(kd_store, tiny_student, tmp_path / "run", dataset="reviewed@v1", epochs=1))
    assert result.details["skipped_review_corrected"] == 1
    assert result.details["examples"] == len(rows) - 1
    rows[1].update(samples=None)  # a row without samples that no reviewer corrected is still an error
    store.publish("broken", pl.DataFrame(rows))
    with pytest.raises(StillhouseError, match=r"broken@v1: column 'samples' row 1 .*no sample with token_ids"):
        train(causal_config(kd_store, tiny_student, tmp_path / "broken", dataset="broken@v1", epochs=1))


def test_sft_masks_the_prompt(tiny_llama, kd_store):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True)
    version = DatasetStore(kd_store).resolve("gen@v1")
    frame = pl.DataFrame(
        {
            "id": ["a", "b"],
            "instruction": ["List three ways to save water.", "Say hi."],
            "input": ["", "politely"],
            "response": ["Fix leaks.", "Hello there, nice to meet you."],
        }
    )
    table = sft_block(version, 0, frame, tokenizer, max_length=256)
    batch = table.sft_batch([1, 0], tokenizer.pad_token_id)
    for row, (index, instruction, input) in enumerate([(1, "Say hi.", "politely"), (0, frame["instruction"][0], "")]):
        prompt = prompt_ids(tokenizer, instruction, input)
        response = tokenizer(frame["response"][index], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        width = len(prompt) + len(response)
        assert batch["input_ids"][row, :width].tolist() == prompt + response
        assert batch["labels"][row, :width].tolist() == [IGNORE] * len(prompt) + response
        assert batch["attention_mask"][row].sum() == width and (batch["labels"][row, width:] == IGNORE).all()
    assert table.loss_tokens([0, 1]) == int((batch["labels"][:, 1:] != IGNORE).sum())

    # the batched prompt tokenisation is the per-row one; a response past max_length is cut
    flat, lengths = prompt_table(tokenizer, frame)
    assert flat[: lengths[0]].tolist() == prompt_ids(tokenizer, frame["instruction"][0], "")
    cut = int(lengths.max()) + 2
    short = sft_block(version, 0, frame, tokenizer, max_length=cut)
    assert short.lengths.tolist() == [min(n, cut) for n in table.lengths] and max(table.lengths) > cut
    with pytest.raises(StillhouseError, match=r"gen@v1: row 1 \(id b\): the prompt alone is"):
        sft_block(version, 0, frame, tokenizer, max_length=int(lengths[1]))


def test_packing_is_refused_with_its_reason(tiny_student, tmp_path):
    with pytest.raises(ValueError, match="packed examples would attend to each other"):
        TrainConfig(
            dataset="gen@v1",
            objective="sft",
            student=CausalLMStudent(path=str(tiny_student), packing=True),
            output_dir=tmp_path,
        )


def test_kd_targets_match_the_stored_top_k(kd_store, tiny_llama):
    from transformers import AutoTokenizer

    from trainer.causal import kd_block

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True)
    version = DatasetStore(kd_store).resolve("gen@v1")
    frame = version.read()
    table, skipped = kd_block(version, 0, frame, tokenizer, max_length=128)
    assert skipped == 0 and isinstance(table, TokenTable) and table.top_ids.shape[1] == TOP_K
    ids, _, _ = table.inputs([2, 0], tokenizer.pad_token_id)
    rows, positions, targets, top_ids, top_logprobs = table.kd_targets([2, 0], ids)
    for row, index in enumerate([2, 0]):
        sample = frame["samples"][index][0]
        prompt = prompt_ids(tokenizer, frame["instruction"][index], "")
        at = rows == row
        assert targets[at].tolist() == list(sample["token_ids"])
        assert positions[at].tolist() == list(range(len(prompt) - 1, len(prompt) - 1 + NEW_TOKENS))
        assert top_ids[at].tolist() == [list(x) for x in sample["top_ids"]]
        assert torch.allclose(top_logprobs[at], torch.tensor([list(x) for x in sample["top_logprobs"]]))


def test_kd_picks_the_sample_named_by_chosen_sample(kd_store, tiny_student, tmp_path):
    # the kept sample is chosen_sample, not a text match; a review correction (null index, no samples)
    # means no KD; a null index beside samples (a row written before the column) falls back to the text
    from transformers import AutoTokenizer

    from trainer.causal import kd_block

    store = DatasetStore(kd_store)
    rows = store.resolve("gen@v1").read().to_dicts()
    decoy = dict(rows[0]["samples"][0], token_ids=[5] * NEW_TOKENS)
    rows[0]["samples"] = [decoy, rows[0]["samples"][0]]  # the response's text is on both; the kept one is index 1
    for row in rows:
        row["chosen_sample"] = len(row["samples"]) - 1
    rows[1].update(chosen_sample=None, samples=None, response="fixed", review={"status": "corrected"})
    rows[2].update(chosen_sample=None)
    frame = pl.DataFrame(rows).with_columns(pl.col("chosen_sample").cast(pl.Int32))
    store.publish("chosen", frame)
    version = store.resolve("chosen@v1")
    tokenizer = AutoTokenizer.from_pretrained(tiny_student, local_files_only=True)
    table, skipped = kd_block(version, 0, version.read(), tokenizer, max_length=128)
    assert skipped == 1 and len(table) == len(rows) - 1
    ids, _, _ = table.inputs([0, 1], tokenizer.pad_token_id)
    rows_of, _, targets, _, _ = table.kd_targets([0, 1], ids)
    assert targets[rows_of == 0].tolist() == list(rows[0]["samples"][1]["token_ids"])
    assert targets[rows_of == 1].tolist() == list(rows[2]["samples"][0]["token_ids"])  # row 1 left out
    result = train(causal_config(kd_store, tiny_student, tmp_path / "run", dataset="chosen@v1", epochs=1))
    assert result.details["skipped_review_corrected"] == 1


def test_sft_with_lora_and_resume_matches_uninterrupted(kd_store, tiny_student, tmp_path):
    from transformers import AutoModelForCausalLM

    def config(out: Path) -> TrainConfig:
        return causal_config(
            kd_store, tiny_student, out, objective="sft", lora=True, lora_rank=4, epochs=3, checkpoint_every=4
        )

    whole = train(config(tmp_path / "whole"))
    assert whole.losses[-1] < whole.losses[0]
    assert (whole.model_dir / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(whole.model_dir, local_files_only=True)
    assert not any("lora" in name for name in merged.state_dict())

    (checkpoint,) = (tmp_path / "whole" / "checkpoints").glob("step-*")
    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoints" / checkpoint.name)
    resumed = train(config(tmp_path / "resumed"))
    assert resumed.resumed_from == 4
    assert resumed.losses == pytest.approx(whole.losses[4:], rel=1e-6)
    again = AutoModelForCausalLM.from_pretrained(resumed.model_dir, local_files_only=True).state_dict()
    for name, tensor in merged.state_dict().items():
        assert torch.allclose(tensor, again[name], atol=1e-6), name


def test_eval_refuses_a_model_that_is_not_a_classifier(tiny_llama, tmp_path, run_cli):
    test_file = tmp_path / "test.jsonl"
    test_file.write_text('{"text": "my card is lost", "label": "card_lost"}\n')
    code, _, err = run_cli("eval", tiny_llama, "--test", test_file)
    assert code == 1 and "not a classifier" in err
