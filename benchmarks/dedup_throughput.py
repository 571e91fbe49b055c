"""MinHash near-duplicate removal end to end: Stillhouse's stage vs a plain datasketch loop, side by side.

Generates documents of ~100 words from a seeded vocabulary and plants near-copies at
controlled Jaccard similarity above and below the threshold. Both methods shingle
(word 3-grams), compute signatures, band with LSH and report duplicate pairs; ours
also verifies every candidate by exact Jaccard. Ground truth: planted pairs whose
exact Jaccard (Python sets of 3-gram strings) reaches the threshold.

    python benchmarks/dedup_throughput.py [--quick] [--docs N]
"""

from __future__ import annotations

import argparse
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.config import MinHashDedupConfig  # noqa: E402
from curation.stages import MinHashDedup  # noqa: E402

THRESHOLD, NUM_PERM, NGRAM = 0.8, 128, 3


def make_corpus(docs: int, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    """`docs` documents; ~5% are near-copies just above the threshold, ~5% clearly below it."""
    rng = np.random.default_rng(seed)
    vocab = np.array(
        [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "vu", "ze") for b in range(2000)]
    )
    planted = docs // 10
    originals = docs - planted
    words = rng.integers(0, len(vocab), size=(originals, 100))
    copies, pairs = [], []
    sources = rng.choice(originals, size=planted, replace=False)
    for k, source in enumerate(sources):
        copy = words[source].copy()
        edits = rng.integers(1, 3) if k % 2 == 0 else rng.integers(5, 10)  # above / below the threshold
        positions = rng.choice(100, size=edits, replace=False)
        copy[positions] = rng.integers(0, len(vocab), size=edits)
        copies.append(copy)
        pairs.append((int(source), originals + k))
    matrix = np.vstack([words, np.array(copies)]) if copies else words
    return [" ".join(vocab[row]) for row in matrix], pairs


def shingle_set(text: str) -> set[str]:
    words = re.sub(r"\s+", " ", text.lower()).strip().split(" ")
    return {" ".join(words[i : i + NGRAM]) for i in range(max(1, len(words) - NGRAM + 1))}


def truth(texts: list[str], pairs: list[tuple[int, int]]) -> set[tuple[int, int]]:
    positives = set()
    for a, b in pairs:
        sa, sb = shingle_set(texts[a]), shingle_set(texts[b])
        if len(sa & sb) / len(sa | sb) >= THRESHOLD:
            positives.add((min(a, b), max(a, b)))
    return positives


def run_stillhouse(texts: list[str]) -> set[tuple[int, int]]:
    frame = pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts})
    config = MinHashDedupConfig(columns=["text"], ngram=NGRAM, num_perm=NUM_PERM, threshold=THRESHOLD)
    out = MinHashDedup(config, show_progress=False).apply(frame)
    clustered = out.with_row_index("row").filter(pl.col("dup_cluster").is_not_null())
    found = set()
    for members in clustered.group_by("dup_cluster").agg("row")["row"].to_list():
        found.update((min(a, b), max(a, b)) for i, a in enumerate(members) for b in members[i + 1 :])
    return found


def run_datasketch(texts: list[str]) -> set[tuple[int, int]]:
    """The plain loop (what distilabel does): MinHash().update per shingle, MinHashLSH insert/query, hits = dups."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    hashes = []
    for i, text in enumerate(texts):
        minhash = MinHash(num_perm=NUM_PERM)
        for gram in shingle_set(text):
            minhash.update(gram.encode("utf-8"))
        lsh.insert(i, minhash)
        hashes.append(minhash)
    found = set()
    for i, minhash in enumerate(hashes):
        found.update((min(i, j), max(i, j)) for j in lsh.query(minhash) if j != i)
    return found


def score(found: set, positives: set) -> tuple[float, float]:
    hits = len(found & positives)
    return hits / max(1, len(found)), hits / max(1, len(positives))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20k documents instead of 100k")
    parser.add_argument("--docs", type=int, default=None, help="number of documents (overrides --quick)")
    args = parser.parse_args()
    docs = args.docs or (20_000 if args.quick else 100_000)

    texts, pairs = make_corpus(docs)
    positives = truth(texts, pairs)
    print(f"{len(texts)} documents, {len(pairs)} planted pairs, {len(positives)} at exact jaccard >= {THRESHOLD}")

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    ours = run_stillhouse(texts)
    ours_s = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # measured before the baseline runs

    start = time.perf_counter()
    theirs = run_datasketch(texts)
    theirs_s = time.perf_counter() - start

    precision, recall = score(ours, positives)
    ds_precision, ds_recall = score(theirs, positives)
    ours_rate, theirs_rate = len(texts) / ours_s, len(texts) / theirs_s
    print(f"{'method':<28}{'seconds':>10}{'docs/s':>12}{'pairs':>8}{'precision':>11}{'recall':>8}")
    print(
        f"{'stillhouse minhash_dedup':<28}{ours_s:>10.2f}{ours_rate:>12,.0f}{len(ours):>8}"
        f"{precision:>11.4f}{recall:>8.4f}"
    )
    print(
        f"{'datasketch loop':<28}{theirs_s:>10.2f}{theirs_rate:>12,.0f}{len(theirs):>8}"
        f"{ds_precision:>11.4f}{ds_recall:>8.4f}"
    )
    print(f"ratio {ours_rate / theirs_rate:.1f}x; peak RSS after ours {peak_mb:.0f} MB (before: {rss_before:.0f} MB)")
    print(
        f"RESULT docs={len(texts)} docs_per_s={ours_rate:.0f} datasketch_docs_per_s={theirs_rate:.0f} "
        f"ratio_vs_datasketch={ours_rate / theirs_rate:.2f} precision={precision:.4f} recall={recall:.4f} "
        f"datasketch_precision={ds_precision:.4f} datasketch_recall={ds_recall:.4f} peak_mb={peak_mb:.0f}"
    )


if __name__ == "__main__":
    main()
