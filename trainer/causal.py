"""Causal LM students: SFT on responses, or token-level KD on the teacher's stored top-k logprobs.

Prompts go through the student's chat template; the loss covers response tokens only.
Token KD trains on the chosen sample's own token ids, so it needs the student to share
the teacher's tokenizer: the hashes are compared first and a mismatch is refused.

Data: the version is read in blocks of Parquet rows (pyarrow record batches) and each
block becomes flat numpy arrays (`TokenTable`): token ids, and for KD a [positions, k]
matrix of top-k ids and one of logprobs (8 bytes a value, not a Python list each).
Batches are cut from those arrays by index arithmetic; nothing loops over positions.

SFT packing is off: concatenating examples into one block lets each attend to the ones
before it unless the attention is masked per example, which the plain HF forward used
here does not do. Batches are padded to their longest example instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from curation.stages.base import chosen_samples
from curation.store import DatasetVersion
from factory.errors import StillhouseError
from factory.teachers.base import TeacherRequest
from factory.teachers.local_models import chat_prompt_ids
from factory.teachers.tokenizers import tokenizer_hash
from trainer.config import CausalLMStudent, TrainConfig
from trainer.devices import autocast, check_precision, resolve_device
from trainer.loop import LoopResult, Processes, epoch_order, run_loop, seed_everything
from trainer.losses import token_kd_loss

IGNORE = -100
BLOCK_ROWS = 1024  # Parquet rows turned into arrays at a time
COLUMNS = ["id", "instruction", "input", "response", "samples", "chosen_sample", "teacher", "review"]


def prompt_ids(tokenizer: Any, instruction: str, input: str) -> list[int]:
    """The chat-templated user turn plus the assistant header, as token ids."""
    content = f"{instruction}\n\n{input}" if input else instruction
    return chat_prompt_ids(tokenizer, TeacherRequest.chat(content))


def _starts(lengths: np.ndarray) -> np.ndarray:
    """Where each of consecutive pieces of these lengths starts."""
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else np.zeros(0, np.int64)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """concat(arange(s, s + n) for s, n in zip(starts, lengths)), without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.repeat(np.asarray(starts, dtype=np.int64) - _starts(lengths), lengths) + np.arange(lengths.sum())


def _ragged_to_matrix(values: np.ndarray, lengths: np.ndarray, fill: float | int, dtype: Any) -> np.ndarray:
    """Consecutive pieces of `values` as the rows of a [len(lengths), max length] matrix, padded with `fill`."""
    width = int(lengths.max()) if len(lengths) else 0
    matrix = np.full((len(lengths), width), fill, dtype=dtype)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    matrix[rows, np.arange(len(values)) - np.repeat(_starts(lengths), lengths)] = values
    return matrix


def _list_parts(array: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """An Arrow list array's offsets (absolute positions in its child) and its child."""
    return array.offsets.to_numpy().astype(np.int64), array.values


@dataclass
class TokenTable:
    """Examples as flat arrays. Example i is tokens[starts[i] : starts[i] + lengths[i]], of which the first
    prompt_lengths[i] are the prompt. For KD, its response position j has top-k row top_starts[i] + j."""

    tokens: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    prompt_lengths: np.ndarray
    top_ids: np.ndarray | None = None  # [positions, k] int32, 0 in unused slots
    top_logprobs: np.ndarray | None = None  # [positions, k] float32, -inf in unused slots
    top_starts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.starts)

    @classmethod
    def concat(cls, parts: list[TokenTable]) -> TokenTable:
        lengths = np.concatenate([p.lengths for p in parts])
        table = cls(
            np.concatenate([p.tokens for p in parts]),
            _starts(lengths),
            lengths,
            np.concatenate([p.prompt_lengths for p in parts]),
        )
        if parts[0].top_ids is not None:
            k = max(p.top_ids.shape[1] for p in parts)
            pad = [((0, 0), (0, k - p.top_ids.shape[1])) for p in parts]
            table.top_ids = np.concatenate([np.pad(p.top_ids, w) for p, w in zip(parts, pad)])
            table.top_logprobs = np.concatenate(
                [np.pad(p.top_logprobs, w, constant_values=-np.inf) for p, w in zip(parts, pad)]
            )
            table.top_starts = _starts(table.lengths - table.prompt_lengths)
        return table

    def loss_tokens(self, indices: list[int]) -> int:
        """Tokens the loss is taken over: every response token (the first token has no logit predicting it)."""
        idx = np.asarray(indices)
        return int((self.lengths[idx] - np.maximum(self.prompt_lengths[idx], 1)).sum())

    def inputs(self, indices: list[int], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Right-padded [B, W] input ids, attention mask, and the (row, column) of every real token."""
        idx = np.asarray(indices)
        lengths = self.lengths[idx]
        rows = np.repeat(np.arange(len(idx)), lengths)
        columns = np.arange(lengths.sum()) - np.repeat(_starts(lengths), lengths)
        ids = np.full((len(idx), int(lengths.max())), pad_id, dtype=np.int64)
        ids[rows, columns] = self.tokens[_ranges(self.starts[idx], lengths)]
        mask = np.zeros_like(ids)
        mask[rows, columns] = 1
        return ids, mask, np.stack([rows, columns])

    def sft_batch(self, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        ids, mask, (rows, columns) = self.inputs(indices, pad_id)
        labels = np.full_like(ids, IGNORE)
        response = columns >= self.prompt_lengths[np.asarray(indices)][rows]
        labels[rows[response], columns[response]] = ids[rows[response], columns[response]]
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels),
        }

    def kd_targets(self, indices: list[int], ids: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Flattened response positions: (row, logit position, target id, top ids [N, k], top logprobs [N, k])."""
        idx = np.asarray(indices)
        n = self.lengths[idx] - self.prompt_lengths[idx]
        rows = np.repeat(np.arange(len(idx)), n)
        positions = self.prompt_lengths[idx][rows] + np.arange(n.sum()) - np.repeat(_starts(n), n) - 1
        top = _ranges(self.top_starts[idx], n)  # the logit at t predicts token t + 1
        return (
            torch.from_numpy(rows),
            torch.from_numpy(positions),
            torch.from_numpy(ids[rows, positions + 1]),
            torch.from_numpy(self.top_ids[top].astype(np.int64)),
            torch.from_numpy(self.top_logprobs[top]),
        )


def version_blocks(version: DatasetVersion, columns: list[str]) -> Iterator[tuple[int, pl.DataFrame]]:
    """The kept rows, BLOCK_ROWS at a time, each block with the number of its first row (hashes checked first)."""
    version.verify()
    parquet = pq.ParquetFile(version.data_path)
    present = [c for c in columns if c in parquet.schema_arrow.names]
    first = 0
    for batch in parquet.iter_batches(batch_size=BLOCK_ROWS, columns=present):
        yield first, pl.from_arrow(batch)
        first += batch.num_rows


def check_tokenizer(version: DatasetVersion, frame: pl.DataFrame, tokenizer: Any, student_path: str, first=0) -> None:
    """Refuse token KD unless every row's teacher tokenizer hash equals the student's."""
    student_hash = tokenizer_hash(tokenizer)
    hashes = frame["teacher"].struct.field("tokenizer_hash")
    if hashes.is_null().any():
        row = first + int(hashes.is_null().arg_true()[0])
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


def prompt_table(tokenizer: Any, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Every row's prompt ids (flat) and lengths: one batched tokenizer call per block, as `prompt_ids` does."""
    contents = [f"{i}\n\n{x}" if x else i for i, x in zip(frame["instruction"], frame["input"].fill_null(""))]
    if getattr(tokenizer, "chat_template", None):
        texts = [
            tokenizer.apply_chat_template(
                TeacherRequest.chat(c).openai_messages(), tokenize=False, add_generation_prompt=True
            )
            for c in contents
        ]
        return _tokenize(tokenizer, texts, add_special_tokens=False)
    return _tokenize(tokenizer, contents, add_special_tokens=True)


def _tokenize(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> tuple[np.ndarray, np.ndarray]:
    """Flat token ids and per-text lengths from one batched call."""
    if not texts:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    encoded = tokenizer(texts, add_special_tokens=add_special_tokens, padding=True, return_tensors="np")
    mask = encoded["attention_mask"].astype(bool)
    return encoded["input_ids"][mask].astype(np.int32), mask.sum(1).astype(np.int64)


def _join(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray]) -> TokenTable:
    """Per row, the first part then the second: (flat values, lengths) each."""
    (a, a_len), (b, b_len) = first, second
    lengths = a_len + b_len
    starts = _starts(lengths)
    tokens = np.empty(int(lengths.sum()), dtype=np.int32)
    tokens[_ranges(starts, a_len)] = a
    tokens[_ranges(starts + a_len, b_len)] = b
    return TokenTable(tokens, starts, lengths, a_len)


def _room(version: DatasetVersion, first: int, frame: pl.DataFrame, prompt_lengths: np.ndarray, max_length: int):
    room = max_length - prompt_lengths
    if (room <= 0).any():
        row = int(np.argmax(room <= 0))
        raise StillhouseError(
            f"{version.ref}: row {first + row} (id {frame['id'][row]}): the prompt alone is "
            f"{prompt_lengths[row]} tokens, not shorter than student.max_length={max_length}"
        )
    return room


def sft_block(version: DatasetVersion, first: int, frame: pl.DataFrame, tokenizer: Any, max_length: int) -> TokenTable:
    missing = frame["response"].is_null()
    if missing.any():
        raise StillhouseError(
            f"{version.ref}: column 'response' row {first + int(missing.arg_true()[0])} is empty (SFT)"
        )
    prompts = prompt_table(tokenizer, frame)
    responses, response_lengths = _tokenize(tokenizer, frame["response"].to_list(), add_special_tokens=False)
    # every response ends with EOS, and is cut where prompt + response exceed max_length
    with_eos = _join(
        (responses, response_lengths),
        (np.full(len(frame), tokenizer.eos_token_id, np.int32), np.ones(len(frame), np.int64)),
    )
    keep = np.minimum(with_eos.lengths, _room(version, first, frame, prompts[1], max_length))
    return _join(prompts, (with_eos.tokens[_ranges(with_eos.starts, keep)], keep))


def _chosen_fields(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series]:
    """The KD sample's token_ids / top_ids / top_logprobs per row, and which rows have no KD sample by design.

    The kept sample is `samples[chosen_sample]`; where the index is null (rows written before the column
    existed) the sample whose text is the response. Rows a reviewer corrected have none: the teacher's
    logprobs describe the text the reviewer replaced (a review pull also clears the index and samples)."""
    fields = ["token_ids", "top_ids", "top_logprobs"]
    chosen = chosen_samples(frame, fields)
    corrected = pl.Series([False] * frame.height)
    if "review" in frame.columns and frame["review"].dtype != pl.Null:
        corrected = frame["review"].struct.field("status").fill_null("") == "corrected"
    return chosen, corrected


def kd_block(
    version: DatasetVersion, first: int, frame: pl.DataFrame, tokenizer: Any, max_length: int
) -> tuple[TokenTable | None, int]:
    """A block's token-KD examples, and how many rows have no teacher logprobs for their response."""
    chosen, skipped = _chosen_fields(frame)
    keep_rows = ~skipped
    token_len = chosen["token_ids"].list.len().fill_null(0)
    top_len = chosen["top_ids"].list.len().fill_null(0)
    bad = keep_rows & ((token_len == 0) | (top_len == 0))
    if bad.any():
        row = int(bad.arg_true()[0])
        raise StillhouseError(
            f"{version.ref}: column 'samples' row {first + row} (id {frame['id'][row]}): no sample with token_ids "
            "and top-k logprobs; token KD needs them"
        )
    uneven = keep_rows & ((token_len != top_len) | (top_len != chosen["top_logprobs"].list.len().fill_null(0)))
    uneven_k = chosen["top_ids"].list.eval(pl.element().list.len()) != chosen["top_logprobs"].list.eval(
        pl.element().list.len()
    )
    uneven = uneven | (keep_rows & uneven_k.fill_null(False))
    if uneven.any():
        row = int(uneven.arg_true()[0])
        raise StillhouseError(
            f"{version.ref}: column 'samples' row {first + row} (id {frame['id'][row]}): token_ids, top_ids and "
            "top_logprobs have different lengths"
        )
    rows = keep_rows.arg_true().to_numpy()
    if len(rows) == 0:
        return None, int(skipped.sum())
    kept = frame[rows]
    prompts = prompt_table(tokenizer, kept)
    n = np.minimum(token_len.to_numpy()[rows], _room(version, first, kept, prompts[1], max_length))

    token_offsets, token_values = _list_parts(chosen["token_ids"].to_arrow())
    response = token_values.to_numpy(zero_copy_only=False)[_ranges(token_offsets[rows], n)].astype(np.int32)
    table = _join(prompts, (response, n))
    table.top_starts = _starts(n)
    for name, fill, dtype in (("top_ids", 0, np.int32), ("top_logprobs", -np.inf, np.float32)):
        outer, positions = _list_parts(chosen[name].to_arrow())
        inner, values = _list_parts(positions)
        at = _ranges(outer[rows], n)  # the kept positions, as indexes into the per-position lists
        widths = inner[at + 1] - inner[at]
        flat = values.to_numpy(zero_copy_only=False)[_ranges(inner[at], widths)]
        setattr(table, name, _ragged_to_matrix(flat, widths, fill, dtype))
    return table, int(skipped.sum())


def build_table(
    config: TrainConfig, version: DatasetVersion, tokenizer: Any, student: CausalLMStudent
) -> tuple[TokenTable, int]:
    """The whole version as a TokenTable, block by block; and the rows token KD left out."""
    parts, skipped = [], 0
    for first, frame in version_blocks(version, COLUMNS):
        if config.objective == "token_kd":
            check_tokenizer(version, frame, tokenizer, student.path, first)
            part, left_out = kd_block(version, first, frame, tokenizer, student.max_length)
            skipped += left_out
        else:
            part = sft_block(version, first, frame, tokenizer, student.max_length)
        if part is not None:
            parts.append(part)
    if not parts and skipped:
        raise StillhouseError(f"{version.ref}: every row is review-corrected, so none has teacher logprobs; use sft")
    if not parts:
        raise StillhouseError(f"{version.ref}: no kept rows to train on")
    return TokenTable.concat(parts), skipped


def train_causal(config: TrainConfig, version: DatasetVersion, model_dir: Path) -> tuple[LoopResult, dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student: CausalLMStudent = config.student  # type: ignore[assignment]
    seed_everything(config.seed)
    device = resolve_device(config.device)
    check_precision(device, config.precision)
    if not Path(student.path).is_dir():
        raise StillhouseError(f"student.path {student.path} is not a model directory")
    processes = Processes.start(device)
    device = processes.device or device
    tokenizer = AutoTokenizer.from_pretrained(student.path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    table, skipped_corrected = build_table(config, version, tokenizer, student)

    model = AutoModelForCausalLM.from_pretrained(student.path, local_files_only=True, dtype=torch.float32)
    if student.gradient_checkpointing:
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_rank, lora_alpha=2 * config.lora_rank, target_modules="all-linear")
        model = get_peft_model(model, lora)
    model = processes.prepare(model, device)

    def batches_for_epoch(epoch: int) -> list[list[int]]:
        order = epoch_order(len(table), config.seed, epoch)
        return [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]

    def loss_fn(indices: list[int]) -> torch.Tensor:
        if config.objective == "sft":
            batch = {k: v.to(device) for k, v in table.sft_batch(indices, tokenizer.pad_token_id).items()}
            with autocast(device, config.precision):
                return model(**batch).loss
        ids, mask, _ = table.inputs(indices, tokenizer.pad_token_id)
        with autocast(device, config.precision):
            logits = model(
                input_ids=torch.from_numpy(ids).to(device), attention_mask=torch.from_numpy(mask).to(device)
            ).logits
        rows, positions, targets, top_ids, top_logprobs = (t.to(device) for t in table.kd_targets(indices, ids))
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
        count_fn=table.loss_tokens,
        gradient_accumulation=config.gradient_accumulation_steps,
        precision=config.precision,
        device=device,
        processes=processes,
    )
    model = processes.unwrap(model)
    if processes.is_main:
        if config.lora:
            model.save_pretrained(model_dir / "adapter")
            model = model.merge_and_unload()
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    processes.wait()
    details = {
        "student_path": student.path,
        "examples": len(table),
        "skipped_review_corrected": skipped_corrected,
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "processes": processes.world,
    }
    return result, details
