"""`train(config) -> TrainResult`: resolve the dataset version, run the objective, record provenance.

The model directory carries `stillhouse_training.json`: the dataset ref, the sha256
of its manifest (which pins the sha256 of every data file), the config, the code
version and the training summary, so a model can always be traced to the exact
bytes it learned from.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from curation.store import DatasetStore, code_version
from trainer.config import TrainConfig

PROVENANCE_FILE = "stillhouse_training.json"
MODEL_SUBDIR = "model"


@dataclass
class TrainResult:
    model_dir: Path
    dataset_ref: str
    manifest_sha256: str
    steps: int
    losses: list[float] = field(default_factory=list)
    resumed_from: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    is_main: bool = True  # False in every process but the first under accelerate / torchrun

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def train(config: TrainConfig) -> TrainResult:
    """Train the configured student on the configured dataset version; returns where the model is."""
    if config.threads:
        torch.set_num_threads(config.threads)
    version = DatasetStore(config.store_root).resolve(config.dataset)  # verifies every file's sha256
    manifest_sha256 = version.manifest_sha256
    output_dir = Path(config.output_dir)
    if int(os.environ.get("RANK", "0")) == 0:  # under accelerate / torchrun only the first process writes
        output_dir.mkdir(parents=True, exist_ok=True)
    model_dir = output_dir / MODEL_SUBDIR

    if config.objective == "classifier_kd":
        from trainer.classifier import train_classifier

        loop, details = train_classifier(config, version, model_dir)
    else:
        from trainer.causal import train_causal

        loop, details = train_causal(config, version, model_dir)

    provenance = {
        "dataset": version.ref,
        "dataset_requested": config.dataset,
        "manifest_sha256": manifest_sha256,
        "objective": config.objective,
        "config": config.model_dump(mode="json"),
        "steps": loop.steps,
        "resumed_from": loop.resumed_from,
        "final_loss": loop.final_loss,
        "losses": loop.losses,
        "train_seconds": round(loop.seconds, 3),
        "code_version": code_version(),
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **details,
    }
    if loop.is_main:  # with several processes, the first one writes
        (model_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    return TrainResult(
        model_dir, version.ref, manifest_sha256, loop.steps, loop.losses, loop.resumed_from, details, loop.is_main
    )
