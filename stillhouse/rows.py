"""Rows of a Parquet file, filtered by a SQL expression and projected, for `datasets rows`.

The filter is parsed by polars' SQL parser into an expression (`pl.sql_expr`): columns,
literals, comparisons, AND/OR/NOT, LIKE, IN, IS NULL and SQL functions, but never
Python, so a filter typed at the command line cannot run code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from factory.errors import StillhouseError


class RowFilterError(StillhouseError):
    """A --where expression or --columns list does not fit the version's columns."""


def select_rows(
    path: Path,
    *,
    where: str | None,
    columns: Sequence[str] | None,
    default_columns: Sequence[str],
    limit: int,
) -> tuple[pl.DataFrame, int]:
    """(up to `limit` matching rows with the chosen columns, how many rows match)."""
    scan = pl.scan_parquet(path)
    available = scan.collect_schema().names()
    if columns:
        unknown = [name for name in columns if name not in available]
        if unknown:
            raise RowFilterError(f"--columns: no column '{unknown[0]}' (columns: {', '.join(available)})")
        chosen = list(columns)
    else:
        chosen = [name for name in default_columns if name in available]
    if where:
        try:
            scan = scan.filter(pl.sql_expr(where))
            total = scan.select(pl.len()).collect().item()
        except (pl.exceptions.PolarsError, ValueError) as exc:
            message = str(exc).splitlines()[0]
            if "valid columns" not in message:
                message += f" (columns: {', '.join(available)})"
            raise RowFilterError(f"--where {where!r}: {message}") from None
    else:
        total = scan.select(pl.len()).collect().item()
    rows = (scan.select(chosen).head(limit) if limit else scan.select(chosen)).collect()
    if not columns and rows.height:  # default columns no row fills (a classification set's response)
        rows = rows.select([name for name in rows.columns if rows[name].null_count() < rows.height])
    return rows, total
