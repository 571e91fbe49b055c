"""The generative lab end to end at its smallest size: teacher training, `stillhouse run`
with the real vLLM engine (transformers only where vllm is not installed), students
through the trainer, exact-match scoring. Checks the RESULT line's shape and ranges,
never the lab's target figures."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KEYS = [
    "teacher_acc", "single_sample_acc", "majority_acc", "base_error", "entropy_drop_error",
    "consistency_drop_error", "kept_acc", "sft_acc", "kd_acc", "kd_t2_acc", "kd_uncurated_acc",
    "kd_ratio", "params_ratio", "seeds",
]  # fmt: skip


@pytest.mark.slow
def test_generative_lab_smallest_size_end_to_end(tmp_path):
    backend = "vllm" if importlib.util.find_spec("vllm") else "transformers"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    command = [sys.executable, str(REPO / "benchmarks" / "generative_lab.py"), "--size", "smoke"]
    command += ["--work", str(tmp_path), "--backend", backend]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), done.stdout[-2000:]
    values = dict(item.split("=", 1) for item in last.split()[1:])
    assert list(values) == KEYS
    assert values["seeds"] == "3"
    for key in KEYS[:-3]:  # accuracies and error rates; nan only where a stage dropped no row
        value = float(values[key])
        assert math.isnan(value) and key.endswith("drop_error") or 0.0 <= value <= 1.0, (key, value)
    assert float(values["kd_ratio"]) >= 0.0
    assert 0.15 <= float(values["params_ratio"]) <= 0.35
    # the pipeline went through `stillhouse run` and published both versions
    datasets = tmp_path / "smoke" / "datasets_out"
    assert (datasets / "lab" / "v1" / "manifest.json").is_file()
    assert (datasets / "lab-uncurated" / "v1" / "manifest.json").is_file()
    log = (tmp_path / "smoke" / "pipeline.log").read_text()
    assert "publish: lab@v1" in log, log[-2000:]
