"""Train the lab teacher once and cache it (HF format) under the work directory.

The cache key is a hash of everything that shapes the weights (size, steps, batch,
learning rate, seed, the held-out question sets), so a changed setting trains a new
teacher instead of silently reusing an old one. It is written to a temporary
directory and renamed into place: a killed run leaves no half-written teacher.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.lab.models import TEACHER_SIZE, build_model, build_tokenizer, parameter_count, save, train_teacher
from benchmarks.lab.task import TASK_VERSION, Problem, make_problem, make_problems

INFO_FILE = "lab_teacher.json"


@dataclass(frozen=True)
class TeacherSettings:
    # One warm-up + cosine schedule, about 0.18 s a step on one core. The step count sets how
    # imperfect the teacher is, and the lab needs errors to find (issue: 70-90% exact match):
    # 3,000 steps reached 0.960 on the scoring questions (validation 0.54 / 0.74 / 0.95 after
    # 600 / 1,200 / 1,800 of them), so the teacher takes 1,000 steps, about 3 minutes.
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0


def tokenizer_corpus(seed: int, count: int = 4000) -> list[str]:
    rng = random.Random(seed)
    problems = [make_problem(rng) for _ in range(count)]
    return [text for p in problems for text in (p.question, p.solution)]


def teacher_key(settings: TeacherSettings, held_out: list[Problem]) -> str:
    payload = {
        "settings": asdict(settings),
        "task": TASK_VERSION,
        "size": asdict(TEACHER_SIZE),
        "held_out": hashlib.sha256("\n".join(sorted(p.question for p in held_out)).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def cached_teacher(work: Path, settings: TeacherSettings, held_out: list[Problem]) -> Path:
    """The teacher directory for these settings, trained now if it is not cached yet.

    `held_out`: every question the pipeline or the scoring will ask; the teacher never trains on one.
    """
    directory = work / f"teacher-{teacher_key(settings, held_out)}"
    if (directory / INFO_FILE).is_file():
        print(f"teacher: cached {directory}", flush=True)
        return directory
    staging = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = build_tokenizer(tokenizer_corpus(settings.seed))
    model = build_model(tokenizer, TEACHER_SIZE, seed=settings.seed)
    print(
        f"teacher: training {parameter_count(model):,} parameters, {settings.steps} steps x {settings.batch_size}",
        flush=True,
    )
    # a progress monitor only: the teacher trains on none of these either
    validation = make_problems(96, seed=settings.seed + 7, exclude={p.question for p in held_out})
    started = time.time()
    losses = train_teacher(
        model,
        tokenizer,
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        exclude={p.question for p in held_out + validation},
        seed=settings.seed + 1,
        validation=validation,
    )
    save(model, tokenizer, staging)
    info = {
        "settings": asdict(settings),
        "size": asdict(TEACHER_SIZE),
        "parameters": parameter_count(model),
        "train_seconds": round(time.time() - started, 1),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
    }
    (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    print(f"teacher: trained in {info['train_seconds']:.0f}s -> {directory}", flush=True)
    return directory
