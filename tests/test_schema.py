import polars as pl
import pyarrow as pa
import pytest

from factory.errors import SchemaError
from factory.schema import RECORD_SCHEMA, conform, empty_records, record_id


def _frame(**overrides):
    data = {
        "id": ["a", "b", "c"],
        "instruction": ["Say hi", "Add 2+2", "Name a colour"],
        "input": ["", None, "x"],
        "origin": ["seed", "self_instruct", "evol:deepen"],
    }
    data.update(overrides)
    return pl.DataFrame(data)


def test_conform_adds_missing_columns_in_canonical_types_and_keeps_scores():
    table = conform(_frame(judge_score=[1.0, 2.0, 3.0]))
    assert table.column_names[: len(RECORD_SCHEMA)] == RECORD_SCHEMA.names
    assert table.column_names[-1] == "judge_score"
    for field in RECORD_SCHEMA:
        assert table.schema.field(field.name).type == field.type
    assert table.column("input").to_pylist() == ["", "", "x"]  # null input becomes empty


def test_samples_with_logprobs_round_trip():
    sample = {
        "text": "hi",
        "finish_reason": "stop",
        "token_ids": [5, 6],
        "logprobs": [-0.1, -0.2],
        "top_ids": [[5, 7], [6, 8]],
        "top_logprobs": [[-0.1, -2.5], [-0.2, -1.9]],
    }
    frame = _frame().with_columns(pl.Series("samples", [[sample], [], None]))
    table = conform(frame)
    assert table.schema.field("samples").type == RECORD_SCHEMA.field("samples").type
    assert table.column("samples").to_pylist()[0][0]["top_ids"] == [[5, 7], [6, 8]]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"id": ["a", None, "c"]}, "column 'id' row 1: null"),
        ({"id": ["a", "b", "a"]}, "duplicate id 'a' at rows [0, 2]"),
        ({"origin": ["seed", "seed", "made_up"]}, "column 'origin' row 2"),
        ({"label_probs": [[0.5, 0.5], [0.2, 0.2], None]}, "column 'label_probs' row 1"),
        ({"drop_stage": [None, "minhash", None], "drop_reason": [None, None, None]}, "row 1: one is set"),
    ],
)
def test_validator_names_column_and_row(overrides, message):
    with pytest.raises(SchemaError, match=message.replace("[", r"\[").replace("]", r"\]")):
        conform(_frame(**overrides))


def test_missing_required_column_is_named():
    with pytest.raises(SchemaError, match="missing required column 'origin'"):
        conform(_frame().drop("origin"))


def test_uncastable_value_names_row():
    table = pa.table(
        {
            "id": ["a", "b"],
            "instruction": ["x", "y"],
            "input": ["", ""],
            "origin": ["seed", "seed"],
            "label_probs": pa.array([["0.5", "0.5"], ["p", "q"]], type=pa.list_(pa.string())),
        }
    )
    with pytest.raises(SchemaError, match="column 'label_probs' row 1"):
        conform(table)


def test_record_id_is_stable_and_lineage_sensitive():
    assert record_id("Say hi") == record_id("Say hi", "", "seed", None)
    assert record_id("Say hi") != record_id("Say hi", origin="evol:deepen", parent_id="p")
    assert len(record_id("x")) == 32


def test_empty_records_has_every_column():
    assert empty_records().columns == RECORD_SCHEMA.names
