"""MinHash dedup at scale, side by side: our stage on the local executor and on Ray (1 and 2 workers), and rensa.

The corpus is the planted-duplicate generator of `dedup_throughput.py` (documents of
100 words; a tenth are near-copies of another document, half of them above the 0.8
threshold), written to Parquet by a separate process. Every method then runs in a fresh
process that reads it, so each peak RSS is that method's own (the corpus included).
Ground truth: planted pairs whose exact Jaccard of word 3-grams reaches the threshold.

    python benchmarks/scale_dedup.py [--docs N] [--quick] [--work DIR] [--no-ray]

Methods:
- local: `MinHashDedup` (word 3-grams, threshold 0.8, 128 permutations), exact-Jaccard
  verified, best member kept.
- rensa: rensa's own route (Python shingling, `digest_matrix_from_token_sets`, LSH
  duplicate flags); it verifies nothing, so it reports speed only.
- ray1 / ray2: the same stage through `executor: ray` on a one-node Ray cluster started
  here on 127.0.0.1 with 1 and 2 workers; its output must equal the local one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

THRESHOLD, NUM_PERM, NGRAM = 0.8, 128, 3


# -- the corpus (its own process) --------------------------------------------------------
def write_corpus(docs: int, path: Path, seed: int = 0) -> None:
    """Parquet of `docs` documents (columns id, text) plus `<path>.pairs.json` with the planted pairs."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    vocab = np.array(
        [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "vu", "ze") for b in range(2000)]
    )
    planted = docs // 10
    originals = docs - planted
    words = rng.integers(0, len(vocab), size=(originals, 100), dtype=np.int32)
    sources = rng.choice(originals, size=planted, replace=False)
    copies = words[sources].copy()
    for k in range(planted):
        edits = rng.integers(1, 3) if k % 2 == 0 else rng.integers(5, 10)  # above / below the threshold
        positions = rng.choice(100, size=edits, replace=False)
        copies[k, positions] = rng.integers(0, len(vocab), size=edits)
    pairs = [(int(source), originals + k) for k, source in enumerate(sources)]
    with pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("text", pa.string())])) as writer:
        block = 50_000
        for start in range(0, docs, block):
            rows = range(start, min(start + block, docs))
            matrix = [words[i] if i < originals else copies[i - originals] for i in rows]
            texts = [" ".join(vocab[row]) for row in matrix]
            writer.write_table(pa.table({"id": [str(i) for i in rows], "text": texts}))
    Path(f"{path}.pairs.json").write_text(json.dumps(pairs))


def truth(path: Path) -> set[tuple[int, int]]:
    import polars as pl

    pairs = json.loads(Path(f"{path}.pairs.json").read_text())
    members = sorted({i for pair in pairs for i in pair})
    texts = dict(zip(members, pl.read_parquet(path, columns=["text"])["text"].gather(members).to_list()))

    def grams(text: str) -> set[str]:
        words = re.sub(r"\s+", " ", text.lower()).strip().split(" ")
        return {" ".join(words[i : i + NGRAM]) for i in range(max(1, len(words) - NGRAM + 1))}

    positives = set()
    for a, b in pairs:
        sa, sb = grams(texts[a]), grams(texts[b])
        if len(sa & sb) / len(sa | sb) >= THRESHOLD:
            positives.add((min(a, b), max(a, b)))
    return positives


# -- one method (its own process) -----------------------------------------------------------
def run_method(method: str, corpus: Path, out: Path, address: str | None, workers: int, temp_dir: str) -> None:
    import resource

    import polars as pl

    frame = pl.read_parquet(corpus)
    start = time.perf_counter()
    if method == "rensa":
        result = {"flagged": _rensa(frame["text"].to_list())}
    else:
        from curation.config import MinHashDedupConfig
        from curation.stages import MinHashDedup

        stage = MinHashDedup(
            MinHashDedupConfig(columns=["text"], ngram=NGRAM, num_perm=NUM_PERM, threshold=THRESHOLD),
            show_progress=False,
        )
        if method == "local":
            curated = stage.apply(frame)
        else:
            from stillhouse.executors import RayExecutorConfig, build_executor

            executor = build_executor(RayExecutorConfig(address=address, workers=workers))
            try:
                curated = executor.apply(stage, frame)
                result_workers = ray_workers_peak_mb(temp_dir)
            finally:
                executor.close()
        seconds = time.perf_counter() - start
        curated.select("id", "dup_cluster", "drop_stage", "drop_reason").write_parquet(out.with_suffix(".parquet"))
        result = {"seconds": seconds}
        if method != "local":
            result["worker_peak_mb"] = result_workers
    result.setdefault("seconds", time.perf_counter() - start)
    result["docs"] = frame.height
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps(result))


def ray_workers_peak_mb(temp_dir: str) -> float:
    """The largest peak RSS (VmHWM) of the worker processes of the Ray cluster living in `temp_dir`
    (children of its raylet; other clusters on the machine are not counted)."""

    def status(pid: Path) -> dict[str, str]:
        return dict(line.split(":", 1) for line in (pid / "status").read_text().splitlines() if ":" in line)

    processes = [path for path in Path("/proc").iterdir() if path.name.isdigit()]
    raylets = set()
    for pid in processes:
        try:
            if b"raylet" in (pid / "cmdline").read_bytes() and temp_dir.encode() in (pid / "cmdline").read_bytes():
                raylets.add(pid.name)
        except OSError:
            continue
    peak = 0.0
    for pid in processes:
        try:
            fields = status(pid)
            if fields.get("PPid", "").strip() in raylets and "VmHWM" in fields:
                peak = max(peak, int(fields["VmHWM"].split()[0]) / 1024)
        except OSError:  # the process ended meanwhile
            continue
    return peak


def _rensa(texts: list[str], block: int = 50_000) -> int:
    """rensa end to end as its README does it: Python word 3-grams, digests from token sets, LSH flags.

    Streamed in blocks (a million documents of Python token lists would need ~12 GB).
    """
    import rensa

    from curation.stages.minhash_dedup import lsh_shape

    bands, rows = lsh_shape(THRESHOLD, NUM_PERM)
    index = rensa.RMinHashLSH(THRESHOLD, bands * rows, bands)
    flagged = 0
    for start in range(0, len(texts), block):
        sets = []
        for text in texts[start : start + block]:
            words = re.sub(r"\s+", " ", text.lower()).strip().split(" ")
            sets.append([" ".join(words[i : i + NGRAM]) for i in range(max(1, len(words) - NGRAM + 1))])
        matrix = rensa.RMinHash.digest_matrix_from_token_sets(sets, bands * rows, 0)
        flagged += sum(index.insert_matrix_and_query_duplicate_flags(matrix, start_key=start))
    return flagged


def child(
    method: str, corpus: Path, work: Path, address: str | None = None, workers: int = 1, temp_dir: str = ""
) -> dict:
    out = work / f"{corpus.stem}-{method}.json"
    command = [sys.executable, __file__, "--child", method, "--corpus", str(corpus), "--out", str(out)]
    if address:
        command += ["--address", address, "--workers", str(workers), "--temp-dir", temp_dir]
    subprocess.run(command, check=True, cwd=REPO)
    return json.loads(out.read_text())


def found_pairs(path: Path) -> set[tuple[int, int]]:
    import polars as pl

    frame = pl.read_parquet(path).with_row_index("row").filter(pl.col("dup_cluster").is_not_null())
    found = set()
    for members in frame.group_by("dup_cluster").agg("row")["row"].to_list():
        found.update((min(a, b), max(a, b)) for i, a in enumerate(members) for b in members[i + 1 :])
    return found


def same_output(a: Path, b: Path) -> bool:
    import polars as pl

    return pl.read_parquet(a).equals(pl.read_parquet(b))


# -- Ray on loopback: the test suite's own fixture (free ports, own temp dir, stopped by PID) --


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=None, help="documents of the large run (default 1,000,000)")
    parser.add_argument("--quick", action="store_true", help="20k and 100k documents instead of 100k and 1M")
    parser.add_argument(
        "--work", type=Path, default=None, help="where the corpora and outputs go (default: a temp dir)"
    )
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray executor runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--temp-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_method(args.child, args.corpus, args.out, args.address, args.workers, args.temp_dir)
        return

    large = args.docs or (100_000 if args.quick else 1_000_000)
    small = min(large, 20_000 if args.quick else 100_000)
    work = args.work or Path(tempfile.mkdtemp(prefix="scale-dedup-"))
    work.mkdir(parents=True, exist_ok=True)
    corpora = {}
    for docs in sorted({small, large}):
        corpus = work / f"corpus-{docs}.parquet"
        if not corpus.exists():
            print(f"writing {docs:,} documents to {corpus}", flush=True)
            write_corpus(docs, corpus)
        corpora[docs] = corpus

    figures: dict[int, dict[str, dict]] = {}
    for docs, corpus in corpora.items():
        figures[docs] = {"local": child("local", corpus, work), "rensa": child("rensa", corpus, work)}
    ray_ok = not args.no_ray
    if ray_ok:
        sys.path.insert(0, str(REPO / "tests"))
        from fixtures.ray_cluster import RAY_ENV, ray_cluster

        os.environ.update(RAY_ENV)
        try:
            with ray_cluster(num_cpus=2) as cluster:
                for workers in (1, 2):
                    result = child(f"ray{workers}", corpora[large], work, cluster.address, workers, cluster.temp_dir)
                    figures[large][f"ray{workers}"] = result
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            print(f"Ray could not run here ({error}); skipping the Ray runs")
            ray_ok = False

    positives = truth(corpora[large])
    local_out = work / f"{corpora[large].stem}-local.parquet"
    found = found_pairs(local_out)
    hits = len(found & positives)
    precision, recall = hits / max(1, len(found)), hits / max(1, len(positives))
    identical = ray_ok and all(same_output(local_out, work / f"{corpora[large].stem}-ray{w}.parquet") for w in (1, 2))

    print(f"\n{'docs':>10} {'method':<8}{'seconds':>10}{'docs/s':>10}{'peak MB':>10}{'worker MB':>11}")
    for docs, methods in figures.items():
        for method, result in methods.items():
            worker = result.get("worker_peak_mb")
            print(
                f"{docs:>10,} {method:<8}{result['seconds']:>10.1f}{docs / result['seconds']:>10,.0f}"
                f"{result['peak_mb']:>10,.0f}{(f'{worker:,.0f}' if worker else '-'):>11}"
            )
    rate = {m: large / r["seconds"] for m, r in figures[large].items()}
    small_rate = small / figures[small]["local"]["seconds"]
    print(
        f"\nat {large:,}: precision {precision:.4f} recall {recall:.4f} ({len(positives)} true pairs); "
        f"local docs/s at {large:,} vs {small:,}: {rate['local'] / small_rate:.2f}; "
        f"local vs rensa {rate['local'] / rate['rensa']:.2f}x"
    )
    ray_fields = ""
    if ray_ok:
        worker_mb = max((figures[large][f"ray{w}"].get("worker_peak_mb") or 0) for w in (1, 2))
        ray_fields = (
            f"ray1_docs_per_s={rate['ray1']:.0f} ray2_docs_per_s={rate['ray2']:.0f} "
            f"ray2_vs_local={rate['ray2'] / rate['local']:.2f} peak_mb_worker={worker_mb:.0f} "
            f"identical={int(bool(identical))} "
        )
    print(
        f"RESULT docs={large} local_docs_per_s={rate['local']:.0f} rensa_docs_per_s={rate['rensa']:.0f} "
        f"ratio_vs_rensa={rate['local'] / rate['rensa']:.2f} {ray_fields}"
        f"peak_mb_driver={figures[large]['local']['peak_mb']:.0f} "
        f"peak_mb_small={figures[small]['local']['peak_mb']:.0f} "
        f"scaling={rate['local'] / small_rate:.2f} precision={precision:.4f} recall={recall:.4f}"
    )


if __name__ == "__main__":
    main()
