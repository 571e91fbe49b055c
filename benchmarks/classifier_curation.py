"""Does entropy curation help classifier distillation? Measured against human labels.

1. The train split is halved: the teacher learns from one half (as a user's few labelled
   examples), then labels the other half (the pool) with soft targets through the
   `classifier` backend; the pool's human labels are kept aside, unseen by anything.
2. The entropy stage (`max_quantile` as in the quickstart) runs on the pool's soft labels.
   Teacher error rate (teacher label != human label) among the rows it drops vs all rows:
   if the stage finds the teacher's mistakes, the first is well above the second.
3. Students with the default recipe are trained on the curated pool (kept rows) and on
   the whole pool, and scored on the human-labelled test split.

    python benchmarks/classifier_curation.py --train FILE --test FILE --text-column NAME
        --label-column NAME [--quick] [--seeds N] [--max-quantile Q]

Ends with one line: RESULT entropy_drop_error=... base_error=... curated_f1=... uncurated_f1=...
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402

from benchmarks.distill_classifier import console, label_with_teacher, load_splits, publish_version  # noqa: E402
from curation.config import EntropyConfig  # noqa: E402
from curation.pipeline import run_stages  # noqa: E402
from curation.stages.entropy import Entropy  # noqa: E402
from curation.store import DatasetStore  # noqa: E402
from factory.teachers import train_encoder_head  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.evaluation import evaluate  # noqa: E402
from trainer.training import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--format", choices=["csv", "tsv", "jsonl"], default=None, help="[default: by suffix]")
    parser.add_argument("--no-header", action="store_true", help="no header row (columns column_0, ...)")
    parser.add_argument("--quick", action="store_true", help="at most 2,000 train / 800 test texts, 1 seed")
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-quantile", type=float, default=0.95, help="the entropy stage's cut (quickstart: 0.95)")
    parser.add_argument("--finetune", choices=["auto", "full", "head"], default="auto", help="the teacher")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    train_split, test_split = load_splits(args)
    label_set = sorted(train_split["label"].unique().to_list())
    shuffled = train_split.sample(fraction=1.0, seed=1, shuffle=True)
    labelled, pool = shuffled.head(shuffled.height // 2), shuffled.tail(shuffled.height - shuffled.height // 2)
    work = args.work or Path(tempfile.mkdtemp(prefix="classifier_curation_"))
    work.mkdir(parents=True, exist_ok=True)
    test_file = work / "test.jsonl"
    test_split.write_ndjson(test_file)
    seeds = list(range(1 if args.quick else args.seeds))
    console.print(f"{labelled.height} labelled for the teacher, {pool.height} pool, {test_split.height} test; {work}")

    started = time.perf_counter()
    teacher_dir = work / "teacher"
    if not (teacher_dir / "head.safetensors").is_file():
        train_encoder_head(
            labelled["text"].to_list(), labelled["label"].to_list(), teacher_dir, label_set=label_set,
            finetune=args.finetune,
        )  # fmt: skip
    texts = pool["text"].to_list()
    probs, labels, identity, _ = label_with_teacher(teacher_dir, texts)
    console.print(f"teacher trained and pool labelled ({time.perf_counter() - started:.0f} s)")

    store = DatasetStore(work / "datasets")
    uncurated = publish_version(store, "uncurated", texts, [None] * len(texts), probs, labels, identity)
    frame = uncurated.read()
    curated_frame, _ = run_stages(frame, [Entropy(EntropyConfig(max_quantile=args.max_quantile))], console)
    human = dict(zip(pool["text"].to_list(), pool["label"].to_list()))
    scored = curated_frame.with_columns(
        human=pl.col("input").replace_strict(human),
        dropped=pl.col("drop_stage").is_not_null(),
    ).with_columns(error=pl.col("label") != pl.col("human"))
    base_error = float(scored["error"].mean())
    drop_error = float(scored.filter("dropped")["error"].mean())
    kept_error = float(scored.filter(~pl.col("dropped"))["error"].mean())
    curated = store.publish("curated", curated_frame, label_set=labels)  # dropped rows go to rejected.parquet

    f1: dict[str, list[float]] = {"curated": [], "uncurated": []}
    for name, version in (("curated", curated), ("uncurated", uncurated)):
        for seed in seeds:
            result = train(
                TrainConfig(
                    dataset=version.ref, store_root=store.root, output_dir=work / f"student-{name}-{seed}", seed=seed,
                    threads=1,
                )
            )  # fmt: skip
            report = evaluate(result.model_dir, test_file, out_dir=work / f"eval-{name}-{seed}", latency_examples=5)
            f1[name].append(report["student"]["macro_f1"])
            console.print(f"{name} seed {seed}: macro-F1 {f1[name][-1]:.4f} ({version.manifest['rows']['kept']} rows)")
    curated_f1, uncurated_f1 = statistics.fmean(f1["curated"]), statistics.fmean(f1["uncurated"])
    console.print(
        f"teacher error on the pool: {base_error:.4f} overall, {drop_error:.4f} among the "
        f"{int(scored['dropped'].sum())} rows the entropy stage drops, {kept_error:.4f} among the kept ones; "
        f"student macro-F1 {curated_f1:.4f} curated vs {uncurated_f1:.4f} uncurated; "
        f"{time.perf_counter() - started:.0f} s"
    )
    print(
        f"RESULT entropy_drop_error={drop_error:.4f} base_error={base_error:.4f} kept_error={kept_error:.4f} "
        f"curated_f1={curated_f1:.4f} uncurated_f1={uncurated_f1:.4f} dropped={int(scored['dropped'].sum())} "
        f"seeds={len(seeds)}"
    )


if __name__ == "__main__":
    main()
