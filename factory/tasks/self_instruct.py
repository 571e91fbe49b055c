"""Self-Instruct (Wang et al., 2022): grow a task pool from human seed tasks.

Each round asks the teacher to continue a numbered list of in-context instructions
sampled from the pool (human seeds plus, once there are some, machine ones), parses
the new items, filters them (ROUGE-L novelty against the whole pool, unsuitable for
a text model, too short/long, bad start), asks whether each kept one is a
classification task, and generates up to `instances_per_task` (5, as the paper)
instances: input-first, or output-first (label then input) for classification so
every class gets examples. Each surviving instance becomes one record (the
instruction with that instance's input; its generated output in `instance_output`).
The paper's instance filters apply: an empty output, an output that copies the
input, an input or output ending in ':' drop that instance; one input given two
different outputs drops the whole task; duplicates collapse. Rounds repeat until the
pool has `target_size` machine instructions or `max_rounds` have run.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from tqdm.auto import tqdm

from factory.errors import SchemaError
from factory.shards import ShardWriter
from factory.tasks.base import (
    ShardBuffer,
    Task,
    failure_reason,
    first_text,
    generate_batched,
    live_records,
    new_record,
    rejected,
    require_columns,
    stable_seed,
)
from factory.tasks.config import SelfInstructConfig
from factory.tasks.instruction_filters import (
    BadStart,
    EmptyOutput,
    EndsWithColon,
    OutputCopiesInput,
    SameInputDifferentOutput,
    TooLong,
    TooShort,
    TooSimilar,
    UnsuitableForText,
)
from factory.tasks.novelty import RougeLPool
from factory.tasks.parsing import Instance, parse_instances, parse_numbered_list, parse_yes_no
from factory.teachers.base import Teacher, TeacherRequest

STAGE = "self_instruct"
NUMBER_START = re.compile(r"^\s*(?:\*\*)?(?:#\s*|task\s+)?\d{1,3}\s*[.):]", re.I)

GENERATE_PROMPT = (
    "We are collecting a varied set of tasks that people might give to an AI assistant that "
    "reads and writes text only. Below is the start of a numbered list of such tasks. Continue "
    "the list with new tasks, numbering them up to {last}. Each new task should differ from "
    "every task already listed: change the topic, the verb and the kind of work (questions, "
    "rewriting, classification, open-ended writing, reasoning, extraction...). Keep each task "
    "to one or two self-contained sentences that can be answered with text alone.\n\n{examples}\n{next}."
)
CLASSIFY_PROMPT = (
    "Would a correct answer to the task below be one choice from a small, fixed set of categories "
    "or labels (a classification task)? Reply with yes or no.\n\nTask: {instruction}"
)
INPUT_FIRST_PROMPT = (
    "Write {count} example instances of the task below. For each, give the input the task "
    "should be applied to and then the correct output. When the task needs no input, write "
    "'Input: <noinput>'. Lay each instance out as:\nInput: ...\nOutput: ...\n\nTask: {instruction}"
)
OUTPUT_FIRST_PROMPT = (
    "The task below asks to pick a class label. Name up to {count} of its possible labels and, "
    "for each label, write an input that belongs to it. Lay each one out as:\nLabel: ...\n"
    "Input: ...\n\nTask: {instruction}"
)


def load_seed_tasks(path: Path | str) -> pl.DataFrame:
    """Seed tasks in Self-Instruct's JSONL format (id, name, instruction, instances, is_classification).

    Returns seed records: instruction, input (first instance's input), origin `seed`,
    plus `is_classification`. Raises SchemaError naming the file and line of a bad row.
    """
    rows = []
    path = Path(path)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            task = json.loads(line)
            instruction = str(task["instruction"]).strip()
            instances = task.get("instances") or []
            first_input = str(instances[0].get("input") or "") if instances else ""
            is_classification = bool(task.get("is_classification", False))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise SchemaError(f"{path}:{number}: not a seed task ({type(exc).__name__}: {exc})") from None
        if not instruction:
            raise SchemaError(f"{path}:{number}: field 'instruction' is empty")
        rows.append(new_record(instruction, first_input, "seed", is_classification=is_classification))
    frame = pl.DataFrame(rows, schema_overrides={"parent_id": pl.String}).unique(subset="id", maintain_order=True)
    return frame


@dataclass
class _Pool:
    human: list[str]
    machine: list[str] = field(default_factory=list)


class SelfInstruct(Task):
    stage = STAGE

    def __init__(self, config: SelfInstructConfig) -> None:
        self.config = config
        self.stats: dict[str, int] = {}
        self.instance_filters = [EmptyOutput(), OutputCopiesInput(), EndsWithColon()]
        self.same_input_different_output = SameInputDifferentOutput()

    def estimate_requests(self, n_records: int) -> int:
        # every round's prompts, then one classification and one instance request per kept instruction
        return self.config.max_rounds * self.config.prompts_per_round + 2 * self.config.target_size

    def _filters(self, rouge_pool: RougeLPool) -> list[Any]:
        return [
            BadStart(),
            TooShort(self.config.min_words),
            TooLong(self.config.max_words),
            UnsuitableForText(),
            TooSimilar(rouge_pool, self.config.rouge_threshold),
        ]

    def _generation_request(self, pool: _Pool, rng: random.Random, round_index: int, prompt_index: int):
        config = self.config
        machine = rng.sample(pool.machine, min(config.machine_examples, len(pool.machine)))
        human_count = min(config.human_examples + config.machine_examples - len(machine), len(pool.human))
        examples = rng.sample(pool.human, human_count) + machine
        rng.shuffle(examples)
        listed = "\n".join(f"{number}. {text}" for number, text in enumerate(examples, start=1))
        prompt = GENERATE_PROMPT.format(last=config.list_length, examples=listed, next=len(examples) + 1)
        request = TeacherRequest.chat(
            prompt,
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=config.max_tokens,
            seed=stable_seed(config.seed, "self_instruct", round_index, prompt_index),
            presence_penalty=config.presence_penalty,
            frequency_penalty=config.frequency_penalty,
        )
        return request, len(examples) + 1

    async def run(self, records: pl.DataFrame, teacher: Teacher, shards: ShardWriter | None = None) -> pl.DataFrame:
        require_columns(records, ["instruction"], STAGE)
        records = live_records(records)
        if records.height == 0:
            raise SchemaError("task 'self_instruct': no seed records to start the pool from")
        config = self.config
        human = list(dict.fromkeys(records["instruction"].to_list()))
        pool = _Pool(human=human)
        rouge_pool = RougeLPool(human)
        filters = self._filters(rouge_pool)
        rng = random.Random(config.seed)
        buffer = ShardBuffer(shards, config.shard_size)
        emitted: set[str] = set()
        self.stats = {
            "rounds": 0,
            "candidates": 0,
            "kept": 0,
            "rejected": 0,
            "repeated": 0,
            "failed_requests": 0,
            "duplicate_instances": 0,
        }

        with tqdm(total=config.target_size, desc="self-instruct pool", unit="instr") as bar:
            for round_index in range(config.max_rounds):
                if len(pool.machine) >= config.target_size:
                    break
                self.stats["rounds"] += 1
                built = [self._generation_request(pool, rng, round_index, i) for i in range(config.prompts_per_round)]
                generations = await generate_batched(
                    teacher,
                    [request for request, _ in built],
                    f"self-instruct round {round_index + 1}",
                    config.batch_size,
                )
                kept: list[dict[str, Any]] = []
                for generation, (_, next_number) in zip(generations, built):
                    text = first_text(generation)
                    if text is None:
                        self.stats["failed_requests"] += 1
                        continue
                    if not NUMBER_START.match(text):  # the prompt ended with "N." and the reply continues it
                        text = f"{next_number}. {text}"
                    truncated = generation.samples[0].finish_reason == "length"
                    for instruction in parse_numbered_list(text, truncated=truncated):
                        if len(pool.machine) >= config.target_size:
                            break
                        self.stats["candidates"] += 1
                        row = new_record(instruction, "", "self_instruct")
                        if row["id"] in emitted:  # the very same text again: its row (and reason) exists
                            self.stats["repeated"] += 1
                            continue
                        emitted.add(row["id"])
                        reason = next((r for f in filters if (r := f.check(instruction)) is not None), None)
                        if reason is not None:
                            self.stats["rejected"] += 1
                            buffer.add([rejected(row, STAGE, reason)])
                            continue
                        pool.machine.append(instruction)
                        rouge_pool.add(instruction)
                        kept.append(row)
                        bar.update(1)
                rows = await self._add_instances(kept, teacher, round_index)
                self.stats["kept"] += sum(1 for row in rows if row.get("drop_stage") is None)
                buffer.add(rows)
        return buffer.finish()

    async def _add_instances(self, kept: list[dict[str, Any]], teacher: Teacher, round_index: int):
        """Classification identification, then instance generation, for this round's new instructions."""
        if not kept:
            return []
        config = self.config

        def request(prompt: str, instruction: str, purpose: str, max_tokens: int, **penalties: float) -> TeacherRequest:
            seed = stable_seed(config.seed, purpose, instruction)
            return TeacherRequest.chat(prompt, temperature=0.0, max_tokens=max_tokens, seed=seed, **penalties)

        verdicts = await generate_batched(
            teacher,
            [request(CLASSIFY_PROMPT.format(instruction=r["instruction"]), r["instruction"], "cls", 8) for r in kept],
            f"classify round {round_index + 1}",
            config.batch_size,
        )
        is_classification = [parse_yes_no(first_text(generation)) is True for generation in verdicts]
        prompts = [
            (OUTPUT_FIRST_PROMPT if cls else INPUT_FIRST_PROMPT).format(
                count=config.instances_per_task, instruction=row["instruction"]
            )
            for row, cls in zip(kept, is_classification)
        ]
        instance_generations = await generate_batched(
            teacher,
            [
                request(
                    prompt,
                    row["instruction"],
                    "instances",
                    config.max_tokens,
                    presence_penalty=config.instance_presence_penalty,
                    frequency_penalty=config.instance_frequency_penalty,
                )
                for prompt, row in zip(prompts, kept)
            ],
            f"instances round {round_index + 1}",
            config.batch_size,
        )
        rows = []
        for row, verdict, cls, generation in zip(kept, verdicts, is_classification, instance_generations):
            if not verdict.ok:
                rows.append(rejected(row, STAGE, failure_reason(verdict)))
                continue
            if not generation.ok:
                rows.append(rejected(row, STAGE, failure_reason(generation)))
                continue
            instances = parse_instances(first_text(generation), first="label" if cls else "input")
            rows.extend(self._instance_rows(row, cls, instances[: config.instances_per_task]))
        return rows

    def _instance_rows(self, task: dict[str, Any], cls: bool, instances: list[Instance]) -> list[dict[str, Any]]:
        """One record per surviving instance (its input becomes the record's input, its output is kept
        as `instance_output`); filtered instances are returned dropped, with their reason."""
        if not instances:
            return [rejected(task, STAGE, "no_instances: none parsed")]
        reason = self.same_input_different_output.check(instances)
        if reason is not None:
            return [rejected(task, STAGE, reason)]
        judged = []
        for instance in instances:
            record = new_record(
                task["instruction"], instance.input, STAGE, is_classification=cls, instance_output=instance.output
            )
            reason = next((r for f in self.instance_filters if (r := f.check(instance)) is not None), None)
            judged.append(record if reason is None else rejected(record, STAGE, reason))
        # Instances with the same input are the same prompt (one record); a valid one wins.
        rows: dict[str, dict[str, Any]] = {}
        for record in sorted(judged, key=lambda record: record.get("drop_stage") is not None):
            if record["id"] in rows:
                self.stats["duplicate_instances"] += 1
            else:
                rows[record["id"]] = record
        return list(rows.values())
