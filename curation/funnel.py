"""The funnel: rows in, dropped per stage and reason, rows out.

A row's `drop_reason` is a short reason code, optionally followed by ': detail'
(e.g. `too_short: 3 chars < 10`); the funnel groups by the code.
"""

from __future__ import annotations

import polars as pl

Funnel = list[dict]


def reason_code(reason: pl.Expr) -> pl.Expr:
    """The reason code of a drop_reason column (the part before the first ':')."""
    return reason.str.split(":").list.first().str.strip_chars()


def funnel_from_frame(frame: pl.DataFrame, stages: list[str] | None = None) -> Funnel:
    """Build the funnel of a curated frame from its drop_stage/drop_reason columns.

    `stages` fixes the order (and includes stages that dropped nothing); otherwise
    stages appear in order of first appearance.
    """
    dropped = frame.filter(pl.col("drop_stage").is_not_null())
    counts = (
        dropped.group_by("drop_stage", reason_code(pl.col("drop_reason")).alias("reason"), maintain_order=True)
        .len()
        .sort("drop_stage", "len", "reason", descending=[False, True, False], maintain_order=True)
    )
    order = list(stages or [])
    for stage in dropped["drop_stage"].unique(maintain_order=True).to_list():
        if stage not in order:
            order.append(stage)
    rows_in = frame.height
    funnel: Funnel = []
    for stage in order:
        reasons = counts.filter(pl.col("drop_stage") == stage)
        by_reason = dict(zip(reasons["reason"].to_list(), reasons["len"].to_list()))
        rows_out = rows_in - sum(by_reason.values())
        funnel.append({"stage": stage, "rows_in": rows_in, "dropped": by_reason, "rows_out": rows_out})
        rows_in = rows_out
    return funnel


def funnel_table_rows(funnel: Funnel) -> list[tuple[str, str, str, str]]:
    """(stage, rows in, dropped by reason, rows out) as display strings, one per stage."""
    return [
        (
            step["stage"],
            str(step["rows_in"]),
            ", ".join(f"{reason} {count}" for reason, count in step["dropped"].items()) or "-",
            str(step["rows_out"]),
        )
        for step in funnel
    ]
