"""`stillhouse datasets rows`: kept and rejected rows as a table or JSON, filtered by SQL."""

from __future__ import annotations

import json

import polars as pl
import pytest

from curation.store import DatasetStore

ROWS = {
    "id": ["a", "b", "c", "d"],
    "instruction": ["Say hi", "Name a colour", "Describe the sea", "Count to three"],
    "input": ["", "", "", ""],
    "origin": ["seed", "seed", "evol:deepen", "self_instruct"],
    "response": ["Hello!", "", "Wide, deep and always moving.", "One, two, three."],
    "drop_stage": [None, "heuristics", None, "entropy"],
    "drop_reason": [None, "empty", None, "high_entropy"],
}


@pytest.fixture
def root(tmp_path):
    DatasetStore(tmp_path).publish("demo", pl.DataFrame(ROWS))
    return tmp_path


def rows_json(run_cli, root, *args):
    code, out, err = run_cli("datasets", "rows", "demo@v1", "--root", root, "--json", *args)
    assert code == 0, err
    return json.loads(out)


def test_kept_rows_as_a_table(run_cli, root):
    code, out, err = run_cli("datasets", "rows", "demo", "--root", root)
    assert code == 0, err
    assert "demo@v1 kept rows" in out and "Hello!" in out and "Wide, deep and always moving." in out
    assert "Name a colour" not in out  # rejected
    assert "drop_reason" not in out
    assert "2 of 2 matching rows shown" in out


def test_rejected_rows_show_why(run_cli, root):
    code, out, _ = run_cli("datasets", "rows", "demo", "--root", root, "--rejected")
    assert code == 0
    assert "empty" in out and "high_entropy" in out and "Name a colour" in out
    assert "2 of 2 matching rows shown" in out


def test_where_columns_limit_and_json(run_cli, root):
    assert rows_json(run_cli, root, "--rejected", "--where", "drop_reason = 'empty'", "--columns", "id,response") == [
        {"id": "b", "response": ""}
    ]
    assert [r["id"] for r in rows_json(run_cli, root, "--where", "origin LIKE 'evol%' OR id = 'a'")] == ["a", "c"]
    assert [r["id"] for r in rows_json(run_cli, root, "--rejected", "--limit", "1")] == ["b"]
    assert rows_json(run_cli, root, "--where", "length(response) > 100") == []
    code, out, _ = run_cli("datasets", "rows", "demo", "--root", root, "--rejected", "--limit", "1")
    assert "1 of 2 matching rows shown" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--where", "nocolumn > 1"], "--where 'nocolumn > 1': unable to find column \"nocolumn\""),
        (["--where", "response ="], "--where 'response ='"),
        (["--columns", "id,bogus"], "--columns: no column 'bogus' (columns: id, instruction"),
        (["--limit", "-1"], "Invalid value for '--limit'"),
    ],
)
def test_bad_filters_are_one_line(run_cli, root, args, message):
    code, out, err = run_cli("datasets", "rows", "demo", "--root", root, *args)
    assert code != 0
    assert message in err
    assert "Traceback" not in err


def test_a_filter_is_never_python(run_cli, root, tmp_path):
    marker = tmp_path / "pwned"
    code, _, err = run_cli(
        "datasets", "rows", "demo", "--root", root, "--where", f"__import__('os').system('touch {marker}')"
    )
    assert code == 1 and "--where" in err
    assert not marker.exists()


def test_rows_of_a_tampered_version_are_refused(run_cli, root):
    data = root / "demo" / "v1" / "data.parquet"
    data.chmod(0o644)
    data.write_bytes(data.read_bytes() + b"x")
    code, out, err = run_cli("datasets", "rows", "demo", "--root", root)
    assert code == 1 and "does not match the sha256" in err and out == ""


def test_default_columns_leave_out_the_ones_no_row_fills(run_cli, tmp_path):
    frame = pl.DataFrame({"id": ["a"], "instruction": ["Classify."], "input": ["card lost"], "origin": ["seed"]})
    DatasetStore(tmp_path).publish("pool", frame.with_columns(label=pl.lit("card_lost")))
    code, out, _ = run_cli("datasets", "rows", "pool", "--root", tmp_path, "--json")
    assert code == 0
    assert json.loads(out) == [
        {"id": "a", "origin": "seed", "instruction": "Classify.", "input": "card lost", "label": "card_lost"}
    ]
