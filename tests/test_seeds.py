import json

import polars as pl
import pytest
from conftest import shared_data

from stillhouse.seeds import SeedError, load_seeds


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_seeds_with_mapping_and_duplicates(tmp_path):
    path = _jsonl(
        tmp_path / "s.jsonl",
        [
            {"q": "Add 2 and 2", "ctx": "", "y": "4"},
            {"q": "Add 2 and 2", "ctx": "", "y": "4"},
            {"q": "Name a fruit", "ctx": None, "y": "apple"},
        ],
    )
    records, merged = load_seeds(path, columns={"instruction": "q", "input": "ctx", "response": "y"})
    assert merged == 1
    assert records.columns == ["id", "instruction", "input", "response", "origin"]
    assert records["input"].to_list() == ["", ""]
    assert records["id"].n_unique() == 2


def test_constant_instruction_for_classification_pool(tmp_path):
    path = tmp_path / "pool.csv"
    pl.DataFrame({"ticket_id": ["1", "2"], "text": ["card lost", "refund please"]}).write_csv(path)
    records, _ = load_seeds(path, columns={"input": "text"}, instruction="Classify the ticket.")
    assert records["instruction"].unique().to_list() == ["Classify the ticket."]
    assert records["input"].to_list() == ["card lost", "refund please"]


def test_parquet_seeds_and_limit(tmp_path):
    path = tmp_path / "s.parquet"
    pl.DataFrame({"instruction": [f"task {i}" for i in range(10)]}).write_parquet(path)
    records, _ = load_seeds(path, columns={"instruction": "instruction"}, limit=3)
    assert records.height == 3


@pytest.mark.parametrize(
    "content, columns, message",
    [
        (b"", {"instruction": "q"}, "seed file is empty"),
        (b'{"q": "a"}\n{"q": \n', {"instruction": "q"}, r"s.jsonl:2: invalid JSON"),
        (b'{"q": "caf\xe9"}\n', {"instruction": "q"}, r"s.jsonl:1: not UTF-8"),
        (
            b'{"q": "a"}\n',
            {"instruction": "question"},
            "seeds.columns.instruction names column 'question', which is not in the file \\(q\\)",
        ),
        (b'{"q": "a"}\n{"q": "  "}\n', {"instruction": "q"}, "row 2 has an empty 'q'"),
        (b"[1, 2]\n", {"instruction": "q"}, "expected a JSON object per line"),
    ],
)
def test_bad_seed_files_give_one_clear_error(tmp_path, content, columns, message):
    path = tmp_path / "s.jsonl"
    path.write_bytes(content)
    with pytest.raises(SeedError, match=message):
        load_seeds(path, columns=columns)


def test_missing_seed_file(tmp_path):
    with pytest.raises(SeedError, match="seed file not found"):
        load_seeds(tmp_path / "none.jsonl", columns={"instruction": "q"})


def test_real_self_instruct_seed_tasks():
    path = shared_data("self_instruct", "seed_tasks.jsonl")
    records, merged = load_seeds(path, columns={"instruction": "instruction"})
    assert records.height + merged == 175
    assert records["origin"].unique().to_list() == ["seed"]
