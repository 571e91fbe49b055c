"""`stillhouse train` under `accelerate launch` with 2 CPU processes (gloo, all on 127.0.0.1).

The same global batch gives the same loss curve as one process; only rank 0 writes
(checked with a Python audit hook that logs every write-open, mkdir and rename per rank);
a 2-process run resumes from a checkpoint exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_trainer_causal import causal_config, kd_store, tiny_student  # noqa: F401  (module fixtures)

from trainer.training import PROVENANCE_FILE, train

REPO = Path(__file__).resolve().parents[1]
WRITE_WATCH = """
import os, sys
_watched, _log = os.environ["WATCH_DIR"], os.environ["WATCH_LOG"] + "." + os.environ.get("RANK", "0")
def _hook(event, args):
    if event in ("open", "os.mkdir", "os.rename") and str(args[0]).startswith(_watched):
        mode = args[1] if event == "open" else "w"
        if event != "open" or (isinstance(mode, str) and any(c in mode for c in "wax+")):
            with open(_log, "a") as log:
                log.write(f"{event} {args[0]}\\n")
sys.addaudithook(_hook)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(config_path: Path, watch_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(WRITE_WATCH)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
        "GLOO_SOCKET_IFNAME": "lo",
        "MASTER_ADDR": "127.0.0.1",
        "OMP_NUM_THREADS": "1",
        "WATCH_DIR": str(watch_dir),
        "WATCH_LOG": str(tmp_path / "writes"),
    }
    accelerate = Path(sys.executable).with_name("accelerate")
    # on CPUs accelerate's --cpu with several processes goes through mpirun; --multi_gpu starts them with
    # torch's own launcher, and each process finds no GPU and joins a gloo group
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
               "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "stillhouse.cli", "train", str(config_path)]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def writes(tmp_path: Path, rank: int) -> list[str]:
    log = tmp_path / f"writes.{rank}"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.slow
def test_two_processes_match_one_write_once_and_resume(kd_store, tiny_student, tmp_path):  # noqa: F811
    # 6 rows, global batch 4 (2 per process): 2 steps an epoch, the second with 1 example per process
    settings = dict(objective="token_kd", batch_size=4, epochs=3, checkpoint_every=2, threads=1)
    single = train(causal_config(kd_store, tiny_student, tmp_path / "single", **settings))

    config = causal_config(kd_store, tiny_student, tmp_path / "double", **settings)
    config_path = tmp_path / "double.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    run = launch_two(config_path, tmp_path / "double", tmp_path)
    assert run.stdout.count("trained on gen@v1") == 1  # the first process reports
    provenance = json.loads((tmp_path / "double" / "model" / PROVENANCE_FILE).read_text())
    assert provenance["processes"] == 2
    assert provenance["losses"] == pytest.approx(single.losses, rel=1e-4)
    assert writes(tmp_path, 1) == []
    assert any("checkpoints" in w for w in writes(tmp_path, 0)) and any("model" in w for w in writes(tmp_path, 0))

    # resume: a fresh output dir holding the step-4 checkpoint, two processes again
    (checkpoint,) = (tmp_path / "double" / "checkpoints").glob("step-*")
    assert checkpoint.name == "step-4"
    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoints" / checkpoint.name)
    resumed_config = tmp_path / "resumed.yaml"
    resumed_config.write_text(
        yaml.safe_dump({**config.model_dump(mode="json"), "output_dir": str(tmp_path / "resumed")})
    )
    launch_two(resumed_config, tmp_path / "resumed", tmp_path)
    resumed = json.loads((tmp_path / "resumed" / "model" / PROVENANCE_FILE).read_text())
    assert resumed["resumed_from"] == 4
    assert resumed["losses"] == pytest.approx(single.losses[4:], rel=1e-4)
    assert writes(tmp_path, 1) == []
