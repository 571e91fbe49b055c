"""benchmarks/teacher_thread.py --quick on the quickstart's tickets: it runs both placements and ends
with the RESULT line its README figures come from (the figures themselves are timings, not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_run_measures_both_placements_and_ends_with_its_result_line():
    command = [sys.executable, str(REPO / "benchmarks" / "teacher_thread.py"), "--quick"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    rounds = [line for line in lines if line.startswith("round ")]
    assert [line.split()[2].rstrip(":") for line in rounds] == ["loop", "worker", "loop", "worker"]
    assert lines[-1].startswith("RESULT ")
    values = dict(item.split("=") for item in lines[-1].split()[1:])
    assert sorted(values) == ["label_speedup", "rounds", "train_speedup"]
    assert values["rounds"] == "2" and float(values["label_speedup"]) > 0 and float(values["train_speedup"]) > 0
    assert all(re.search(r"labelling +\d+ texts/s, training +[\d.]+ steps/s", line) for line in rounds)
