"""Respond: n teacher samples per instruction with top-k logprobs; one is chosen as `response`.

Choice rule: among the samples that finished on their own (`finish_reason == "stop"`)
and, with chain of thought, that state a final answer, the one with the highest mean
token logprob (the teacher's most confident complete answer). If no sample qualifies
the rule falls back to every sample; samples without logprobs rank last, ties go to
the earliest. The chosen index is kept in `chosen_sample`.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from factory.shards import ShardWriter
from factory.tasks.base import (
    ShardBuffer,
    Task,
    answer_rows,
    failure_reason,
    generation_columns,
    prompt_text,
    rejected,
    require_columns,
    stable_seed,
)
from factory.tasks.config import RespondConfig
from factory.tasks.parsing import extract_final_answer
from factory.teachers.base import Generation, Sample, Teacher, TeacherRequest

STAGE = "respond"

CHAIN_OF_THOUGHT_PROMPT = (
    "Work through the problem step by step before answering. When you are done, write the answer "
    "on its own last line, starting with 'Final answer:'."
)


def mean_logprob(sample: Sample) -> float:
    return sum(sample.logprobs) / len(sample.logprobs) if sample.logprobs else -math.inf


def choose_sample(samples: list[Sample], need_final_answer: bool = False) -> int:
    """Index of the chosen sample (see the module docstring for the rule)."""
    eligible = [
        i
        for i, sample in enumerate(samples)
        if sample.finish_reason == "stop" and (not need_final_answer or extract_final_answer(sample.text))
    ]
    if not eligible:
        stopped = [i for i, sample in enumerate(samples) if sample.finish_reason == "stop"]
        eligible = stopped or list(range(len(samples)))
    return max(eligible, key=lambda i: (mean_logprob(samples[i]), -i))


class Respond(Task):
    stage = STAGE

    def __init__(self, config: RespondConfig) -> None:
        self.config = config

    def estimate_requests(self, n_records: int) -> int:
        return n_records  # one request of n samples per record

    def request(self, row: dict[str, Any]) -> TeacherRequest:
        config = self.config
        system = config.system_prompt
        if config.chain_of_thought:
            system = f"{system}\n\n{CHAIN_OF_THOUGHT_PROMPT}" if system else CHAIN_OF_THOUGHT_PROMPT
        return TeacherRequest.chat(
            prompt_text(row["instruction"], row.get("input")),
            system=system,
            n=config.n,
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=config.max_tokens,
            top_logprobs=config.top_logprobs,
            seed=stable_seed(config.seed, STAGE, row["id"]),
        )

    def answer(self, row: dict[str, Any], generation: Generation) -> dict[str, Any]:
        if not generation.ok or not generation.samples:
            return rejected(row, STAGE, failure_reason(generation))
        chosen = choose_sample(generation.samples, self.config.chain_of_thought)
        answered = {**row, **generation_columns(generation, chosen), "chosen_sample": chosen}
        if self.config.chain_of_thought:
            answered["final_answer"] = extract_final_answer(generation.samples[chosen].text)
        return answered

    async def run(self, records: pl.DataFrame, teacher: Teacher, shards: ShardWriter | None = None) -> pl.DataFrame:
        require_columns(records, ["id", "instruction", "input", "origin"], STAGE)
        buffer = ShardBuffer(shards, self.config.shard_size)
        await answer_rows(
            teacher, records.to_dicts(), self.request, self.answer, buffer, self.config.batch_size, "respond"
        )
        return buffer.finish()
