"""Seed files (JSONL, CSV, Parquet) into record-schema frames, with a column mapping.

A seed file is a local path or an fsspec URL (`s3://bucket/seeds.jsonl`), read the same way.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import polars as pl

from factory.errors import StillhouseError
from factory.schema import record_ids
from factory.storage import Location, filesystem, is_url


class SeedError(StillhouseError):
    """A seed file is missing, unreadable, empty or does not have the mapped columns."""


def seed_format(path: Location, declared: str | None) -> str:
    if declared:
        return declared
    suffix = PurePosixPath(str(path)).suffix.lower()
    formats = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
    if suffix not in formats:
        raise SeedError(f"{path}: cannot infer the seed format from '{suffix}'; set seeds.format (jsonl, csv, parquet)")
    return formats[suffix]


def _read_jsonl(path: Location, handle: BinaryIO) -> pl.DataFrame:
    rows = []
    for number, raw in enumerate(handle, start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise SeedError(f"{path}:{number}: not UTF-8 text") from None
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SeedError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise SeedError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()


def _check_csv_rows(path: Location, data: bytes) -> None:
    """Every CSV row has as many fields as the header (polars fills short rows with nulls)."""
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="replace"), newline=""))
    try:
        header = next(reader, [])
        start = reader.line_num + 1
        for row in reader:
            if row and len(row) != len(header):
                raise SeedError(f"{path}:{start}: {len(row)} fields, but the header has {len(header)}")
            start = reader.line_num + 1
    except csv.Error as exc:
        raise SeedError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None


def read_table(path: Location, format: str | None = None) -> pl.DataFrame:
    """Read a JSONL/CSV/Parquet file (local path or fsspec URL), one clear error per problem."""
    path = path if is_url(path) else Path(path)
    kind = format or "seed file"
    try:
        fs, inner = filesystem(path)
        if not fs.isfile(inner):
            raise SeedError(f"{path}: seed file not found")
        kind = seed_format(path, format)
        if fs.size(inner) == 0:
            raise SeedError(f"{path}: seed file is empty")
        with fs.open(inner, "rb") as remote:
            # seed files are small: read once, then parse from memory whatever the filesystem
            handle = io.BytesIO(remote.read())
        if kind == "jsonl":
            frame = _read_jsonl(path, handle)
        elif kind == "csv":
            _check_csv_rows(path, handle.getvalue())
            frame = pl.read_csv(handle, infer_schema_length=0)  # every column as text: no type guessing
        else:
            frame = pl.read_parquet(handle)
    except SeedError:
        raise
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise SeedError(f"{path}: cannot read as {kind} ({str(exc).splitlines()[0]})") from None
    except Exception as exc:  # object-storage clients raise their own types (e.g. botocore's)
        raise SeedError(f"{path}: cannot read ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if frame.height == 0:
        raise SeedError(f"{path}: seed file has no rows")
    return frame


def load_seeds(
    path: Location,
    *,
    format: str | None = None,
    columns: dict[str, str | None],
    instruction: str | None = None,
    limit: int | None = None,
    origin: str = "seed",
) -> tuple[pl.DataFrame, int]:
    """Seeds as record rows: id, instruction, input, origin (+ label/response when mapped).

    Returns the records and how many exact duplicate seeds were merged into one.

    `columns` maps record fields to file columns; `instruction` is a constant task
    description for files that only carry the input text (classification pools).
    """
    frame = read_table(path, format)
    if limit:
        frame = frame.head(limit)
    available = ", ".join(frame.columns)
    if instruction is not None:  # a constant instruction replaces the instruction column
        columns = {field: column for field, column in columns.items() if field != "instruction"}
    for field, column in columns.items():
        if column is not None and column not in frame.columns:
            raise SeedError(
                f"{path}: seeds.columns.{field} names column '{column}', which is not in the file ({available})"
            )
    selected = []
    if instruction is not None:
        selected.append(pl.lit(instruction).alias("instruction"))
    elif columns.get("instruction"):
        selected.append(pl.col(columns["instruction"]).cast(pl.String).alias("instruction"))
    else:
        raise SeedError(f"{path}: set seeds.columns.instruction or a constant seeds.instruction")
    input_column = columns.get("input")
    selected.append(pl.col(input_column).cast(pl.String).fill_null("") if input_column else pl.lit(""))
    for field in ("label", "response"):
        if columns.get(field):
            selected.append(pl.col(columns[field]).cast(pl.String).alias(field))
    records = frame.select(*selected[:1], selected[1].alias("input"), *selected[2:])
    records = records.with_columns(pl.lit(origin).alias("origin"))
    empty = records["instruction"].is_null() | (records["instruction"].str.strip_chars() == "")
    if instruction is None and empty.any():
        row = int(empty.arg_true()[0])
        raise SeedError(f"{path}: row {row + 1} has an empty '{columns['instruction']}' (the instruction column)")
    records = records.with_columns(record_ids(records))
    # Identical seeds are one prompt (one id): keep the first and say how many merged.
    unique = records.unique(subset="id", keep="first", maintain_order=True).select("id", pl.exclude("id"))
    return unique, records.height - unique.height
