"""`stillhouse export REF --format FORMAT --out DIR`: a version in the layout other trainers read.

Chat formats (one JSON object a line, `data.jsonl`), from each kept row's prompt and response:
- `messages`: {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}, what TRL's
  SFTTrainer takes as is (conversational dataset).
- `openai-chat`: the same object, OpenAI's chat fine-tuning JSONL.
- `sharegpt`: {"conversations": [{"from": "human", ...}, {"from": "gpt", ...}]}.

Top-k KD formats (`data.parquet`), from the chosen sample's token ids and top-k logprobs, laid
out on the student's chat template (so they need `tokenizer`, whose hash must equal the
teacher's). Teacher row t is the distribution over token t + 1 of the templated sequence:
- `axolotl-kd`: axolotl's KD plugin (`type: axolotl.integrations.kd.chat_template`, its v2
  loader): `messages`, `target_token_ids` and `logprobs` (per position, k each). axolotl aligns
  these rows to the end of the tokenized conversation, so they start at the last prompt token
  (the one predicting the first response token) and run to the end.
- `distillkit`: DistillKit's raw top-k rows (`LogprobCompressor.decompress_to_sparse` reads
  `token_ids` + `top_values`): `input_ids`, `labels` (-100 outside the response),
  `attention_mask`, and one top-k row per input position (its KL takes [batch, seq, k]).
Positions the teacher did not sample (the prompt, the template's closing tokens, the last one)
carry a one-hot row on the sequence's own next token, with PLACEHOLDER_LOGPROB in the other
slots (finite: both libraries multiply p * log p, and 0 * -inf is NaN).

Beside the data, `stillhouse_export.json` carries the dataset ref and manifest sha256, the
teacher tokenizer name + hash, the label set, k, and every row left out with its reason.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curation.store import DatasetVersion
from factory.errors import StillhouseError
from factory.teachers.base import TeacherRequest
from factory.teachers.tokenizers import tokenizer_hash
from trainer.causal import _chosen_fields, prompt_ids, version_blocks

ExportFormat = Literal["messages", "axolotl-kd", "distillkit", "openai-chat", "sharegpt"]
FORMATS: tuple[str, ...] = ("messages", "axolotl-kd", "distillkit", "openai-chat", "sharegpt")
KD_FORMATS = ("axolotl-kd", "distillkit")
METADATA_FILE = "stillhouse_export.json"
PLACEHOLDER_LOGPROB = -1e4
COLUMNS = ["id", "instruction", "input", "response", "label", "samples", "chosen_sample", "teacher", "review"]


def user_content(instruction: str, input: str | None) -> str:
    """The user turn, exactly as the trainer and the teacher build it."""
    return TeacherRequest.chat(f"{instruction}\n\n{input}" if input else instruction).messages[-1][1]


def _assistant_text(frame: pl.DataFrame) -> pl.Series:
    response = frame["response"] if "response" in frame.columns else pl.Series([None] * frame.height, dtype=pl.String)
    if "label" in frame.columns:  # classification versions: the answer is the label
        response = response.fill_null(frame["label"])
    return response


def _chat_rows(version: DatasetVersion, first: int, frame: pl.DataFrame, fmt: str) -> list[dict[str, Any]]:
    answer = _assistant_text(frame)
    if answer.is_null().any():
        rows = (answer.is_null().arg_true() + first).to_list()
        raise StillhouseError(f"{version.ref}: rows {_first_few(rows)} have no response or label to export")
    users = [user_content(i, x) for i, x in zip(frame["instruction"], frame["input"])]
    if fmt == "sharegpt":
        return [
            {"conversations": [{"from": "human", "value": u}, {"from": "gpt", "value": a}]}
            for u, a in zip(users, answer)
        ]
    return [
        {"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}
        for u, a in zip(users, answer)
    ]


def _first_few(rows: list[int], n: int = 5) -> str:
    shown = ", ".join(map(str, rows[:n]))
    return f"{shown} (and {len(rows) - n} more)" if len(rows) > n else shown


def _one_hot(next_ids: np.ndarray, k: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, k] rows that put all mass on next_ids: that id first, then other ids at PLACEHOLDER_LOGPROB."""
    ids = (next_ids[:, None] + np.arange(k)[None, :]) % vocab  # distinct valid ids; only the first counts
    values = np.full(ids.shape, PLACEHOLDER_LOGPROB, dtype=np.float32)
    values[:, 0] = 0.0
    return ids, values


def _closing_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The tokens the chat template puts after the assistant's text (end of turn, EOS)."""
    if not getattr(tokenizer, "chat_template", None):
        return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    whole = tokenizer.apply_chat_template(messages, tokenize=False)
    opening = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    closing = whole[len(opening) + len(messages[-1]["content"]) :]
    return tokenizer(closing, add_special_tokens=False)["input_ids"] if closing else []


def _kd_rows(
    version: DatasetVersion, first: int, frame: pl.DataFrame, tokenizer: Any, fmt: str, left_out: list[dict]
) -> list[dict[str, Any]]:
    chosen, no_kd = _chosen_fields(frame)
    has_logprobs = (chosen["top_ids"].list.len().fill_null(0) > 0) & (chosen["token_ids"].list.len().fill_null(0) > 0)
    missing = ~no_kd & ~has_logprobs
    if missing.any():
        rows = (missing.arg_true() + first).to_list()
        raise StillhouseError(
            f"{version.ref}: rows {_first_few(rows)} have no top-k logprobs in their chosen sample; format {fmt} "
            "needs them (export messages, openai-chat or sharegpt instead)"
        )
    out = []
    for index in range(frame.height):
        row_id = frame["id"][index]
        if no_kd[index]:
            left_out.append({"row": first + index, "id": row_id, "reason": "review-corrected: no teacher logprobs"})
            continue
        tokens = np.asarray(chosen["token_ids"][index], dtype=np.int64)
        top_ids = np.asarray(chosen["top_ids"][index].to_list(), dtype=np.int64)
        top_values = np.asarray(chosen["top_logprobs"][index].to_list(), dtype=np.float32)
        top_values[~np.isfinite(top_values)] = PLACEHOLDER_LOGPROB
        messages = [
            {"role": "user", "content": user_content(frame["instruction"][index], frame["input"][index])},
            {"role": "assistant", "content": frame["response"][index]},
        ]
        prompt = prompt_ids(tokenizer, frame["instruction"][index], frame["input"][index] or "")
        if fmt == "axolotl-kd":  # axolotl tokenizes `messages` itself: its ids must be the teacher's
            full = np.asarray(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False), np.int64)
        else:  # pre-tokenized: the prompt, the teacher's own tokens, the template's closing tokens
            full = np.concatenate([prompt, tokens, _closing_ids(tokenizer, messages)]).astype(np.int64)
        p, n, k = len(prompt), len(tokens), top_ids.shape[1]
        if full[:p].tolist() != prompt or full[p : p + n].tolist() != tokens.tolist():
            left_out.append(
                {
                    "row": first + index,
                    "id": row_id,
                    "reason": "the templated response does not re-tokenize to the "
                    "teacher's sampled tokens, so its logprob rows cannot be aligned",
                }  # fmt: skip
            )
            continue
        # row t: the distribution over full[t + 1]; the teacher's rows sit at p - 1 ... p + n - 2
        next_ids = np.append(full[1:], tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0)
        ids, values = _one_hot(next_ids, k, len(tokenizer))
        ids[p - 1 : p - 1 + n], values[p - 1 : p - 1 + n] = top_ids, top_values
        if fmt == "axolotl-kd":
            out.append({"messages": messages, "target_token_ids": ids[p - 1 :].tolist(),
                        "logprobs": values[p - 1 :].tolist()})  # fmt: skip
        else:
            labels = np.full(len(full), -100, dtype=np.int64)
            labels[p : p + n] = full[p : p + n]
            out.append({"input_ids": full.tolist(), "attention_mask": [1] * len(full), "labels": labels.tolist(),
                        "token_ids": ids.tolist(), "top_values": values.tolist()})  # fmt: skip
    return out


def export_version(
    version: DatasetVersion, fmt: ExportFormat, out_dir: Path, tokenizer_path: str | None = None
) -> dict[str, Any]:
    """Write `version` as `fmt` into the new directory `out_dir` (whole or not at all); returns the metadata."""
    if fmt not in FORMATS:
        raise StillhouseError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise StillhouseError(f"--out {out_dir} exists and is not empty; export into a new directory")
    tokenizer = None
    if fmt in KD_FORMATS:
        if not tokenizer_path:
            raise StillhouseError(
                f"format {fmt} lays the logprobs on the student's chat template: pass --tokenizer DIR"
            )
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)

    staging = out_dir.parent / f".tmp-{out_dir.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    left_out: list[dict] = []
    written, hashes, names, k = 0, set(), set(), None
    writer = None
    try:
        chat = fmt not in KD_FORMATS
        with open(staging / "data.jsonl", "w", encoding="utf-8") if chat else contextlib.nullcontext() as jsonl:
            for first, frame in version_blocks(version, COLUMNS):
                if "teacher" in frame.columns:
                    hashes.update(h for h in frame["teacher"].struct.field("tokenizer_hash").unique() if h)
                    names.update(t for t in frame["teacher"].struct.field("tokenizer").unique() if t)
                if fmt not in KD_FORMATS:
                    for row in _chat_rows(version, first, frame, fmt):
                        jsonl.write(json.dumps(row, ensure_ascii=False) + "\n")
                        written += 1
                    continue
                rows = _kd_rows(version, first, frame, tokenizer, fmt, left_out)
                if not rows:
                    continue
                k = k or len((rows[0].get("target_token_ids") or rows[0]["token_ids"])[0])
                table = pa.Table.from_pylist(rows)
                writer = writer or pq.ParquetWriter(staging / "data.parquet", table.schema)
                writer.write_table(table)
                written += len(rows)
        if writer is not None:
            writer.close()
        if written == 0:
            raise StillhouseError(f"{version.ref}: no row could be exported as {fmt} ({len(left_out)} left out)")
        if tokenizer is not None:
            student_hash = tokenizer_hash(tokenizer)
            if hashes and hashes != {student_hash}:
                raise StillhouseError(
                    f"{version.ref}: teacher tokenizer hash {sorted(hashes)} differs from --tokenizer {tokenizer_path} "
                    f"hash {student_hash}: the stored token ids would not mean the same tokens"
                )
        metadata = {
            "dataset": version.ref,
            "manifest_sha256": version.manifest_sha256,
            "format": fmt,
            "file": "data.parquet" if fmt in KD_FORMATS else "data.jsonl",
            "rows": written,
            "left_out": left_out,
            "teacher_tokenizer": sorted(names),
            "tokenizer_hash": sorted(hashes),
            "label_set": version.label_set,
            "top_k": k,
            "placeholder_logprob": PLACEHOLDER_LOGPROB if fmt in KD_FORMATS else None,
        }
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
        return metadata
    finally:
        shutil.rmtree(staging, ignore_errors=True)
