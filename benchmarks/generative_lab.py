"""A generative distillation lab with checkable answers.

1. Teacher: a small Llama (its own digit-splitting BPE tokenizer) trained here on
   addition and subtraction, bare and as short word problems, graded by the number of
   digits, each answered with one worked line and `Final answer: N`. Cached under
   --work; saved in HF format; served by vLLM in the pipeline, scored with transformers.
2. Pipeline: the held-out seed questions go through `stillhouse run`: respond with n=5
   at T=0.8 and top-20 logprobs (vLLM in-process by default, or vLLM's OpenAI server),
   consistency on the final answer, entropy, publish. The same samples are published
   uncurated too.
3. Students (teacher's tokenizer, ~1/4 of its parameters, random init) through the
   project's trainer: SFT on the curated responses, token KD on the stored top-k at
   T=1 and T=2, token KD on the uncurated set; same steps, 10 seeds each (paired by seed:
   one initialisation per seed, shared by every objective).
4. Every model is scored by exact match of the final answer at temperature 0 on
   held-out questions that neither the teacher's training nor the pipeline saw.

    python benchmarks/generative_lab.py [--quick] [--work DIR] [--backend auto|vllm|openai|transformers]
        [--student-steps N]

Ends with one line: RESULT teacher_acc=... single_sample_acc=... majority_acc=... base_error=...
entropy_drop_error=... consistency_drop_error=... kept_acc=... sft_acc=... kd_acc=... kd_t2_acc=...
kd_uncurated_acc=... kd_ratio=... params_ratio=... seeds=N
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.lab.models import STUDENT_SIZE, build_model, exact_match, parameter_count  # noqa: E402
from benchmarks.lab.pipeline import (  # noqa: E402
    PipelineSettings,
    response_accuracy,
    run_pipeline,
    signal_figures,
    vllm_available,
)
from benchmarks.lab.students import OBJECTIVES, StudentSettings, run_students  # noqa: E402
from benchmarks.lab.task import MAX_LEVEL, make_problems  # noqa: E402
from benchmarks.lab.teacher import TeacherSettings, cached_teacher  # noqa: E402
from curation.store import DatasetStore  # noqa: E402

console = Console(width=150)  # the table stays readable in logs (no terminal width there)
# The question universe, fixed: scoring questions first, then the pipeline's seed questions
# (disjoint from them); the teacher never trains on either. Smaller sizes take prefixes.
EVAL_POOL, SEED_POOL = 1000, 2000


@dataclass(frozen=True)
class LabSize:
    seeds: int  # pipeline questions
    eval: int  # scoring questions
    student_steps: int
    student_seeds: int
    teacher: TeacherSettings = field(default_factory=TeacherSettings)


SIZES = {
    # 10 student seeds: with 3, the spread between seeds (+-0.04 to 0.09) was wider than every gap
    # between the objectives, and the paired KD - SFT difference has a standard error near 0.01
    "full": LabSize(seeds=2000, eval=600, student_steps=400, student_seeds=10),
    "quick": LabSize(seeds=300, eval=300, student_steps=150, student_seeds=1),
    # the test's end-to-end run: a briefly trained teacher, a handful of student steps
    "smoke": LabSize(seeds=40, eval=40, student_steps=4, student_seeds=3, teacher=TeacherSettings(steps=150)),
}


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f}  [{', '.join(f'{v:.3f}' for v in values)}]"


def paired(values: list[float], baseline: list[float]) -> tuple[str, str]:
    """Mean difference over seeds (each seed: same initialisation, same steps) and its standard error."""
    differences = [v - b for v, b in zip(values, baseline)]
    error = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else 0.0
    return f"{statistics.mean(differences):+.3f}", f"± {error:.3f} (standard error); {len(differences)} seeds"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="300 seeds, 300 scoring questions, 150 steps, 1 seed")
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="explicit size (overrides --quick)")
    parser.add_argument(
        "--work", type=Path, default=Path.home() / ".cache" / "stillhouse" / "generative_lab", help="work directory"
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "vllm", "openai", "transformers"],
        default="auto",
        help="how the pipeline serves the teacher; auto: in-process vLLM, transformers where vllm is absent",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--student-steps", type=int, default=None, help="steps per student [default: by size]")
    parser.add_argument("--seeds", type=int, default=None, help="student seeds per objective [default: by size]")
    args = parser.parse_args()
    size = SIZES[args.size or ("quick" if args.quick else "full")]
    torch.set_num_threads(args.threads)
    backend = args.backend if args.backend != "auto" else ("vllm" if vllm_available() else "transformers")
    work = args.work / (args.size or ("quick" if args.quick else "full"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    eval_pool = make_problems(EVAL_POOL, seed=101)
    seed_pool = make_problems(SEED_POOL, seed=202, exclude={p.question for p in eval_pool})
    eval_problems, seed_problems = eval_pool[: size.eval], seed_pool[: size.seeds]
    console.print(
        f"generative lab: {len(seed_problems)} pipeline questions, {len(eval_problems)} scoring questions, "
        f"levels 1-{MAX_LEVEL}, backend {backend}; work {work}"
    )

    # 1. the teacher
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher_dir = cached_teacher(args.work, size.teacher, eval_pool + seed_pool)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir, local_files_only=True)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, local_files_only=True)
    teacher_acc, teacher_levels = exact_match(teacher, tokenizer, eval_problems)
    teacher_params = parameter_count(teacher)
    student_params = parameter_count(build_model(tokenizer, STUDENT_SIZE, seed=0))
    del teacher
    console.print(
        f"teacher: exact match {teacher_acc:.3f} at T=0 on the scoring questions ({time.time() - started:.0f}s)"
    )

    # 2. the pipeline
    refs = run_pipeline(work, seed_problems, teacher_dir, PipelineSettings(backend=backend))
    store = DatasetStore(work / "datasets_out")
    truth = {p.question: p.answer for p in seed_problems}
    signals = signal_figures(store.resolve(refs["curated"]).read_all(), truth)
    uncurated_acc = response_accuracy(store.resolve(refs["uncurated"]).read(), truth)
    console.print(f"pipeline: done ({time.time() - started:.0f}s)")

    # 3. the students
    steps = args.student_steps or size.student_steps
    seeds = args.seeds or size.student_seeds
    student_settings = StudentSettings(steps=steps, seeds=tuple(range(seeds)))
    scores = run_students(work, refs, tokenizer, eval_problems, student_settings)
    means = {key: statistics.mean(values) for key, values in scores.items()}

    # 4. the table
    table = Table(title="Generative distillation lab (exact match of the final answer)")
    table.add_column("what")
    table.add_column("figure", justify="right")
    table.add_column("detail")
    levels = ", ".join(f"L{level} {acc:.2f}" for level, acc in teacher_levels.items())
    table.add_row("teacher, T=0, scoring questions", f"{teacher_acc:.3f}", f"{teacher_params:,} params; {levels}")
    table.add_row("one sample at T=0.8 (pipeline)", f"{signals['single_sample_acc']:.3f}", "mean over all 5 samples")
    table.add_row("majority of 5 samples", f"{signals['majority_acc']:.3f}", "")
    table.add_row("error of all responses", f"{signals['base_error']:.3f}", f"{signals['rows']} rows")
    for stage in ("consistency", "entropy"):
        rows = signals["dropped_rows"].get(stage, 0)
        error = signals[f"{stage}_drop_error"]
        ratio = f"{error / signals['base_error']:.1f}x base" if signals["base_error"] > 0 and rows else "-"
        table.add_row(f"error of rows {stage} drops", f"{error:.3f}", f"{rows} rows, {ratio}")
    table.add_row(
        "accuracy of kept responses",
        f"{signals['kept_acc']:.3f}",
        f"{signals['kept_rows']} rows; unfiltered {1 - signals['base_error']:.3f}",
    )
    table.add_row("accuracy of the uncurated set", f"{uncurated_acc:.3f}", "respond's pick: best mean logprob")
    for objective in OBJECTIVES:
        table.add_row(
            f"student: {objective.label}",
            f"{means[objective.key]:.3f}",
            f"{spread(scores[objective.key])}; {means[objective.key] / teacher_acc:.2f} of teacher"
            if teacher_acc
            else spread(scores[objective.key]),
        )
    for key, label in (("kd_acc", "token KD T=1"), ("kd_uncurated_acc", "KD uncurated")):
        table.add_row(f"{label} - SFT, paired by seed", *paired(scores[key], scores["sft_acc"]))
    table.add_row(
        "student / teacher parameters",
        f"{student_params / teacher_params:.3f}",
        f"{student_params:,}; {steps} steps x {student_settings.batch_size} each",
    )
    console.print(table)
    console.print(f"total {time.time() - started:.0f}s")

    result = {
        "teacher_acc": teacher_acc,
        "single_sample_acc": signals["single_sample_acc"],
        "majority_acc": signals["majority_acc"],
        "base_error": signals["base_error"],
        "entropy_drop_error": signals["entropy_drop_error"],
        "consistency_drop_error": signals["consistency_drop_error"],
        "kept_acc": signals["kept_acc"],
        **means,
        "kd_ratio": means["kd_acc"] / teacher_acc if teacher_acc else 0.0,
        "params_ratio": student_params / teacher_params,
    }
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in result.items()) + f" seeds={seeds}")


if __name__ == "__main__":
    main()
