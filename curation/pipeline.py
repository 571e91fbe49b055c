"""Run curation stages in order and report the funnel: rows in, dropped per stage and reason, rows out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import polars as pl
from rich.console import Console
from rich.table import Table

from curation.funnel import Funnel, funnel_from_frame, funnel_table_rows
from curation.stages.base import Stage, with_drop_columns


class StageExecutor(Protocol):
    """Where a stage's work runs (e.g. stillhouse.executors: local or on Ray); never what it computes."""

    def apply(self, stage: Stage, frame: pl.DataFrame) -> pl.DataFrame: ...


class InProcess:
    def apply(self, stage: Stage, frame: pl.DataFrame) -> pl.DataFrame:
        return stage.apply(frame)


def run_stages(
    frame: pl.DataFrame,
    stages: Sequence[Stage],
    console: Console | None = None,
    executor: StageExecutor | None = None,
    earlier_stages: Sequence[str] = (),
) -> tuple[pl.DataFrame, Funnel]:
    """Apply every stage in order through `executor` (default: in this process); print the funnel as a
    table; return the frame (no row removed) and funnel.

    `earlier_stages` names the steps that dropped rows before curation (the generation
    tasks), so the funnel lists them first, in order, as the published manifest does.
    """
    names = [stage.name for stage in stages]
    if len(set(names)) != len(names):
        from factory.errors import ConfigError

        raise ConfigError(f"curation stage names must be unique (got {names}); set `name:` on repeated stages")
    console = console or Console(stderr=True)
    frame = with_drop_columns(frame)
    notes: list[str] = []
    for stage in stages:
        console.print(f"curation: {stage.name} ({int(frame['drop_stage'].is_null().sum())} rows kept so far)")
        frame = (executor or InProcess()).apply(stage, frame)  # stages show their own progress bars
        notes.extend(stage.notes)
    funnel = funnel_from_frame(frame, stages=[*earlier_stages, *names])
    console.print(funnel_table(funnel))
    for note in notes:
        console.print(f"  {note}")
    return frame, funnel


def funnel_table(funnel: Funnel) -> Table:
    table = Table(title="Curation funnel")
    for column, justify in (
        ("stage", "left"),
        ("rows in", "right"),
        ("dropped (reason count)", "left"),
        ("rows out", "right"),
    ):
        table.add_column(column, justify=justify)
    for row in funnel_table_rows(funnel):
        table.add_row(*row)
    return table
