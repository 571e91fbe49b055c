"""`stillhouse run --dry-run`: what a run would cost, before it spends anything.

Counts seeds, asks every task how many teacher requests it would issue, and turns
that into token and dollar estimates with the teacher's price table. Token counts
are estimates: prompts at ~4 characters per token plus the prompt scaffold, and
completions at their `max_tokens` upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

from stillhouse.config import RunConfig
from stillhouse.seeds import load_seeds

CHARS_PER_TOKEN = 4
SCAFFOLD_TOKENS = 150  # task instructions and in-context examples around each prompt


@dataclass
class TaskEstimate:
    task: str
    records_in: int
    requests: int
    prompt_tokens: int
    completion_tokens: int


@dataclass
class RunEstimate:
    seeds: int
    tasks: list[TaskEstimate]
    usd: float | None

    @property
    def requests(self) -> int:
        return sum(t.requests for t in self.tasks)

    @property
    def tokens(self) -> int:
        return sum(t.prompt_tokens + t.completion_tokens for t in self.tasks)


def estimate_run(config: RunConfig) -> RunEstimate:
    from factory.tasks import build_task
    from factory.teachers import estimate_cost

    seeds = config.seeds
    records, _ = load_seeds(
        seeds.path,
        format=seeds.format,
        columns=seeds.columns.model_dump(),
        instruction=seeds.instruction,
        limit=seeds.limit,
    )
    prompt_chars = (records["instruction"].str.len_chars() + records["input"].str.len_chars()).mean() or 0
    prompt_tokens = int(prompt_chars / CHARS_PER_TOKEN) + SCAFFOLD_TOKENS
    estimates, n_records = [], records.height
    for task_config in config.tasks:
        requests = build_task(task_config).estimate_requests(n_records)
        samples = getattr(task_config, "n", 1) or 1
        max_tokens = getattr(task_config, "max_tokens", 0) or 0
        estimates.append(
            TaskEstimate(
                task=task_config.type,
                records_in=n_records,
                requests=requests,
                prompt_tokens=requests * prompt_tokens,
                completion_tokens=requests * samples * max_tokens,
            )
        )
        n_records = getattr(task_config, "target_size", None) or n_records
    costs = [
        estimate_cost(config.teacher, e.requests, e.prompt_tokens // e.requests, e.completion_tokens // e.requests)
        for e in estimates
        if e.requests
    ]
    usd = None if config.teacher is None or None in costs else sum(costs)
    return RunEstimate(seeds=records.height, tasks=estimates, usd=usd)


def estimate_table(estimate: RunEstimate) -> Table:
    table = Table(
        "task", "records in", "requests", "prompt tokens", "completion tokens (max)", title="dry run: nothing was sent"
    )
    for task in estimate.tasks:
        table.add_row(
            task.task,
            str(task.records_in),
            str(task.requests),
            f"{task.prompt_tokens:,}",
            f"{task.completion_tokens:,}",
        )
    cost = "no price table" if estimate.usd is None else f"${estimate.usd:,.2f}"
    table.add_row(
        "total", str(estimate.seeds) + " seeds", str(estimate.requests), "", f"{estimate.tokens:,} tokens, {cost}"
    )
    return table
