"""`stillhouse run --dry-run`: what a run would cost, before it spends anything.

Every teacher request the run would make is counted: each task's and the judge's.
Requests a task builds straight from the records (respond, label, evolution's first
round, self-instruct's first round) are built for real from the task's own prompt
templates and tokenised with the teacher's tokenizer where one is known (a vLLM or
transformers model directory, an OpenAI teacher's `tokenizer`, a classifier's own
tokenizer); elsewhere ~4 characters per token plus the chat template's overhead.
Requests that depend on what the teacher answers (evolution's later rounds, the
judge's view of a response) are priced from the requests they follow, with the
response at its `max_tokens` bound. Completion tokens are always the upper bound
(`n * max_tokens`: what the budget reserves), so actual completions come in lower.
Prices are the batch rate when `mode: batch`. Stages under `prefilter:` are run on the
seeds here too (they need no teacher), so the requests they save are not counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from rich.table import Table

from factory.teachers.base import TeacherRequest
from stillhouse.config import RunConfig
from stillhouse.seeds import load_seeds

CHARS_PER_TOKEN = 4  # the usual rule of thumb for English with BPE tokenizers
TEMPLATE_TOKENS_PER_MESSAGE = 4  # role markers and separators of a chat template
SAMPLE_ROWS = 2_000  # requests built and tokenised per step; the rest are priced at their mean


@dataclass
class StepEstimate:
    step: str
    records_in: int
    requests: int
    prompt_tokens: int
    completion_tokens: int  # upper bound: n * max_tokens per request
    how: str = ""


@dataclass
class RunEstimate:
    seeds: int
    steps: list[StepEstimate]
    usd: float | None
    tokenizer: str
    mode: str = "online"
    prefiltered: int = 0  # seeds the prefilter stages drop: requests never made
    notes: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.steps)

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.steps)

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.steps)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    # kept for callers of the first version
    @property
    def tasks(self) -> list[StepEstimate]:
        return self.steps

    def as_dict(self) -> dict[str, Any]:
        return {
            "seeds": self.seeds,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens_max": self.completion_tokens,
            "usd": self.usd,
            "mode": self.mode,
            "prefiltered": self.prefiltered,
            "tokenizer": self.tokenizer,
            "steps": [asdict(step) for step in self.steps],
        }


class PromptCounter:
    """Prompt tokens of a request, with the teacher's tokenizer where one is known."""

    def __init__(self, teacher: Any) -> None:
        self._count: Callable[[TeacherRequest], int] = _approximate
        self.name = f"~{CHARS_PER_TOKEN} chars/token (no tokenizer known for this teacher)"
        if teacher is None:
            return
        try:
            self._use_tokenizer_of(teacher)
        except Exception as error:  # noqa: BLE001 - an estimate falls back, and says so
            self.name += f"; its tokenizer did not load: {str(error).splitlines()[0][:120]}"

    def _use_tokenizer_of(self, teacher: Any) -> None:
        from factory.teachers.local_models import chat_prompt_ids, last_user_message, load_tokenizer

        backend = teacher.backend
        if backend == "classifier":
            tokenizer, name = _classifier_tokenizer(teacher)
            if tokenizer is not None:
                self._count = lambda r: len(tokenizer(last_user_message(r), truncation=True)["input_ids"])
                self.name = f"{name} (the classifier's own)"
            return
        name = getattr(teacher, "tokenizer", None) if backend == "openai" else teacher.model
        if backend != "openai" and not Path(name).is_dir():
            return
        if name:
            tokenizer = load_tokenizer(name)
            self._count = lambda r: len(chat_prompt_ids(tokenizer, r))
            self.name = str(name)

    def __call__(self, request: TeacherRequest) -> int:
        return self._count(request)


def _approximate(request: TeacherRequest) -> int:
    chars = sum(len(content) for _, content in request.messages)
    return round(chars / CHARS_PER_TOKEN) + TEMPLATE_TOKENS_PER_MESSAGE * (len(request.messages) + 1)


def _classifier_tokenizer(teacher: Any) -> tuple[Any, str]:
    import json

    from transformers import AutoTokenizer

    from factory.teachers.classifier import ENCODER_HEAD_CONFIG, default_encoder_path

    directory = Path(teacher.model)
    if teacher.kind == "hf":
        return (AutoTokenizer.from_pretrained(directory), str(directory)) if directory.is_dir() else (None, "")
    meta_file = directory / ENCODER_HEAD_CONFIG
    # Not trained yet (a dry run before `teacher_training`): the default encoder it will use.
    encoder = json.loads(meta_file.read_text())["encoder"] if meta_file.is_file() else default_encoder_path()
    return AutoTokenizer.from_pretrained(encoder), "/".join(Path(encoder).parts[-2:])


def _priced(requests: Sequence[TeacherRequest], total: int, count: PromptCounter) -> tuple[int, int]:
    """(prompt, completion bound) tokens of `total` requests like `requests` (a sample of them)."""
    sample = list(requests[:SAMPLE_ROWS])
    if not sample or not total:
        return 0, 0
    prompt = sum(count(r) for r in sample) / len(sample)
    completion = sum(r.n * r.max_tokens for r in sample) / len(sample)
    return round(prompt * total), round(completion * total)


def _rows(records: pl.DataFrame) -> list[dict[str, Any]]:
    live = records.filter(pl.col("drop_stage").is_null()) if "drop_stage" in records.columns else records
    return live.head(SAMPLE_ROWS).to_dicts()


def _task_steps(task_config: Any, records: pl.DataFrame, n_live: int, teacher: Any, count: PromptCounter):
    """Estimates for one task (one or more kinds of request) and the rows it hands on."""
    from factory.tasks import build_task
    from factory.tasks.base import prompt_text

    task = build_task(task_config)
    kind, rows = task_config.type, _rows(records)
    if kind == "respond":
        prompt, completion = _priced([task.request(row) for row in rows], n_live, count)
        return [StepEstimate(kind, n_live, n_live, prompt, completion, "from the records")], n_live, rows
    if kind == "label":
        source = task_config.source
        if source == "auto":
            source = "classifier" if teacher.backend == "classifier" else "logprobs"
        prompt, completion = _priced([task._request(row, source) for row in rows], n_live, count)
        if teacher.backend == "classifier":
            completion = 0  # a classifier returns probabilities, no tokens
        return [StepEstimate(kind, n_live, n_live, prompt, completion, "from the records")], n_live, rows
    if kind == "evol_instruct":
        from factory.tasks.evol_instruct import EQUALITY_PROMPT

        rounds = task_config.generations * n_live
        evolve = [task._evolve_request(row, task_config.mutations[0], 0) for row in rows]
        answer = [TeacherRequest.chat(prompt_text(row["instruction"], row.get("input")),
                                      max_tokens=task_config.response_max_tokens) for row in rows]  # fmt: skip
        steps = [StepEstimate("evol_instruct: evolve", n_live, rounds, *_priced(evolve, rounds, count),
                              "round 1 from the records"),
                 StepEstimate("evol_instruct: answer", n_live, rounds, *_priced(answer, rounds, count),
                              "at most one per evolution")]  # fmt: skip
        if task_config.check_information_gain:
            texts = [prompt_text(row["instruction"], row.get("input")) for row in rows]
            judge = [TeacherRequest.chat(EQUALITY_PROMPT.format(parent=t, evolved=t), max_tokens=8) for t in texts]
            steps.append(StepEstimate("evol_instruct: gain check", n_live, rounds, *_priced(judge, rounds, count),
                                      "at most one per evolution"))  # fmt: skip
        return steps, n_live * task_config.generations, rows
    if kind == "self_instruct":
        import random

        from factory.tasks.self_instruct import CLASSIFY_PROMPT, INPUT_FIRST_PROMPT, _Pool

        pool = _Pool(human=[row["instruction"] for row in rows])
        rng = random.Random(task_config.seed)
        prompts = task_config.max_rounds * task_config.prompts_per_round
        generate = [task._generation_request(pool, rng, 0, i)[0] for i in range(min(prompts, 50))]
        target = task_config.target_size
        classify = [TeacherRequest.chat(CLASSIFY_PROMPT.format(instruction=row["instruction"]), max_tokens=8)
                    for row in rows]  # fmt: skip
        instances = [TeacherRequest.chat(INPUT_FIRST_PROMPT.format(count=task_config.instances_per_task,
                                                                   instruction=row["instruction"]),
                                         max_tokens=task_config.max_tokens) for row in rows]  # fmt: skip
        return [StepEstimate("self_instruct: generate", n_live, prompts, *_priced(generate, prompts, count),
                             "at most (stops at target_size)"),
                StepEstimate("self_instruct: classify", target, target, *_priced(classify, target, count), ""),
                StepEstimate("self_instruct: instances", target, target, *_priced(instances, target, count), "")
                ], target, []  # fmt: skip
    requests = task.estimate_requests(n_live)
    samples, max_tokens = getattr(task_config, "n", 1) or 1, getattr(task_config, "max_tokens", 0) or 0
    approx = [TeacherRequest.chat(prompt_text(row["instruction"], row.get("input")), n=samples, max_tokens=max_tokens)
              for row in rows]  # fmt: skip
    step = StepEstimate(kind, n_live, requests, *_priced(approx, requests, count), "the record text only")
    return [step], n_live, rows


def _judge_step(stage: Any, rows_in: int, rows: list[dict], response_tokens: int, count: PromptCounter):
    from curation.stages.judge import RUBRIC_1_10, SYSTEM

    def request(row: dict) -> TeacherRequest:
        input_block = f"\nInput:\n{row['input']}\n" if row.get("input") else ""
        user = RUBRIC_1_10.format(instruction=row["instruction"], input_block=input_block, response="")
        return TeacherRequest.chat(user, system=SYSTEM, max_tokens=stage.max_tokens)

    prompt, completion = _priced([request(row) for row in rows], rows_in, count)
    return StepEstimate(
        f"judge ({stage.rubric})", rows_in, rows_in, prompt + response_tokens * rows_in, completion,
        "one per row (+1 per unparsable reply)",
    )  # fmt: skip


def estimate_run(config: RunConfig) -> RunEstimate:
    from factory.teachers import estimate_cost

    seeds = config.seeds
    records, _ = load_seeds(
        seeds.path,
        format=seeds.format,
        columns=seeds.columns.model_dump(),
        instruction=seeds.instruction,
        limit=seeds.limit,
    )
    records, prefiltered = _prefilter(config, records)
    teacher = config.teacher
    count = PromptCounter(teacher)
    steps: list[StepEstimate] = []
    n_live = records.height - prefiltered
    rows, response_tokens = _rows(records), 0
    for task_config in config.tasks:
        task_steps, n_live, next_rows = _task_steps(task_config, records, n_live, teacher, count)
        steps.extend(task_steps)
        rows = next_rows or rows
        response_tokens = getattr(task_config, "max_tokens", 0) or response_tokens
    for stage in config.curation:
        if getattr(stage, "stage", "") == "judge":
            steps.append(_judge_step(stage, n_live, rows, response_tokens, count))
    usd = None
    if teacher is not None and teacher.prices is not None:
        usd = sum(estimate_cost(teacher, 1, s.prompt_tokens, s.completion_tokens) for s in steps)
    mode = getattr(teacher, "mode", "online") if teacher is not None else "online"
    return RunEstimate(seeds=records.height, steps=steps, usd=usd, tokenizer=count.name, mode=mode,
                       prefiltered=prefiltered)  # fmt: skip


def requests_per_record(config: RunConfig) -> int:
    """Teacher requests one seed record leads to (what a prefiltered record saves): each
    task's per-record requests and one per judge stage. Self-instruct seeds only seed the
    pool, so they count nothing."""
    from factory.tasks import build_task

    per_task = sum(build_task(t).estimate_requests(1) for t in config.tasks if t.type != "self_instruct")
    return per_task + sum(1 for stage in config.curation if getattr(stage, "stage", "") == "judge")


def _prefilter(config: RunConfig, records: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """The seeds with the `prefilter:` stages applied (they need no teacher); and how many they drop."""
    stages = getattr(config, "prefilter", None) or []
    if not stages:
        return records, 0
    from rich.console import Console

    from curation.pipeline import run_stages
    from curation.stages import build_stage
    from curation.store import DatasetStore

    store = DatasetStore(config.publish.root)  # where `against:` refs resolve, as in the run
    built = [build_stage(stage, store=store) for stage in stages]
    filtered, _ = run_stages(records, built, console=Console(quiet=True))
    dropped = int(filtered["drop_stage"].is_not_null().sum()) if "drop_stage" in filtered.columns else 0
    return filtered, dropped


def estimate_table(estimate: RunEstimate) -> Table:
    price = "batch price" if estimate.mode == "batch" else "online price"
    table = Table(
        "step", "records in", "requests", "prompt tokens", "completion tokens (max)", "how",
        title=f"dry run: nothing was sent (prompt tokens: {estimate.tokenizer})",
    )  # fmt: skip
    for step in estimate.steps:
        table.add_row(
            step.step,
            str(step.records_in),
            f"{step.requests:,}",
            f"{step.prompt_tokens:,}",
            f"{step.completion_tokens:,}",
            step.how,
        )
    cost = "no price table" if estimate.usd is None else f"${estimate.usd:,.2f} ({price})"
    seeds = f"{estimate.seeds} seeds" + (f", {estimate.prefiltered} prefiltered" if estimate.prefiltered else "")
    table.add_row(
        "total", seeds, f"{estimate.requests:,}", f"{estimate.prompt_tokens:,}", f"{estimate.completion_tokens:,}", cost
    )
    return table


def estimate_vs_actual_table(estimate: RunEstimate, teacher: dict[str, Any]) -> Table:
    """The run summary's comparison of the dry-run estimate with what the run recorded."""
    table = Table("teacher", "estimated", "actual", "actual / estimated", title="estimate vs actual")
    for row in estimate_vs_actual(estimate.as_dict(), teacher):
        table.add_row(*row)
    return table


def estimate_vs_actual(estimate: dict[str, Any], teacher: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows (what, estimated, actual, actual / estimated) for the run summary."""
    # requests the teacher was asked over all attempts (a resumed attempt's cache hits are
    # the earlier attempts' answers, not new requests); each retry is the same request
    actual_requests = teacher.get("requests_sent", 0) - teacher.get("retries", 0)
    rows = [
        ("teacher requests", estimate["requests"], actual_requests),
        ("prompt tokens", estimate["prompt_tokens"], teacher.get("prompt_tokens", 0)),
        ("completion tokens (estimate: max)", estimate["completion_tokens_max"], teacher.get("completion_tokens", 0)),
    ]
    out = []
    for what, estimated, actual in rows:
        ratio = f"{actual / estimated:.3f}" if estimated else "-"
        out.append((what, f"{estimated:,}", f"{actual:,}", ratio))
    return out
