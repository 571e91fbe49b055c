"""The stage contract: score columns in, `drop_stage`/`drop_reason` set on rejected rows, nothing deleted.

A stage only judges rows no earlier stage dropped: a dropped row keeps its first
reason. A stage declares its `scope`, so an executor can run it where it likes without
the stage knowing: `ROW` (any split of the rows gives the same answer: run it on blocks
in parallel) or `GLOBAL` (it needs every row). A global stage may split off a parallel
part, `prepare` (per-block columns such as MinHash signatures or embeddings, listed in
`prepared_columns`), which `score` then uses instead of computing them itself.
Shared pieces used by several stages (keep-best ordering, union-find) live here too, once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from enum import Enum

import numpy as np
import polars as pl

from factory.errors import StillhouseError

DROP_COLUMNS = ("drop_stage", "drop_reason")


class StageInputError(StillhouseError):
    """A frame lacks a column a stage needs (or has it in an unusable type)."""


class Scope(str, Enum):
    ROW = "row"  # row-local: any split of the rows gives the same answer
    GLOBAL = "global"  # needs all rows at once (optionally after a parallel `prepare`)


class Stage(ABC):
    """One curation filter. Subclasses set `required_columns` and implement `score`."""

    name: str = "stage"
    # Columns `prepare` adds (the parallel part of a global stage); empty: no parallel part.
    prepared_columns: tuple[str, ...] = ()
    # False for stages holding a client that cannot travel to a worker process (the judge's
    # teacher): they run in the driver, where the executor's teacher fans their requests out.
    portable: bool = True

    def __init__(self) -> None:
        self.notes: list[str] = []  # things the funnel table should tell the user (e.g. unparsed judge replies)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return ()

    @property
    def scope(self) -> Scope:
        """GLOBAL unless a stage says otherwise: the safe default runs it on the whole frame."""
        return Scope.GLOBAL

    def prepare(self, block: pl.DataFrame) -> pl.DataFrame:
        """The parallel part of a global stage: `block` with `prepared_columns` added (row-local)."""
        return block

    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The frame with this stage's score columns, and drops for the rows it rejects."""
        self.notes = []
        missing = [column for column in self.required_columns if column not in frame.columns]
        if missing:
            raise StageInputError(
                f"stage '{self.name}' needs column '{missing[0]}', which the frame lacks "
                f"(columns present: {', '.join(frame.columns) or 'none'})"
            )
        return self.score(with_drop_columns(frame))

    @abstractmethod
    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Add score columns; mark rejected rows with `self.drop(...)`. Drop columns exist."""

    def drop(self, frame: pl.DataFrame, rejected: pl.Expr | pl.Series, reason: pl.Expr | pl.Series) -> pl.DataFrame:
        """Set drop_stage/drop_reason where `rejected` holds, on rows not dropped already."""
        rejected = pl.lit(rejected) if isinstance(rejected, pl.Series) else rejected
        reason = pl.lit(reason) if isinstance(reason, pl.Series) else reason
        newly = rejected.fill_null(False) & pl.col("drop_stage").is_null()
        return frame.with_columns(
            pl.when(newly).then(pl.lit(self.name)).otherwise(pl.col("drop_stage")).alias("drop_stage"),
            pl.when(newly).then(reason.cast(pl.String)).otherwise(pl.col("drop_reason")).alias("drop_reason"),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def with_drop_columns(frame: pl.DataFrame) -> pl.DataFrame:
    missing = [pl.lit(None, dtype=pl.String).alias(c) for c in DROP_COLUMNS if c not in frame.columns]
    return frame.with_columns(missing) if missing else frame


def active(frame: pl.DataFrame) -> pl.Series:
    """Rows no stage has dropped yet."""
    return frame["drop_stage"].is_null()


def keep_rank(frame: pl.DataFrame, keep_order: list[str] | tuple[str, ...], text: pl.Expr) -> np.ndarray:
    """Rank of every row (0 = best) under `keep_order`, to keep the best member of a duplicate group.

    Each key is a score column, higher is better (`-col` for lower is better); `length`
    is the length of `text`. Keys absent from the frame are skipped, nulls rank last,
    and the row position breaks remaining ties so the result is deterministic.
    """
    keys, descending = [], []
    for key in keep_order:
        column = key.lstrip("-")
        if column == "length":
            expr = text.str.len_chars()
        elif column in frame.columns:
            expr = pl.col(column).cast(pl.Float64)
        else:
            continue
        keys.append(expr.alias(f"_key{len(keys)}"))
        descending.append(not key.startswith("-"))
    ranked = frame.select(*keys, pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"))
    order = ranked.sort(
        [*(f"_key{i}" for i in range(len(keys))), "_row"], descending=[*descending, False], nulls_last=True
    )["_row"].to_numpy()
    rank = np.empty(frame.height, dtype=np.int64)
    rank[order] = np.arange(frame.height)
    return rank


def union_find(size: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Component root of every element after joining each (left[i], right[i]) pair."""
    parent = np.arange(size, dtype=np.int64)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in zip(left.tolist(), right.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    touched = np.unique(np.concatenate([left, right])).astype(np.int64)
    parent[touched] = [find(x) for x in touched.tolist()]  # untouched elements are their own root
    return parent


def keep_best_of_groups(roots: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For elements grouped by `roots`: (cluster number or -1 for singletons, keeper index, is-keeper).

    The keeper of a group is its member with the lowest `rank`; clusters are numbered
    in order of their keepers' rank.
    """
    size = len(roots)
    if size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=bool)
    # best member per root: sort by (root, rank), first of each run
    order = np.lexsort((rank, roots))
    first = np.ones(size, dtype=bool)
    first[1:] = roots[order][1:] != roots[order][:-1]
    best_of_root = np.full(size, -1, dtype=np.int64)
    best_of_root[roots[order][first]] = order[first]
    keeper = best_of_root[roots]
    group_size = np.bincount(roots, minlength=size)[roots]
    in_cluster = group_size > 1
    cluster = np.full(size, -1, dtype=np.int64)
    cluster_keepers = np.unique(keeper[in_cluster])
    numbered = cluster_keepers[np.argsort(rank[cluster_keepers], kind="stable")]
    number_of = np.full(size, -1, dtype=np.int64)
    number_of[numbered] = np.arange(len(numbered))
    cluster[in_cluster] = number_of[keeper[in_cluster]]
    return cluster, keeper, np.arange(size) == keeper


def chosen_samples(frame: pl.DataFrame, fields: list[str]) -> pl.DataFrame:
    """The chosen sample's `fields` for every row, in row order: `samples[chosen_sample]`; for rows
    without an index (frames written before the column existed) the sample whose text is the
    row's `response`, else the first sample; nulls where a row has no such sample."""
    response = pl.col("response") if "response" in frame.columns else pl.lit(None, dtype=pl.String)
    index = pl.col("chosen_sample") if "chosen_sample" in frame.columns else pl.lit(None, dtype=pl.Int32)
    exploded = (
        frame.select(
            pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"),
            response.alias("_response"),
            index.cast(pl.Int64).alias("_index"),
            "samples",
        )
        .explode("samples")
        .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("_row").alias("_pos"))
        .filter(pl.col("samples").is_not_null())
        .filter(pl.col("_index").is_null() | (pl.col("_pos") == pl.col("_index")))
        .with_columns((pl.col("samples").struct.field("text") == pl.col("_response")).fill_null(False).alias("_match"))
        .sort(["_row", "_match", "_pos"], descending=[False, True, False])
        .unique("_row", keep="first", maintain_order=True)
        .select("_row", *(pl.col("samples").struct.field(f).alias(f) for f in fields))
    )
    rows = pl.DataFrame({"_row": np.arange(frame.height, dtype=np.int64)})
    return rows.join(exploded, on="_row", how="left").sort("_row").drop("_row")


def progress(iterable: Iterable, total: int, description: str) -> Iterator:
    """Iterate with a rich progress bar (total, rate, ETA) that disappears when done."""
    from rich.progress import track

    return track(iterable, total=total, description=description, transient=True)
