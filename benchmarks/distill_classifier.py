"""Distil a classifier teacher into a small, fast student on any labelled task.

1. Teachers, trained on the train split: the offline MiniLM encoder fine-tuned end to
   end (`finetune: auto`: full from 1,000 examples, early stopping and calibration on a
   held-out 10% of the train rows), and the frozen encoder + linear head for comparison.
2. The teacher labels the transfer set (the train texts, with --augment N also N
   perturbed copies of each, Tang et al. 2019; with --pool FILE unlabelled texts too)
   through the `classifier` teacher backend; the result is published as a dataset version.
3. Students with the default recipe (TrainConfig defaults): KD on the soft targets and
   the hard-label baseline, --seeds seeds each.
4. Everything is scored on the human-labelled test split: macro-F1 (over true and
   predicted labels), ratios to both teachers, ECE calibrated and raw for every model,
   single-example latency (same threads), parameters; and the teacher backend's labelling
   speed against sentence-transformers' own `encode` of the same texts.

    python benchmarks/distill_classifier.py --train FILE --test FILE --text-column NAME
        --label-column NAME [--quick] [--seeds N] [--format csv|tsv|jsonl] [--no-header]

Files: CSV, TSV or JSONL (by suffix or --format); the label set is the train labels.
Ends with one line: RESULT teacher_f1=... head_teacher_f1=... kd_f1=... hard_f1=... f1_ratio=...
hard_f1_ratio=... latency_ratio=... kd_ece=... hard_ece=... teacher_ece=... params_ratio=... seeds=...
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

from curation.store import DatasetStore, DatasetVersion  # noqa: E402
from factory.schema import record_id  # noqa: E402
from factory.teachers import ClassifierTeacherConfig, TeacherRequest, build_teacher, train_encoder_head  # noqa: E402
from trainer.augment import perturbed_copies  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.evaluation import TeacherPredictor, TestSet, evaluate, interval_text, score  # noqa: E402
from trainer.training import train  # noqa: E402

INSTRUCTION = "Classify this text."
QUICK_TRAIN_TEXTS = 2000  # --quick trains on at most this many texts
QUICK_TEST_TEXTS = 2000  # --quick scores at most this many test texts
console = Console()


def read_labelled(
    path: Path, text_column: str, label_column: str | None, fmt: str | None, header: bool
) -> pl.DataFrame:
    """Columns text (and label): one row per distinct text; a missing file or column is one clear error."""
    if not path.is_file():
        raise SystemExit(f"{path}: no such file")
    fmt = fmt or {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".tsv": "tsv"}.get(path.suffix, "csv")
    try:
        if fmt == "jsonl":
            frame = pl.read_ndjson(path)
        else:
            separator = "\t" if fmt == "tsv" else ","
            frame = pl.read_csv(path, separator=separator, has_header=header, quote_char=None if fmt == "tsv" else '"')
    except pl.exceptions.PolarsError as error:
        raise SystemExit(f"{path}: cannot be read as {fmt} ({str(error).splitlines()[0]})") from None
    columns = [text_column] + ([label_column] if label_column else [])
    for column in columns:
        if column not in frame.columns:
            raise SystemExit(f"{path}: no column {column!r} (columns: {', '.join(frame.columns)})")
    names = ["text"] + (["label"] if label_column else [])
    frame = frame.select(
        [pl.col(c).cast(pl.String).str.strip_chars().alias(n) for c, n in zip(columns, names)]
    ).drop_nulls()
    frame = frame.filter(pl.col("text") != "").unique("text", keep="first", maintain_order=True)
    if frame.height == 0:
        raise SystemExit(f"{path}: no rows with a text{' and a label' if label_column else ''}")
    return frame


def label_with_teacher(teacher_dir: Path, texts: list[str]) -> tuple[list[list[float]], list[str], dict, float]:
    """Soft targets for every text through the classifier teacher backend, and its seconds."""
    teacher = build_teacher(ClassifierTeacherConfig(model=str(teacher_dir), kind="encoder_head", device="cpu"))
    requests = [TeacherRequest.chat(text) for text in texts]
    started = time.perf_counter()
    generations = asyncio.run(teacher.generate(requests))
    seconds = time.perf_counter() - started
    failed = [g.error for g in generations if not g.ok]
    if failed:
        raise SystemExit(f"teacher failed on {len(failed)} texts: {failed[0]}")
    return [g.class_probs for g in generations], list(teacher.labels), teacher.identity.record(requests[0]), seconds


def labelling_speed(teacher_dir: Path, texts: list[str]) -> dict[str, float]:
    """Sentences/s of the teacher backend vs sentence-transformers' `encode` (same model, texts, batch 32)."""
    teacher = build_teacher(ClassifierTeacherConfig(model=str(teacher_dir), kind="encoder_head", device="cpu"))
    encoder = teacher._encoder  # the very encoder the backend runs
    requests = [TeacherRequest.chat(text) for text in texts]
    encoder.encode(texts[:64], batch_size=32)  # warm-up
    timings = {"teacher": 0.0, "encode": 0.0}
    for _ in range(2):  # interleaved, so load from other processes hits both alike
        started = time.perf_counter()
        encoder.encode(texts, batch_size=32)
        timings["encode"] += time.perf_counter() - started
        started = time.perf_counter()
        asyncio.run(teacher.generate(requests))  # no cache: every text is computed again
        timings["teacher"] += time.perf_counter() - started
    return {name: 2 * len(texts) / seconds for name, seconds in timings.items()}


def publish_version(
    store: DatasetStore,
    name: str,
    texts: list[str],
    parents: list[str | None],
    probs: list[list[float]],
    labels: list[str],
    teacher: dict,
) -> DatasetVersion:
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
        name,
        frame,
        label_set=labels,
        description="Train texts (and perturbed copies, parent_id: the original) labelled with soft targets by a "
        "fine-tuned MiniLM classifier teacher.",
        config={"teacher": teacher["model"]},
    )


def transfer_set(train_texts: list[str], pool_texts: list[str], copies: int) -> tuple[list[str], list[str | None]]:
    """Texts for the teacher to label, and each one's parent id (perturbed copies point at their original)."""
    originals = list(dict.fromkeys(train_texts + pool_texts))
    seen = set(originals)
    extra = {text: index for text, index in perturbed_copies(originals, copies) if text not in seen}
    original_ids = [record_id(INSTRUCTION, text, "import") for text in originals]
    return originals + list(extra), [None] * len(originals) + [original_ids[i] for i in extra.values()]


def load_splits(args: argparse.Namespace) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The train and test splits the command line names, sampled down to `--*-limit` (or the --quick sizes)."""
    read = dict(fmt=args.format, header=not args.no_header)
    train_split = read_labelled(args.train, args.text_column, args.label_column, **read)
    test_split = read_labelled(args.test, args.text_column, args.label_column, **read)
    train_limit = args.train_limit or (QUICK_TRAIN_TEXTS if args.quick else None)
    # scoring is cheap beside training, and ECE over 15 bins needs the rows: a perfectly calibrated model
    # shows ECE 0.031 on average on 800 SST-2 sentences (0.046 at the 95th percentile), against a 0.05 bar
    test_limit = args.test_limit or (QUICK_TEST_TEXTS if args.quick else None)
    if train_limit and train_limit < train_split.height:
        train_split = train_split.sample(n=train_limit, seed=0, shuffle=True)
    if test_limit and test_limit < test_split.height:
        test_split = test_split.sample(n=test_limit, seed=0, shuffle=True)
    return train_split, test_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True, help="labelled train file (CSV, TSV or JSONL)")
    parser.add_argument("--test", type=Path, required=True, help="human-labelled test file")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--format", choices=["csv", "tsv", "jsonl"], default=None, help="[default: by suffix]")
    parser.add_argument("--no-header", action="store_true", help="no header row (columns column_0, ...)")
    parser.add_argument("--pool", type=Path, default=None, help="unlabelled texts the teacher labels too")
    parser.add_argument("--quick", action="store_true", help="at most 2,000 train / 2,000 test texts, 1 seed")
    parser.add_argument("--train-limit", type=int, default=None, help="sample this many train texts")
    parser.add_argument("--test-limit", type=int, default=None, help="sample this many test texts")
    parser.add_argument("--seeds", type=int, default=3, help="student seeds per objective (--quick: 1)")
    parser.add_argument("--augment", type=int, default=0, help="perturbed copies per text for the teacher to label")
    parser.add_argument("--finetune", choices=["auto", "full", "head"], default="auto", help="the main teacher")
    parser.add_argument("--student", default=None, help="student type [default: TrainConfig's default]")
    parser.add_argument("--epochs", type=float, default=None, help="student epochs [default: TrainConfig's]")
    parser.add_argument(
        "--match-texts", type=int, default=None, help="a matched static student's student.match_texts [default: its]"
    )
    parser.add_argument(
        "--pooling", choices=["attention", "mean"], default=None, help="a matched static student's student.pooling"
    )
    parser.add_argument(
        "--context-heads", type=int, default=None, help="a matched static student's student.context_heads (0: none)"
    )
    parser.add_argument("--work", type=Path, default=None, help="work directory [default: a temporary one]")
    parser.add_argument("--name", default="task", help="dataset name for the published version")
    parser.add_argument("--latency-examples", type=int, default=200)
    args = parser.parse_args()

    train_split, test_split = load_splits(args)
    read = dict(fmt=args.format, header=not args.no_header)
    label_set = sorted(train_split["label"].unique().to_list())
    pool = read_labelled(args.pool, args.text_column, None, **read)["text"].to_list() if args.pool else []
    work = args.work or Path(tempfile.mkdtemp(prefix="distill_classifier_"))
    work.mkdir(parents=True, exist_ok=True)
    test_file = work / "test.jsonl"
    test_split.write_ndjson(test_file)
    seeds = list(range(1 if args.quick else args.seeds))
    console.print(
        f"{args.train.name}: {train_split.height} train, {test_split.height} test, {len(label_set)} labels, "
        f"{len(pool)} pool texts; {work}"
    )

    started = time.perf_counter()
    teachers = {"teacher": (work / "teacher", args.finetune), "head_teacher": (work / "teacher-head", "head")}
    for name, (directory, finetune) in teachers.items():
        if not (directory / "head.safetensors").is_file():
            train_encoder_head(
                train_split["text"].to_list(),
                train_split["label"].to_list(),
                directory,
                label_set=label_set,
                finetune=finetune,
            )
        console.print(f"{name} ({finetune}) trained ({time.perf_counter() - started:.0f} s)")
    teacher_dir = teachers["teacher"][0]

    texts, parents = transfer_set(train_split["text"].to_list(), pool, args.augment)
    probs, labels, identity, seconds = label_with_teacher(teacher_dir, texts)
    store = DatasetStore(work / "datasets")
    version = publish_version(store, args.name, texts, parents, probs, labels, identity)
    console.print(f"published {version.ref} ({len(texts)} rows labelled in {seconds:.0f} s)")
    speed = labelling_speed(teacher_dir, test_split["text"].to_list()[:1000])

    runs: dict[str, list[dict]] = {"kd": [], "hard": []}
    teacher_report = None
    overrides = {}
    if args.student:
        overrides["student"] = {"type": args.student}
    for knob in ("match_texts", "pooling", "context_heads"):
        if (value := getattr(args, knob)) is not None:
            overrides["student"] = {"type": "static_embedding", **overrides.get("student", {}), knob: value}
    if args.epochs:
        overrides["epochs"] = args.epochs
    for kind, alpha in (("kd", 1.0), ("hard", 0.0)):
        for seed in seeds:
            config = TrainConfig(
                dataset=version.ref,
                store_root=store.root,
                output_dir=work / f"student-{kind}-{seed}",
                alpha=alpha,
                seed=seed,
                threads=1,
                **overrides,
            )
            result = train(config)
            report = evaluate(
                result.model_dir,
                test_file,
                teacher_dir=teacher_dir if teacher_report is None else None,  # the teacher is timed once
                out_dir=work / f"eval-{kind}-{seed}",
                latency_examples=args.latency_examples,
            )
            teacher_report = teacher_report or report
            runs[kind].append(report["student"])
            interval = (report.get("ratios") or {}).get("f1_interval_95")
            spread = (
                f" (F1 / teacher {report['ratios']['f1']:.3f}, 95% bootstrap over the test rows "
                f"{interval_text(interval)})"
                if interval
                else ""
            )
            console.print(
                f"{kind} seed {seed}: macro-F1 {report['student']['macro_f1']:.4f} ECE {report['student']['ece']:.4f}"
                f"{spread}"
            )
    teacher = teacher_report["teacher"]
    test = TestSet(test_file, test_split["text"].to_list(), test_split["label"].to_list())
    head = score(TeacherPredictor(teachers["head_teacher"][0]), test, "head teacher")

    def mean(kind: str, *path: str) -> float:
        values = []
        for run in runs[kind]:
            value = run
            for key in path:
                value = value[key]
            values.append(value)
        return statistics.fmean(values)

    table = Table("model", "macro-F1", "F1 / teacher", "ECE (T)", "ECE raw", "p50 ms", "params")
    table.add_row(
        f"teacher ({teachers['teacher'][1]})",
        f"{teacher['macro_f1']:.4f}",
        "1.000",
        f"{teacher['ece']:.4f} ({teacher['calibration_temperature']:.2f})",
        f"{teacher['ece_raw']:.4f}",
        f"{teacher['latency_ms']['p50']:.2f}",
        f"{teacher['parameters']:,}",
    )
    table.add_row(
        "teacher (frozen encoder + head)",
        f"{head['macro_f1']:.4f}",
        f"{head['macro_f1'] / teacher['macro_f1']:.3f}",
        f"{head['ece']:.4f} ({head['temperature']:.2f})",
        f"{head['ece_raw']:.4f}",
        "",
        "",
    )
    for kind, name in (("kd", "student KD (soft targets)"), ("hard", "student hard labels")):
        f1 = mean(kind, "macro_f1")
        table.add_row(
            f"{name}, mean of {len(seeds)}",
            f"{f1:.4f}",
            f"{f1 / teacher['macro_f1']:.3f}",
            f"{mean(kind, 'ece'):.4f} ({mean(kind, 'calibration_temperature'):.2f})",
            f"{mean(kind, 'ece_raw'):.4f}",
            f"{mean(kind, 'latency_ms', 'p50'):.3f}",
            f"{runs[kind][0]['parameters']:,}",
        )
    console.print(table)
    console.print(
        f"teacher backend labelling speed: {speed['teacher']:.0f} texts/s vs sentence-transformers encode "
        f"{speed['encode']:.0f} texts/s (ratio {speed['teacher'] / speed['encode']:.3f}, batch 32, same texts)"
    )
    console.print(
        f"ECE a perfectly calibrated model with the same confidences reads on these {len(test_split)} test texts "
        f"(sampling noise alone): KD student {mean('kd', 'ece_floor'):.4f}, teacher {teacher['ece_floor']:.4f}"
    )
    console.print(f"full report: {work / 'eval-kd-0' / 'evaluation.md'}; total {time.perf_counter() - started:.0f} s")
    kd_f1, hard_f1 = mean("kd", "macro_f1"), mean("hard", "macro_f1")
    print(
        f"RESULT teacher_f1={teacher['macro_f1']:.4f} head_teacher_f1={head['macro_f1']:.4f} kd_f1={kd_f1:.4f} "
        f"hard_f1={hard_f1:.4f} f1_ratio={kd_f1 / teacher['macro_f1']:.4f} "
        f"hard_f1_ratio={hard_f1 / teacher['macro_f1']:.4f} "
        f"head_f1_ratio={kd_f1 / head['macro_f1']:.4f} "
        f"latency_ratio={mean('kd', 'latency_ms', 'p50') / teacher['latency_ms']['p50']:.4f} "
        f"kd_ece={mean('kd', 'ece'):.4f} hard_ece={mean('hard', 'ece'):.4f} teacher_ece={teacher['ece']:.4f} "
        f"kd_ece_raw={mean('kd', 'ece_raw'):.4f} teacher_ece_raw={teacher['ece_raw']:.4f} "
        f"kd_ece_floor={mean('kd', 'ece_floor'):.4f} teacher_ece_floor={teacher['ece_floor']:.4f} "
        f"params_ratio={runs['kd'][0]['parameters'] / teacher['parameters']:.4f} "
        f"labelling_speed_ratio={speed['teacher'] / speed['encode']:.4f} seeds={len(seeds)}"
    )


if __name__ == "__main__":
    main()
