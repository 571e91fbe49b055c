"""benchmarks/shallow_student_latency.py --quick on the quickstart's test tickets: it runs and ends
with the RESULT line its README figures come from (the figures themselves are timings, not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULT_KEYS = "teacher_ms full_ms layers2_ms layers1_ms layers1_ratio layers2_ratio".split()


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "benchmarks" / "shallow_student_latency.py"), "--quick", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.mark.slow
def test_quick_run_ends_with_every_result_key():
    done = run_benchmark("--threads", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    values = dict(item.split("=") for item in last.split()[1:])
    assert sorted(values) == sorted(RESULT_KEYS)
    assert all(float(value) > 0 for value in values.values())
    # the ratios are the printed timings divided by the teacher's, not figures of their own
    assert float(values["layers1_ratio"]) == pytest.approx(
        float(values["layers1_ms"]) / float(values["teacher_ms"]), abs=2e-3
    )


def test_a_data_folder_without_sst2_is_one_line(tmp_path):
    done = run_benchmark("--data", str(tmp_path))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"{tmp_path / 'sst2' / 'sentiment-test'} not found (pass --data DIR, the folder that holds sst2/)"
    ]
