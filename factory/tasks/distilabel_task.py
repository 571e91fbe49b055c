"""Run any distilabel `Task` on our teachers: its prompts and parsers, our engine.

The distilabel task builds chat messages (`format_input`) and parses the teacher's
text (`format_output`); Stillhouse sends the requests (cache, limits, budget,
logprobs) instead of distilabel's Pipeline, which is not used. distilabel tasks
require an `llm` at construction: `EngineSlot` fills that slot and refuses to be
called, since generation never goes through it.
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import polars as pl

from factory.errors import ConfigError, SchemaError
from factory.shards import ShardWriter
from factory.tasks.base import ShardBuffer, Task, answer_rows, failure_reason, rejected, stable_seed
from factory.tasks.config import DistilabelConfig
from factory.teachers.base import Generation, Teacher, TeacherRequest

STAGE = "distilabel"


@contextmanager
def distilabel_quietly() -> Iterator[None]:
    """Import or build distilabel objects without distilabel's side effects on our output.

    distilabel's `__init__` installs rich's traceback handler with `show_locals=True` (about
    1,200 lines after any error), its task classes emit pydantic warnings when imported
    and built, and a step built outside a distilabel Pipeline logs a warning about it (we
    never use that Pipeline); none may reach a Stillhouse user. Every distilabel import and
    task construction goes through here.
    """
    logging.getLogger("distilabel").setLevel(logging.ERROR)
    hook = sys.excepthook
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.excepthook = hook


def import_distilabel(module: str) -> ModuleType:
    """`importlib.import_module(module)` inside `distilabel_quietly`."""
    with distilabel_quietly():
        return importlib.import_module(module)


def _engine_slot_class() -> type:
    LLM = import_distilabel("distilabel.models.llms.base").LLM

    class EngineSlot(LLM):
        """Placeholder LLM: Stillhouse's teacher generates, so this is never asked to."""

        @property
        def model_name(self) -> str:
            return "stillhouse-teacher"

        def load(self) -> None:
            return None

        def generate(self, inputs: Any, num_generations: int = 1, **kwargs: Any) -> Any:
            raise RuntimeError("generation goes through Stillhouse's teacher, not distilabel's LLM")

    return EngineSlot


def load_distilabel_task(path: str, params: dict[str, Any]) -> Any:
    """Import `module.Class`, build it with `params` and load it (templates, prompts)."""
    module_name, _, class_name = path.rpartition(".")
    try:
        task_class = getattr(import_distilabel(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"task 'distilabel': cannot import {path!r} ({exc})") from None
    DistilabelTask = import_distilabel("distilabel.steps.tasks.base").Task

    if not (isinstance(task_class, type) and issubclass(task_class, DistilabelTask)):
        raise ConfigError(f"task 'distilabel': {path!r} is not a distilabel Task")
    with distilabel_quietly():
        try:
            task = task_class(llm=_engine_slot_class()(), **params)
        except Exception as exc:  # pydantic validation of the task's own fields
            raise ConfigError(f"task 'distilabel': {path} rejects params {sorted(params)}: {exc}") from None
        task.load()
    return task


class DistilabelTaskAdapter(Task):
    stage = STAGE

    def __init__(self, config: DistilabelConfig) -> None:
        self.config = config
        self.task = load_distilabel_task(config.task, config.params)
        inputs = self.task.inputs
        required = [name for name, needed in inputs.items() if needed] if isinstance(inputs, dict) else list(inputs)
        self.required_inputs = required

    def estimate_requests(self, n_records: int) -> int:
        return n_records

    def _input(self, row: dict[str, Any]) -> dict[str, Any]:
        values = {}
        for name in self.required_inputs:
            column = self.config.input_mapping.get(name, name)
            if column not in row:
                raise SchemaError(
                    f"task 'distilabel' ({self.config.task}): input '{name}' needs column '{column}', "
                    f"absent from the records (set input_mapping)"
                )
            values[name] = row[column]
        return values

    def _request(self, row: dict[str, Any], task_input: dict[str, Any]) -> TeacherRequest:
        messages = self.task.format_input(task_input)
        return TeacherRequest(
            messages=tuple((message["role"], message["content"]) for message in messages),
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
            top_logprobs=self.config.top_logprobs,
            seed=stable_seed(self.config.seed, STAGE, self.config.task, row["id"]),
        )

    def answer(self, row: dict[str, Any], generation: Generation) -> dict[str, Any]:
        if not generation.ok or not generation.samples:
            return rejected(row, STAGE, failure_reason(generation))
        parsed = self.task.format_output(generation.samples[0].text, self._input(row))
        mapped = {self.config.output_mapping.get(key, key): value for key, value in parsed.items()}
        return {
            **row,
            **mapped,
            "samples": [sample.as_record() for sample in generation.samples],
            "teacher": generation.teacher.record(generation.request),
        }

    async def run(self, records: pl.DataFrame, teacher: Teacher, shards: ShardWriter | None = None) -> pl.DataFrame:
        buffer = ShardBuffer(shards, self.config.shard_size)
        rows = records.to_dicts()
        for row in rows[:1]:  # a missing input column fails before any request is sent
            self._input(row)
        await answer_rows(
            teacher,
            rows,
            lambda row: self._request(row, self._input(row)),
            self.answer,
            buffer,
            self.config.batch_size,
            f"distilabel {self.task.__class__.__name__}",
        )
        return buffer.finish()
