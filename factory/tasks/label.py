"""Label: classification over a fixed label set, with the teacher's soft targets.

Two sources of probabilities:
- `logprobs` (an LLM teacher): the teacher is asked for the label; the logprobs of
  each label's first token at the answer position, read from the top-k, are
  normalised over the label set with a softmax at `temperature`. A label missing
  from the top-k gets an even share of the residual mass (1 - top-k mass), capped
  at the smallest listed probability, since an unlisted token cannot be likelier
  than a listed one. Labels must differ in their first token.
- `classifier` (a classifier teacher): its `class_probs`, reordered to the label set
  (and sharpened/softened by `temperature` the same way).
`label` is the argmax; `label_probs` (float32, sums to 1) follows the order of
`labels`. The temperature and source are recorded in the teacher's params.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import polars as pl

from factory.errors import ConfigError
from factory.schema import canonical_json
from factory.shards import ShardWriter
from factory.tasks.base import ShardBuffer, Task, answer_rows, failure_reason, rejected, require_columns, stable_seed
from factory.tasks.config import LabelConfig
from factory.teachers.base import Generation, Sample, Teacher, TeacherRequest

STAGE = "label"

LABEL_PROMPT = "{instruction}\n\nText:\n{text}\n\nReply with exactly one of these labels and nothing else: {labels}"


def label_first_tokens(labels: list[str], tokenizer: Any) -> list[int]:
    """The token id each label starts with; raises ConfigError when two labels share it."""
    ids = []
    for label in labels:
        encoded = tokenizer.encode(label, add_special_tokens=False)
        if not encoded:
            raise ConfigError(f"task 'label': label {label!r} encodes to no token")
        ids.append(int(encoded[0]))
    seen: dict[int, str] = {}
    for label, token_id in zip(labels, ids):
        if token_id in seen:
            raise ConfigError(
                f"task 'label': labels {seen[token_id]!r} and {label!r} start with the same token, so their "
                "logprobs cannot be told apart; rename them or use a classifier teacher"
            )
        seen[token_id] = label
    return ids


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    scaled = logits / temperature
    scaled = scaled - scaled.max()
    weights = np.exp(scaled)
    probs = (weights / weights.sum()).astype(np.float32)
    return probs / probs.sum()


def label_logprobs(sample: Sample, label_ids: list[int]) -> np.ndarray | None:
    """Logprob of each label's first token at the answer position, or None when no label is in the top-k.

    The answer position is the first one where the teacher sampled a label token,
    else the first position.
    """
    if not sample.top_ids:
        return None
    wanted = set(label_ids)
    position = next((p for p, token in enumerate(sample.token_ids) if token in wanted), 0)
    if position >= len(sample.top_ids):
        return None
    listed = dict(zip(sample.top_ids[position], sample.top_logprobs[position]))
    if position < len(sample.token_ids) and position < len(sample.logprobs):
        listed.setdefault(sample.token_ids[position], sample.logprobs[position])
    if not wanted & listed.keys():
        return None
    missing = [token for token in label_ids if token not in listed]
    values = dict(listed)
    if missing:
        listed_probs = np.exp(np.array(list(listed.values()), dtype=np.float64))
        residual = max(0.0, 1.0 - float(listed_probs.sum()))
        share = min(residual / len(missing), float(listed_probs.min()))
        for token in missing:
            values[token] = math.log(max(share, 1e-12))
    return np.array([values[token] for token in label_ids], dtype=np.float64)


class Label(Task):
    stage = STAGE

    def __init__(self, config: LabelConfig) -> None:
        self.config = config

    def estimate_requests(self, n_records: int) -> int:
        return n_records

    def _source(self, teacher: Teacher) -> str:
        if self.config.source != "auto":
            return self.config.source
        return "classifier" if teacher.identity.backend == "classifier" else "logprobs"

    def _request(self, row: dict[str, Any], source: str) -> TeacherRequest:
        text = row.get("input") or row["instruction"]
        seed = stable_seed(self.config.seed, STAGE, row["id"])
        if source == "classifier":
            return TeacherRequest.chat(text, max_tokens=1, seed=seed)
        task = row["instruction"] if row.get("input") else "Classify the text."
        prompt = LABEL_PROMPT.format(instruction=task, text=text, labels=", ".join(self.config.labels))
        return TeacherRequest.chat(
            prompt, temperature=0.0, max_tokens=8, top_logprobs=self.config.top_logprobs, seed=seed
        )

    def _classifier_order(self, teacher: Teacher) -> list[int]:
        """Index into the classifier's class_probs for each configured label."""
        teacher_labels = list(teacher.identity.labels)
        missing = [label for label in self.config.labels if label not in teacher_labels]
        extra = [label for label in teacher_labels if label not in self.config.labels]
        if missing or extra:
            raise ConfigError(
                f"task 'label': the classifier teacher's labels do not match the label set "
                f"(missing from teacher: {missing}, not in label set: {extra})"
            )
        return [teacher_labels.index(label) for label in self.config.labels]

    def _tokenizer(self, teacher: Teacher) -> Any:
        from factory.teachers.local_models import load_tokenizer

        name = self.config.tokenizer or teacher.identity.tokenizer
        if not name:
            raise ConfigError(
                "task 'label': the teacher names no tokenizer; set `tokenizer` so label tokens can be found"
            )
        return load_tokenizer(name)

    def _probabilities(self, generation: Generation, source: str, order: list[int], label_ids: list[int]):
        if source == "classifier":
            if generation.class_probs is None:
                return None, "no_class_probs"
            probs = np.asarray(generation.class_probs, dtype=np.float64)[order]
            return softmax(np.log(np.clip(probs, 1e-12, None)), self.config.temperature), None
        if not generation.samples:
            return None, "no_sample"
        logprobs = label_logprobs(generation.samples[0], label_ids)
        if logprobs is None:
            return None, "no_label_in_top_k"
        return softmax(logprobs, self.config.temperature), None

    def _teacher_struct(self, generation: Generation, source: str) -> dict[str, Any]:
        teacher = generation.teacher.record(generation.request)
        params = json.loads(teacher["params"])
        params.update(label_source=source, label_temperature=self.config.temperature)
        return {**teacher, "params": canonical_json(params)}

    async def run(self, records: pl.DataFrame, teacher: Teacher, shards: ShardWriter | None = None) -> pl.DataFrame:
        require_columns(records, ["id", "instruction", "input", "origin"], STAGE)
        source = self._source(teacher)
        order = self._classifier_order(teacher) if source == "classifier" else []
        label_ids = label_first_tokens(self.config.labels, self._tokenizer(teacher)) if source == "logprobs" else []
        buffer = ShardBuffer(shards, self.config.shard_size)

        def answer(row: dict[str, Any], generation: Generation) -> dict[str, Any]:
            if not generation.ok:
                return rejected(row, STAGE, failure_reason(generation))
            probs, problem = self._probabilities(generation, source, order, label_ids)
            if probs is None:
                return rejected(row, STAGE, problem)
            return {
                **row,
                "label": self.config.labels[int(np.argmax(probs))],
                "label_probs": probs.tolist(),
                "samples": [sample.as_record() for sample in generation.samples] or None,
                "teacher": self._teacher_struct(generation, source),
            }

        await answer_rows(
            teacher,
            records.to_dicts(),
            lambda row: self._request(row, source),
            answer,
            buffer,
            self.config.batch_size,
            "label",
        )
        return buffer.finish()
