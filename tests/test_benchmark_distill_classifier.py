"""benchmarks/distill_classifier.py end to end on tiny tasks this test writes itself (CSV and JSONL)."""

from __future__ import annotations

import csv
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PHRASES = {
    "refund": ["i want my money back", "please refund the order", "refund for the broken item", "return and refund"],
    "shipping": ["where is my parcel", "the delivery is late", "tracking has not moved", "package not arrived"],
    "login": ["i cannot sign in", "password reset does not work", "locked out of my account", "login page error"],
}
RESULT_KEYS = (
    "teacher_f1 head_teacher_f1 kd_f1 hard_f1 f1_ratio hard_f1_ratio latency_ratio kd_ece hard_ece teacher_ece "
    "kd_ece_floor params_ratio seeds"
).split()


def rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        intent = rng.choice(sorted(PHRASES))
        opener, closer = rng.choice(["hi", "hello", "hey team", ""]), rng.choice(["", "thanks", "asap"])
        text = f"{opener} {rng.choice(PHRASES[intent])} {closer}"
        out.append({"message": text.strip(), "intent": intent})
    return out


def write(path: Path, data: list[dict[str, str]]) -> Path:
    if path.suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["message", "intent"])
            writer.writeheader()
            writer.writerows(data)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in data))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_benchmark_runs_on_a_tiny_task(tmp_path, suffix):
    train = write(tmp_path / f"train{suffix}", rows(60, seed=1))
    test = write(tmp_path / f"test{suffix}", rows(24, seed=2))
    command = [
        sys.executable, str(REPO / "benchmarks" / "distill_classifier.py"), "--train", str(train), "--test", str(test),
        "--text-column", "message", "--label-column", "intent", "--quick", "--latency-examples", "5",
        "--work", str(tmp_path / "work"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = done.stdout.strip().splitlines()[-1]
    assert result.startswith("RESULT ")
    values = dict(item.split("=") for item in result.split()[1:])
    assert set(RESULT_KEYS) <= set(values)
    assert values["seeds"] == "1"
    assert 0 < float(values["teacher_f1"]) <= 1 and 0 < float(values["kd_f1"]) <= 1
    assert float(values["latency_ratio"]) < 1  # the student is faster than the teacher
    assert (tmp_path / "work" / "eval-kd-0" / "evaluation.md").is_file()
    printed = " ".join(done.stdout.split())  # rich wraps long lines
    assert re.search(r"kd seed 0: .*95% bootstrap over the test rows \d\.\d{3} to \d\.\d{3}", printed)


def test_benchmark_names_a_missing_column(tmp_path):
    train = write(tmp_path / "train.csv", rows(10, seed=1))
    command = [
        sys.executable, str(REPO / "benchmarks" / "distill_classifier.py"), "--train", str(train), "--test", str(train),
        "--text-column", "body", "--label-column", "intent",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode != 0
    assert f"{train}: no column 'body'" in done.stderr
