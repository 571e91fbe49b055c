"""Students through the project's trainer: SFT and token-level KD, same steps, several seeds.

Every student starts from the same random initialisation for a given seed (the
teacher's tokenizer, about a quarter of its parameters) and takes exactly `steps`
optimizer steps, whatever the size of its dataset: epochs = steps / batches per epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.lab.models import STUDENT_SIZE, build_model, exact_match, save
from benchmarks.lab.task import Problem
from curation.store import DatasetStore
from trainer.config import CausalLMStudent, TrainConfig
from trainer.training import train


@dataclass(frozen=True)
class Objective:
    key: str  # the RESULT key
    label: str
    objective: str  # trainer objective
    dataset: str  # which published version
    temperature: float = 1.0


OBJECTIVES = [
    Objective("sft_acc", "SFT on curated responses", "sft", "curated"),
    Objective("kd_acc", "token KD T=1, curated", "token_kd", "curated", 1.0),
    Objective("kd_t2_acc", "token KD T=2, curated", "token_kd", "curated", 2.0),
    Objective("kd_uncurated_acc", "token KD T=1, uncurated", "token_kd", "uncurated", 1.0),
]


@dataclass
class StudentSettings:
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 1  # one torch thread: on a shared 2-core CPU two are several times slower


def student_init(work: Path, tokenizer: Any, seed: int) -> Path:
    """A random-initialised student with the teacher's tokenizer (one per seed, shared by every objective)."""
    directory = work / "students" / f"init-seed{seed}"
    if not (directory / "config.json").exists():
        save(build_model(tokenizer, STUDENT_SIZE, seed=1000 + seed), tokenizer, directory)
    return directory


def train_student(
    work: Path, objective: Objective, ref: str, init_dir: Path, seed: int, settings: StudentSettings
) -> Path:
    store_root = work / "datasets_out"
    rows = DatasetStore(store_root).resolve(ref).manifest["rows"]["kept"]
    batches_per_epoch = math.ceil(rows / settings.batch_size)
    config = TrainConfig(
        dataset=ref,
        store_root=store_root,
        objective=objective.objective,
        student=CausalLMStudent(path=str(init_dir), max_length=128),
        output_dir=work / "students" / f"{objective.key}-seed{seed}",
        lr=settings.lr,
        epochs=(settings.steps - 0.5) / batches_per_epoch,  # ceil(epochs * batches) == steps exactly
        batch_size=settings.batch_size,
        seed=seed,
        temperature=objective.temperature,
        alpha=1.0,
        resume=False,
        threads=settings.threads,
    )
    result = train(config)
    if result.steps != settings.steps:
        raise RuntimeError(f"{objective.key} seed {seed}: {result.steps} steps, expected {settings.steps}")
    return result.model_dir


def run_students(
    work: Path, refs: dict[str, str], tokenizer: Any, eval_problems: list[Problem], settings: StudentSettings
) -> dict[str, list[float]]:
    """Exact match of every (objective, seed) student on the held-out problems."""
    from transformers import AutoModelForCausalLM

    scores: dict[str, list[float]] = {o.key: [] for o in OBJECTIVES}
    for seed in settings.seeds:
        init_dir = student_init(work, tokenizer, seed)
        for objective in OBJECTIVES:
            started = time.time()
            model_dir = train_student(work, objective, refs[objective.dataset], init_dir, seed, settings)
            model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
            accuracy, _ = exact_match(model, tokenizer, eval_problems)
            scores[objective.key].append(accuracy)
            print(
                f"  student {objective.key} seed {seed}: exact match {accuracy:.3f} ({time.time() - started:.0f}s)",
                flush=True,
            )
    return scores
