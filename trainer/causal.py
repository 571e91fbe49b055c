"""Causal LM students: SFT on responses, or token-level KD on the teacher's stored top-k logprobs.

Prompts go through the student's chat template; the loss covers response tokens only.
Token KD trains on the chosen sample's own token ids, so it needs the student to share
the teacher's tokenizer: the hashes are compared first and a mismatch is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import torch

from curation.store import DatasetVersion
from factory.errors import StillhouseError
from factory.teachers.base import TeacherRequest
from factory.teachers.local_models import chat_prompt_ids
from factory.teachers.tokenizers import tokenizer_hash
from trainer.config import CausalLMStudent, TrainConfig
from trainer.loop import LoopResult, epoch_order, run_loop, seed_everything
from trainer.losses import token_kd_loss

IGNORE = -100


def prompt_ids(tokenizer: Any, instruction: str, input: str) -> list[int]:
    """The chat-templated user turn plus the assistant header, as token ids."""
    content = f"{instruction}\n\n{input}" if input else instruction
    return chat_prompt_ids(tokenizer, TeacherRequest.chat(content))


def check_tokenizer(version: DatasetVersion, frame: pl.DataFrame, tokenizer: Any, student_path: str) -> None:
    """Refuse token KD unless every row's teacher tokenizer hash equals the student's."""
    student_hash = tokenizer_hash(tokenizer)
    hashes = frame["teacher"].struct.field("tokenizer_hash")
    if hashes.is_null().any():
        row = int(hashes.is_null().arg_true()[0])
        raise StillhouseError(
            f"{version.ref}: row {row} has no teacher.tokenizer_hash; token-level KD needs to know which tokenizer "
            f"produced the stored token ids"
        )
    for teacher_hash in hashes.unique().to_list():
        if teacher_hash != student_hash:
            names = frame["teacher"].struct.field("tokenizer").unique().to_list()
            raise StillhouseError(
                f"{version.ref}: teacher tokenizer hash {teacher_hash} (tokenizer {names}) differs from student "
                f"{student_path} tokenizer hash {student_hash}: the stored token ids and logprobs do not mean the "
                f"same tokens for this student. Use a student with the teacher's tokenizer, or objective: sft"
            )


def chosen_sample(row: dict[str, Any]) -> dict[str, Any] | None:
    """The sample whose text is the row's response (the first one when none matches)."""
    samples = row["samples"] or []
    for sample in samples:
        if sample["text"] == row["response"]:
            return sample
    return samples[0] if samples else None


def sft_examples(frame: pl.DataFrame, tokenizer: Any, max_length: int) -> list[dict[str, list[int]]]:
    examples = []
    for row in frame.iter_rows(named=True):
        prompt = prompt_ids(tokenizer, row["instruction"], row["input"] or "")
        response = tokenizer(row["response"] or "", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt + response)[:max_length]
        examples.append({"input_ids": ids, "labels": ([IGNORE] * len(prompt) + response)[:max_length]})
    return examples


def pack(examples: list[dict[str, list[int]]], block: int) -> list[dict[str, list[int]]]:
    """Concatenate examples and cut into `block`-token pieces (attention spans example boundaries)."""
    ids = [t for e in examples for t in e["input_ids"]]
    labels = [t for e in examples for t in e["labels"]]
    return [{"input_ids": ids[i : i + block], "labels": labels[i : i + block]} for i in range(0, len(ids), block)]


def kd_examples(
    version: DatasetVersion, frame: pl.DataFrame, tokenizer: Any, max_length: int
) -> tuple[list[dict], int]:
    """Token-KD examples, and how many review-corrected rows were left out: a review pull
    clears their samples, since the teacher's logprobs describe the response a reviewer
    replaced (SFT trains on the corrected text)."""
    examples, corrected = [], 0
    for index, row in enumerate(frame.iter_rows(named=True)):
        sample = chosen_sample(row)
        where = f"{version.ref}: column 'samples' row {index} (id {row['id']})"
        if sample is None and (row.get("review") or {}).get("status") == "corrected":
            corrected += 1
            continue
        if sample is None or not sample["token_ids"] or not sample["top_ids"]:
            raise StillhouseError(f"{where}: no sample with token_ids and top-k logprobs; token KD needs them")
        if not (len(sample["token_ids"]) == len(sample["top_ids"]) == len(sample["top_logprobs"])):
            raise StillhouseError(f"{where}: token_ids, top_ids and top_logprobs have different lengths")
        prompt = prompt_ids(tokenizer, row["instruction"], row["input"] or "")
        keep = max(0, max_length - len(prompt))
        if keep == 0:
            raise StillhouseError(f"{where}: the prompt alone is longer than student.max_length={max_length}")
        examples.append(
            {
                "input_ids": prompt + list(sample["token_ids"][:keep]),
                "prompt_length": len(prompt),
                "top_ids": [list(ids) for ids in sample["top_ids"][:keep]],
                "top_logprobs": [list(lps) for lps in sample["top_logprobs"][:keep]],
            }
        )
    if not examples:
        raise StillhouseError(f"{version.ref}: every row is review-corrected, so none has teacher logprobs; use sft")
    return examples, corrected


def pad_batch(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
        mask[i, : len(e["input_ids"])] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if "labels" in examples[0]:
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        for i, e in enumerate(examples):
            labels[i, : len(e["labels"])] = torch.tensor(e["labels"])
        batch["labels"] = labels
    return batch


def kd_targets(examples: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flattened response positions: (row, logit position, target id, top ids [N, k], top logprobs [N, k])."""
    rows, positions, targets, top_ids, top_lps = [], [], [], [], []
    for r, e in enumerate(examples):
        start = e["prompt_length"]
        for j, (ids, lps) in enumerate(zip(e["top_ids"], e["top_logprobs"])):
            rows.append(r)
            positions.append(start + j - 1)  # the logit at t predicts token t + 1
            targets.append(e["input_ids"][start + j])
            top_ids.append(ids)
            top_lps.append(lps)
    k = max(len(ids) for ids in top_ids)
    ids_tensor = torch.zeros((len(top_ids), k), dtype=torch.long)
    lps_tensor = torch.full((len(top_ids), k), float("-inf"))
    for i, (ids, lps) in enumerate(zip(top_ids, top_lps)):
        ids_tensor[i, : len(ids)] = torch.tensor(ids)
        lps_tensor[i, : len(lps)] = torch.tensor(lps)
    return torch.tensor(rows), torch.tensor(positions), torch.tensor(targets), ids_tensor, lps_tensor


def train_causal(config: TrainConfig, version: DatasetVersion, model_dir: Path) -> tuple[LoopResult, dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student: CausalLMStudent = config.student  # type: ignore[assignment]
    seed_everything(config.seed)
    if not Path(student.path).is_dir():
        raise StillhouseError(f"student.path {student.path} is not a model directory")
    tokenizer = AutoTokenizer.from_pretrained(student.path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    columns = ["id", "instruction", "input", "response", "samples", "teacher", "review"]
    frame = version.read(columns=columns)
    if frame.height == 0:
        raise StillhouseError(f"{version.ref}: no kept rows to train on")

    if config.objective == "token_kd":
        check_tokenizer(version, frame, tokenizer, student.path)
        examples, skipped_corrected = kd_examples(version, frame, tokenizer, student.max_length)
    else:
        skipped_corrected = 0
        missing = frame["response"].is_null()
        if missing.any():
            raise StillhouseError(f"{version.ref}: column 'response' row {int(missing.arg_true()[0])} is empty (SFT)")
        examples = sft_examples(frame, tokenizer, student.max_length)
        if student.packing:
            examples = pack(examples, student.max_length)

    model = AutoModelForCausalLM.from_pretrained(student.path, local_files_only=True, dtype=torch.float32)
    if config.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_rank, lora_alpha=2 * config.lora_rank, target_modules="all-linear")
        model = get_peft_model(model, lora)

    def batches_for_epoch(epoch: int) -> list[list[int]]:
        order = epoch_order(len(examples), config.seed, epoch)
        return [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]

    def loss_fn(indices: list[int]) -> torch.Tensor:
        chosen = [examples[i] for i in indices]
        batch = pad_batch(chosen, tokenizer.pad_token_id)
        if config.objective == "sft":
            return model(**batch).loss
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        rows, positions, targets, top_ids, top_logprobs = kd_targets(chosen)
        return token_kd_loss(
            logits[rows, positions], targets, top_ids, top_logprobs, config.temperature, config.alpha, config.kl
        )

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    result = run_loop(
        model,
        optimizer,
        batches_for_epoch,
        loss_fn,
        epochs=config.epochs,
        lr=config.learning_rate,
        output_dir=config.output_dir,
        checkpoint_every=config.checkpoint_every,
        resume=config.resume,
        fingerprint=config.fingerprint(),
        description=config.objective,
    )
    if config.lora:
        model.save_pretrained(model_dir / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    details = {
        "student_path": student.path,
        "examples": len(examples),
        "skipped_review_corrected": skipped_corrected,
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    return result, details
