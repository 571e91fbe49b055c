"""Student training: SFT, distillation losses, evaluation and export.

from trainer import TrainConfig, train, evaluate
result = train(TrainConfig(dataset="tickets@v3", output_dir="runs/student"))
report = evaluate(result.model_dir, "test.jsonl", teacher_dir="teacher/")
"""

from __future__ import annotations

from typing import Any

from trainer.config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "evaluate", "train"]


def __getattr__(name: str) -> Any:
    # torch-heavy modules load on first use, so importing the config stays cheap
    if name in ("train", "TrainResult"):
        from trainer import training

        return getattr(training, name)
    if name == "evaluate":
        from trainer.evaluation import evaluate

        return evaluate
    raise AttributeError(name)
