"""Ticket triage on Banking77: distill a MiniLM classifier teacher into a hashed-bag student.

1. Teacher: the offline MiniLM sentence encoder + a linear head trained on the human
   train split (factory.teachers.train_encoder_head).
2. The teacher labels the train texts with soft targets through the `classifier`
   teacher backend (with --augment N, also N perturbed copies of each text, Tang et al.
   2019); the result is published as a dataset version (DatasetStore).
3. Students: the same hashed-bag architecture trained with KD (soft targets) and with
   the teacher's hard labels only, 3 seeds each, from that version.
4. Everything is scored on the human-labelled test split: macro-F1, ratio, ECE,
   single-example latency p50/p95 on this CPU, parameters.

    python benchmarks/distill_banking77.py [--quick] [--data DIR] [--work DIR]

Ends with one line: RESULT teacher_f1=... kd_f1=... hard_f1=... f1_ratio=... latency_ratio=... kd_ece=...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import polars as pl  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from curation.store import DatasetStore  # noqa: E402
from factory.schema import record_id  # noqa: E402
from factory.teachers import ClassifierTeacherConfig, TeacherRequest, build_teacher, train_encoder_head  # noqa: E402
from trainer.config import HashedBagStudent, TrainConfig  # noqa: E402
from trainer.evaluation import evaluate  # noqa: E402
from trainer.training import train  # noqa: E402

INSTRUCTION = "Classify the intent of this customer-support ticket."
console = Console()


def load_split(data: Path, name: str, limit: int | None, seed: int = 0) -> pl.DataFrame:
    frame = pl.read_csv(data / f"{name}.csv").unique("text", keep="first", maintain_order=True)
    return frame.sample(n=limit, seed=seed, shuffle=True) if limit and limit < frame.height else frame


def augment(texts: list[str], copies: int, seed: int = 0) -> list[tuple[str, int]]:
    """Perturbed copies of each text for the teacher to label (Tang et al., 2019): word dropout,
    random word replacement and n-gram windows. Returns (text, index of the original)."""
    rng = random.Random(seed)
    vocabulary = sorted({word for text in texts for word in text.split()})
    out = []
    for index, text in enumerate(texts):
        words = text.split()
        for _ in range(copies if len(words) >= 3 else 0):
            kept = [w if rng.random() > 0.1 else rng.choice(vocabulary) for w in words if rng.random() > 0.15]
            kept = kept or words[:1]
            if rng.random() < 0.25 and len(kept) > 2:
                size = max(2, int(len(kept) * rng.uniform(0.6, 1.0)))
                start = rng.randint(0, len(kept) - size)
                kept = kept[start : start + size]
            out.append((" ".join(kept), index))
    return out


def label_with_teacher(teacher_dir: Path, texts: list[str]) -> tuple[list[list[float]], list[str], dict]:
    """Soft targets for every text through the classifier teacher backend."""
    teacher = build_teacher(ClassifierTeacherConfig(model=str(teacher_dir), kind="encoder_head", device="cpu"))
    requests = [TeacherRequest.chat(text) for text in texts]
    generations = asyncio.run(teacher.generate(requests))
    failed = [g.error for g in generations if not g.ok]
    if failed:
        raise SystemExit(f"teacher failed on {len(failed)} texts: {failed[0]}")
    return [g.class_probs for g in generations], list(teacher.labels), teacher.identity.record(requests[0])


def publish_version(
    store: DatasetStore,
    texts: list[str],
    parents: list[str | None],
    probs: list[list[float]],
    labels: list[str],
    teacher: dict,
    augment_copies: int,
):
    ids = [record_id(INSTRUCTION, text, "import", parent) for text, parent in zip(texts, parents)]
    frame = pl.DataFrame(
        {
            "id": ids,
            "instruction": [INSTRUCTION] * len(texts),
            "input": texts,
            "origin": ["import"] * len(texts),
            "parent_id": parents,
            "label": [labels[max(range(len(p)), key=p.__getitem__)] for p in probs],
            "label_probs": probs,
            "teacher": [teacher] * len(texts),
        },
        schema_overrides={"label_probs": pl.List(pl.Float32)},
    )
    return store.publish(
        "banking77-soft",
        frame,
        label_set=labels,
        description=(
            "Banking77 train texts and perturbed copies of them, labelled with soft targets by a MiniLM encoder-head "
            "teacher (parent_id: the train text a copy was made from)."
        ),
        config={"teacher": teacher["model"], "augment_copies": augment_copies},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 train / 770 test texts, 1 seed")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data root")
    parser.add_argument("--work", type=Path, default=None, help="work directory [default: a temporary one]")
    parser.add_argument("--temperature", type=float, default=1.0, help="KD temperature")
    parser.add_argument("--alpha", type=float, default=1.0, help="KD weight (the hard student uses 0)")
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument(
        "--augment", type=int, default=0, help="perturbed copies per train text for the teacher to label"
    )
    parser.add_argument("--seeds", type=int, default=3, help="student seeds per objective (--quick: 1)")
    parser.add_argument("--buckets", type=int, default=HashedBagStudent().buckets, help="student hash buckets")
    parser.add_argument("--hourly-usd", type=float, default=0.10)
    args = parser.parse_args()

    data = args.data / "banking77"
    if not (data / "train.csv").is_file():
        raise SystemExit(f"{data}/train.csv not found (pass --data DIR, the folder that holds banking77/)")
    work = args.work or Path(tempfile.mkdtemp(prefix="distill_banking77_"))
    work.mkdir(parents=True, exist_ok=True)
    categories = json.loads((data / "categories.json").read_text())
    train_split = load_split(data, "train", 2000 if args.quick else None)
    test_split = load_split(data, "test", 770 if args.quick else None)
    test_file = work / "test.csv"
    test_split.write_csv(test_file)
    seeds = list(range(1 if args.quick else args.seeds))
    console.print(f"banking77: {train_split.height} train, {test_split.height} test, {len(categories)} intents; {work}")

    started = time.perf_counter()
    teacher_dir = work / "teacher"
    if not (teacher_dir / "head.safetensors").is_file():
        train_encoder_head(
            train_split["text"].to_list(), train_split["category"].to_list(), teacher_dir, label_set=categories
        )
    console.print(f"teacher trained ({time.perf_counter() - started:.0f} s)")

    store = DatasetStore(work / "datasets")
    originals = train_split["text"].to_list()
    seen = set(originals)
    copies = [(text, index) for text, index in augment(originals, args.augment) if text not in seen]
    copies = list({text: (text, index) for text, index in copies}.values())  # one row per distinct text
    texts = originals + [text for text, _ in copies]
    original_ids = [record_id(INSTRUCTION, text, "import") for text in originals]
    parents = [None] * len(originals) + [original_ids[index] for _, index in copies]
    probs, labels, identity = label_with_teacher(teacher_dir, texts)
    version = publish_version(store, texts, parents, probs, labels, identity, args.augment)
    console.print(
        f"published {version.ref} ({version.manifest['rows']['kept']} rows, {time.perf_counter() - started:.0f} s)"
    )

    runs: dict[str, list[dict]] = {"kd": [], "hard": []}
    full_report = None
    for kind, alpha in (("kd", args.alpha), ("hard", 0.0)):
        for seed in seeds:
            config = TrainConfig(
                dataset=version.ref,
                store_root=store.root,
                objective="classifier_kd",
                student=HashedBagStudent(buckets=args.buckets),
                output_dir=work / f"student-{kind}-{seed}",
                epochs=args.epochs,
                temperature=args.temperature,
                alpha=alpha,
                seed=seed,
                threads=1,
            )
            result = train(config)
            with_teacher = full_report is None  # the teacher is scored (and timed) once, next to the first student
            report = evaluate(
                result.model_dir,
                test_file,
                teacher_dir=teacher_dir if with_teacher else None,
                hourly_usd=args.hourly_usd,
                out_dir=work / f"eval-{kind}-{seed}",
                label_column="category",
            )
            full_report = full_report or report
            runs[kind].append(report["student"])
            console.print(
                f"{kind} seed {seed}: macro-F1 {report['student']['macro_f1']:.4f} ECE {report['student']['ece']:.4f}"
            )

    teacher = full_report["teacher"]

    def mean(kind: str, *path: str) -> float:
        values = []
        for run in runs[kind]:
            value = run
            for key in path:
                value = value[key]
            values.append(value)
        return statistics.fmean(values)

    table = Table(
        "model", "macro-F1", "F1 / teacher", "ECE", "p50 ms", "p95 ms", "params", f"mean of {len(seeds)} seeds"
    )
    table.add_row(
        "teacher (MiniLM + head)",
        f"{teacher['macro_f1']:.4f}",
        "1.000",
        f"{teacher['ece']:.4f}",
        f"{teacher['latency_ms']['p50']:.2f}",
        f"{teacher['latency_ms']['p95']:.2f}",
        f"{teacher['parameters']:,}",
        "",
    )
    for kind, name in (
        ("kd", f"student KD (T={args.temperature}, alpha={args.alpha})"),
        ("hard", "student hard labels"),
    ):
        f1 = mean(kind, "macro_f1")
        table.add_row(
            name,
            f"{f1:.4f}",
            f"{f1 / teacher['macro_f1']:.3f}",
            f"{mean(kind, 'ece'):.4f}",
            f"{mean(kind, 'latency_ms', 'p50'):.3f}",
            f"{mean(kind, 'latency_ms', 'p95'):.3f}",
            f"{runs[kind][0]['parameters']:,}",
            "yes",
        )
    console.print(table)
    console.print(f"full report: {work / 'eval-kd-0' / 'evaluation.md'}; total {time.perf_counter() - started:.0f} s")
    kd_f1, hard_f1 = mean("kd", "macro_f1"), mean("hard", "macro_f1")
    print(
        f"RESULT teacher_f1={teacher['macro_f1']:.4f} kd_f1={kd_f1:.4f} hard_f1={hard_f1:.4f} "
        f"f1_ratio={kd_f1 / teacher['macro_f1']:.4f} hard_f1_ratio={hard_f1 / teacher['macro_f1']:.4f} "
        f"latency_ratio={mean('kd', 'latency_ms', 'p50') / teacher['latency_ms']['p50']:.4f} "
        f"kd_ece={mean('kd', 'ece'):.4f} hard_ece={mean('hard', 'ece'):.4f} teacher_ece={teacher['ece']:.4f} "
        f"params_ratio={runs['kd'][0]['parameters'] / teacher['parameters']:.4f} seeds={len(seeds)}"
    )


if __name__ == "__main__":
    main()
