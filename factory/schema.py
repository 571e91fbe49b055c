"""The record schema of DESIGN.md: one Arrow schema, one row per prompt, defined here only.

Every layer (factory writes, curation reads/writes, trainer reads) conforms frames
through `conform`, which validates and casts to these exact types, naming the
offending column and row when something does not fit.
"""

from __future__ import annotations

import hashlib
import json
import re

import polars as pl
import pyarrow as pa

from factory.errors import SchemaError

SCHEMA_VERSION = 1

SAMPLE_TYPE = pa.struct(
    [
        ("text", pa.string()),
        ("finish_reason", pa.string()),
        ("token_ids", pa.list_(pa.int32())),
        ("logprobs", pa.list_(pa.float32())),  # logprob of each sampled token
        ("top_ids", pa.list_(pa.list_(pa.int32()))),  # top-k ids per position
        ("top_logprobs", pa.list_(pa.list_(pa.float32()))),  # top-k logprobs per position
        ("ids_missing", pa.bool_()),  # true: text without token ids (the server sent none we could map)
    ]
)

TEACHER_TYPE = pa.struct(
    [
        ("backend", pa.string()),
        ("model", pa.string()),
        ("params", pa.string()),  # sampling parameters as canonical JSON
        ("tokenizer", pa.string()),
        ("tokenizer_hash", pa.string()),
    ]
)

REVIEW_TYPE = pa.struct(
    [
        ("status", pa.string()),  # accepted | rejected | corrected
        ("reviewer", pa.string()),
        ("rating", pa.int32()),
        ("correction", pa.string()),
        ("original", pa.string()),  # the response/label a correction replaced
        ("note", pa.string()),
    ]
)

# Known columns in their canonical order. Curation score columns (dup_cluster,
# consistency, mean_entropy, judge_score, ...) are appended after these, any type.
RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("input", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),
        pa.field("parent_id", pa.string()),
        pa.field("samples", pa.list_(SAMPLE_TYPE)),
        pa.field("response", pa.string()),
        # index into `samples` of the response's sample; null when a reviewer replaced the text
        pa.field("chosen_sample", pa.int32()),
        pa.field("label", pa.string()),
        pa.field("label_probs", pa.list_(pa.float32())),
        pa.field("teacher", TEACHER_TYPE),
        pa.field("drop_stage", pa.string()),
        pa.field("drop_reason", pa.string()),
        pa.field("review", REVIEW_TYPE),
    ]
)

REQUIRED_COLUMNS = ("id", "instruction", "input", "origin")
ORIGIN_PATTERN = r"^(seed|self_instruct|import|evol:[a-z_]+)$"


def record_id(instruction: str, input: str = "", origin: str = "seed", parent_id: str | None = None) -> str:
    """Stable content hash of a prompt and its lineage (same content -> same id, on any machine)."""
    payload = json.dumps([instruction, input or "", origin, parent_id or ""], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def record_ids(frame: pl.DataFrame) -> pl.Series:
    """`record_id` for every row of a frame with instruction/input/origin[/parent_id] columns."""
    parent = frame["parent_id"] if "parent_id" in frame.columns else pl.Series([None] * frame.height)
    return pl.Series(
        "id",
        [
            record_id(i, n, o, p)
            for i, n, o, p in zip(frame["instruction"], frame["input"].fill_null(""), frame["origin"], parent)
        ],
        dtype=pl.String,
    )


def empty_records() -> pl.DataFrame:
    """A zero-row frame with every known column in its canonical type."""
    return pl.from_arrow(RECORD_SCHEMA.empty_table())


def _first_bad_row(column: pa.ChunkedArray, target: pa.DataType) -> int:
    """Row index of the first value that cannot be cast (only called on the error path)."""
    values = column.combine_chunks()
    for row in range(len(values)):
        try:
            # rebuild the row: a sliced list array still casts its whole child array
            pa.array(values.slice(row, 1).to_pylist(), type=values.type).cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return row
    return 0


def _fail_at(mask: pl.Series, message: str) -> None:
    """Raise naming the first row where `mask` is true, if any."""
    if mask.any():
        row = int(mask.arg_true()[0])
        raise SchemaError(message.format(row=row, count=int(mask.sum())))


def conform(frame: pl.DataFrame | pa.Table) -> pa.Table:
    """Validate a frame against the record schema and return it as a canonical Arrow table.

    Known columns are cast to their canonical types and put first; missing optional
    ones are added as nulls; extra (score) columns are kept after them, untouched.
    Raises `SchemaError` naming the column and the first offending row.
    """
    table = frame.to_arrow() if isinstance(frame, pl.DataFrame) else frame
    names = table.column_names
    for name in REQUIRED_COLUMNS:
        if name not in names:
            raise SchemaError(f"missing required column '{name}' (columns present: {', '.join(names) or 'none'})")
    if len(set(names)) != len(names):
        raise SchemaError(f"duplicate column names in {names}")

    columns, fields = [], []
    for field in RECORD_SCHEMA:
        if field.name in names:
            column = table.column(field.name)
            if field.name == "input":  # input may be empty; treat null as empty
                column = pa.compute.fill_null(column.cast(pa.string()), "")
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                row = _first_bad_row(column, field.type)
                raise SchemaError(
                    f"column '{field.name}' row {row}: cannot convert {column.type} to {field.type} ({exc})"
                ) from None
        else:
            column = pa.nulls(table.num_rows, field.type)
        columns.append(column)
        fields.append(field.with_nullable(True))
    for name in names:
        if RECORD_SCHEMA.get_field_index(name) < 0:
            columns.append(table.column(name))
            fields.append(table.schema.field(name))
    result = pa.Table.from_arrays(columns, schema=pa.schema(fields))
    _check_rows(
        pl.from_arrow(result.select(["id", "instruction", "origin", "label_probs", "drop_stage", "drop_reason"]))
    )
    return result.cast(pa.schema([f.with_nullable(f.name not in REQUIRED_COLUMNS) for f in result.schema]))


def _check_rows(frame: pl.DataFrame) -> None:
    for name in ("id", "instruction", "origin"):
        _fail_at(frame[name].is_null(), f"column '{name}' row {{row}}: null value ({{count}} rows)")
    _fail_at(frame["id"] == "", "column 'id' row {row}: empty id ({count} rows)")
    duplicated = frame["id"].is_duplicated()
    if duplicated.any():
        rows = duplicated.arg_true()
        first = frame["id"][int(rows[0])]
        where = [int(r) for r in rows if frame["id"][int(r)] == first]
        raise SchemaError(f"column 'id': duplicate id '{first}' at rows {where[:5]}")
    bad_origin = ~frame["origin"].str.contains(ORIGIN_PATTERN)
    if bad_origin.any():
        row = int(bad_origin.arg_true()[0])
        raise SchemaError(
            f"column 'origin' row {row}: '{frame['origin'][row]}' is not seed, self_instruct, import or evol:<mutation>"
        )
    probs = frame["label_probs"]
    has_probs = probs.is_not_null() & (probs.list.len() > 0)
    sums = probs.list.sum().fill_null(1.0)
    _fail_at(has_probs & ((sums - 1.0).abs() > 1e-3), "column 'label_probs' row {row}: probabilities do not sum to 1")
    _fail_at(
        has_probs & (probs.list.min() < 0).fill_null(False),
        "column 'label_probs' row {row}: negative probability",
    )
    _fail_at(
        frame["drop_stage"].is_null() != frame["drop_reason"].is_null(),
        "columns 'drop_stage'/'drop_reason' row {row}: one is set without the other",
    )


def canonical_json(value: object) -> str:
    """Deterministic JSON used wherever a structure is hashed or stored as text."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def is_valid_origin(origin: str) -> bool:
    return re.match(ORIGIN_PATTERN, origin) is not None


LABELS_METADATA_KEY = b"stillhouse.labels"
HF_METADATA_KEY = b"huggingface"  # where `datasets` looks for a file's features
LABEL_ID_COLUMN = "label_id"


def with_label_metadata(table: pa.Table, label_set: list[str] | None) -> pa.Table:
    """`table` with a `label_id` column, and schema metadata naming the label set and the order of `label_probs`.

    A trainer reading the Parquet files alone (pyarrow, polars, `datasets`) then knows
    which class each soft-target position is, without the manifest. Index i of every
    `label_probs` list is the probability of `label_set[i]`, and `label_id` is the index
    of `label` in it. `label` stays a string (the record schema); `label_id` is what
    `datasets.load_dataset("parquet", ...)` sees as a `ClassLabel` with the names, since
    `datasets` takes a ClassLabel from file metadata only for an integer column.
    """
    if not label_set:
        return table
    labels = list(label_set)
    if LABEL_ID_COLUMN in table.column_names:  # a republished frame: recompute from `label`
        table = table.drop_columns([LABEL_ID_COLUMN])
    label_id = pa.compute.index_in(table.column("label"), value_set=pa.array(labels, pa.string())).cast(pa.int64())
    table = table.append_column(pa.field(LABEL_ID_COLUMN, pa.int64()), label_id)
    features = {LABEL_ID_COLUMN: {"names": labels, "_type": "ClassLabel"}}
    metadata = {
        LABELS_METADATA_KEY: json.dumps({"label_set": labels, "label_probs_order": labels}).encode(),
        HF_METADATA_KEY: json.dumps({"info": {"features": features}}).encode(),
    }
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
