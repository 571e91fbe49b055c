"""Open-mode self-consistency on MRPC: does the agreement score tell paraphrases from non-paraphrases?

Each MRPC pair (two sentences people labelled paraphrase or not) is scored as a row
with two samples by the shipped `Consistency` stage in open mode, once per
similarity measure (word Jaccard, MiniLM embedding cosine, their mean: the
default). Reported side by side:

- AUC on MRPC test (1.0: every paraphrase scores above every non-paraphrase);
- the threshold with the largest TPR - FPR on MRPC *train*, next to the shipped
  default (`DEFAULT_MIN_SIMILARITY`), so a default is never tuned on the split it
  is reported on;
- precision / recall of "kept as agreeing" (score >= threshold) for paraphrases on
  test, for the old default (Jaccard 0.5) and the shipped ones.

    python benchmarks/consistency_mrpc.py [--quick] [--data ../shared/data/mrpc]

The last line is `RESULT auc=... threshold=... precision=... recall=... jaccard_auc=...`
(the default measure at its shipped threshold, on test; Jaccard's test AUC).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.metrics import roc_auc_score, roc_curve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.config import DEFAULT_MIN_SIMILARITY, ConsistencyConfig  # noqa: E402
from curation.stages import Consistency  # noqa: E402
from curation.stages.semantic_dedup import Encoder, sentence_transformer_encoder  # noqa: E402
from factory.schema import conform  # noqa: E402

OLD_JACCARD_THRESHOLD = 0.5  # the default before embeddings
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mrpc"


def read_mrpc(path: Path) -> pl.DataFrame:
    """label (1 = paraphrase), a, b from an MRPC TSV (UTF-8 with BOM, no quoting)."""
    with path.open(encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return pl.DataFrame({"label": [int(r[0]) for r in rows], "a": [r[3] for r in rows], "b": [r[4] for r in rows]})


def pair_scores(pairs: pl.DataFrame, stage: Consistency) -> np.ndarray:
    """The stage's open-mode consistency of each pair, as a row with two samples."""

    def sample(text: pl.Expr) -> pl.Expr:
        return pl.struct(text.alias("text"), pl.lit("stop").alias("finish_reason"))

    frame = pairs.select(
        pl.format("pair{}", pl.int_range(pl.len())).alias("id"),
        pl.lit("paraphrase?").alias("instruction"),
        pl.lit("").alias("input"),
        pl.lit("import").alias("origin"),
        pl.concat_list(sample(pl.col("a")), sample(pl.col("b"))).alias("samples"),
        pl.col("a").alias("response"),
    )
    scored = stage.apply(pl.from_arrow(conform(frame)))
    return scored["consistency"].to_numpy().astype(np.float64)


def cached(encoder: Encoder) -> Encoder:
    """Encode each distinct text once, whichever measure asks."""
    memo: dict[str, np.ndarray] = {}

    def encode(texts: list[str]) -> np.ndarray:
        missing = [text for text in dict.fromkeys(texts) if text not in memo]
        if missing:
            memo.update(zip(missing, encoder(missing)))
        return np.stack([memo[text] for text in texts])

    return encode


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold with the largest TPR - FPR."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    return float(thresholds[int(np.argmax(tpr - fpr))])


def precision_recall(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    kept = scores >= threshold
    true_positive = float((kept & (labels == 1)).sum())
    return true_positive / max(kept.sum(), 1), true_positive / max((labels == 1).sum(), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 pairs per split (seeded sample)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with msr_paraphrase_{train,test}.txt")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    splits = {name: read_mrpc(args.data / f"msr_paraphrase_{name}.txt") for name in ("train", "test")}
    if args.quick:
        splits = {name: frame.sample(min(500, frame.height), seed=0) for name, frame in splits.items()}
    print(
        f"MRPC pairs: train {splits['train'].height}, test {splits['test'].height} (paraphrase share "
        f"{splits['test']['label'].mean():.2f} on test)"
    )

    encoder = cached(sentence_transformer_encoder(None, batch_size=64))
    default_measure = ConsistencyConfig().similarity
    stages = {
        measure: Consistency(ConsistencyConfig(mode="open", similarity=measure, min_similarity=None), encoder)
        for measure in ("jaccard", "embedding", "embedding_jaccard")
    }
    results = {}
    for measure, stage in stages.items():
        scores = {name: pair_scores(frame, stage) for name, frame in splits.items()}
        labels = {name: frame["label"].to_numpy() for name, frame in splits.items()}
        chosen = youden_threshold(labels["train"], scores["train"])
        shipped = DEFAULT_MIN_SIMILARITY[measure]
        results[measure] = {
            "auc_test": roc_auc_score(labels["test"], scores["test"]),
            "auc_train": roc_auc_score(labels["train"], scores["train"]),
            "train_threshold": chosen,
            "shipped": shipped,
            "at_shipped": precision_recall(labels["test"], scores["test"], shipped),
            "at_old": precision_recall(labels["test"], scores["test"], OLD_JACCARD_THRESHOLD),
            "median_paraphrase": float(np.median(scores["test"][labels["test"] == 1])),
            "paraphrase_below_old": float((scores["test"][labels["test"] == 1] < OLD_JACCARD_THRESHOLD).mean()),
        }

    print(
        f"\n{'measure':<17} {'AUC test':>8} {'AUC train':>9} {'thr(train)':>10} {'default':>7} "
        f"{'P@default':>9} {'R@default':>9} {'median para':>11}"
    )
    for measure, r in results.items():
        precision, recall = r["at_shipped"]
        print(
            f"{measure:<17} {r['auc_test']:>8.3f} {r['auc_train']:>9.3f} {r['train_threshold']:>10.3f} "
            f"{r['shipped']:>7.2f} {precision:>9.3f} {recall:>9.3f} {r['median_paraphrase']:>11.3f} "
        )
    old_precision, old_recall = results["jaccard"]["at_old"]
    below = results["jaccard"]["paraphrase_below_old"]
    print(
        f"\nold default (Jaccard >= {OLD_JACCARD_THRESHOLD}) on test: precision {old_precision:.3f}, "
        f"recall {old_recall:.3f}; {below:.0%} of paraphrases fall below it"
    )
    for measure in ("embedding", "embedding_jaccard"):
        ratio = results[measure]["auc_test"] / results["jaccard"]["auc_test"]
        print(f"AUC ratio {measure} / jaccard (test): {ratio:.3f}")
    if args.quick:
        print("(--quick: thresholds chosen on a 500-pair sample; the shipped defaults come from all of train)")
    for measure, r in results.items():
        if not args.quick and abs(r["train_threshold"] - r["shipped"]) > 0.01:
            print(f"NOTE: {measure} default {r['shipped']} differs from the train-chosen {r['train_threshold']:.3f}")
    e = results[default_measure]
    print(
        f"RESULT auc={e['auc_test']:.3f} threshold={e['shipped']:.2f} precision={e['at_shipped'][0]:.3f} "
        f"recall={e['at_shipped'][1]:.3f} jaccard_auc={results['jaccard']['auc_test']:.3f}"
    )


if __name__ == "__main__":
    main()
