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
from trainer.causal import IGNORE, pack, prompt_ids, sft_examples
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


def causal_config(root: Path, student: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        dataset="gen@v1",
        store_root=root,
        objective="token_kd",
        student=CausalLMStudent(path=str(student), max_length=128),
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


def test_sft_masks_the_prompt_and_packs(tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True)
    frame = pl.DataFrame({"instruction": ["List three ways to save water."], "input": [""], "response": ["Fix leaks."]})
    (example,) = sft_examples(frame, tokenizer, max_length=256)
    prompt = prompt_ids(tokenizer, "List three ways to save water.", "")
    response = tokenizer("Fix leaks.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert example["input_ids"] == prompt + response
    assert example["labels"] == [IGNORE] * len(prompt) + response

    blocks = pack([example, example, example], block=16)
    assert [len(b["input_ids"]) for b in blocks[:-1]] == [16] * (len(blocks) - 1)
    assert sum(len(b["labels"]) for b in blocks) == 3 * len(example["labels"])


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
