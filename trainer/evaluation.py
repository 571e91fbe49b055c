"""Honest evaluation of a classifier student (and its teacher) on a human-labelled test set.

Quality (macro-F1 over the union of true and predicted labels, as sklearn computes it,
so a class the model predicts but the test set lacks still costs precision; their
ratio; student/teacher agreement), calibration (expected calibration error over 15
equal-width confidence bins, with a reliability diagram) measured like for like: both
models raw (T = 1) and both at the calibration temperature each one's training fitted
on held-out training rows (`ece`, the probabilities each model ships with),
and cost (single-example latency p50/p95 on this CPU after warm-up, parameter counts,
dollars per million predictions at a given hourly machine price). Written as
evaluation.json, evaluation.md and reliability.png in `out_dir`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl
from rich.progress import MofNCompleteColumn, Progress
from sklearn.metrics import f1_score

from factory.errors import StillhouseError

ECE_BINS = 15
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_CHUNK = 250


class Predictor(Protocol):
    labels: list[str]
    temperature: float  # calibration temperature fitted on held-out training rows (1.0: none)

    def logits(self, texts: list[str]) -> np.ndarray: ...

    def predict_proba(self, texts: list[str]) -> np.ndarray: ...


@dataclass
class TestSet:
    path: Path
    texts: list[str]
    labels: list[str]


def read_text_table(path: Path | str, columns: list[str], what: str) -> pl.DataFrame:
    """The named string columns of a JSONL, CSV or Parquet file; `what` names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise StillhouseError(f"{what} {path} does not exist")
    try:
        if path.suffix in (".jsonl", ".ndjson", ".json"):
            frame = pl.read_ndjson(path)
        elif path.suffix == ".parquet":
            frame = pl.read_parquet(path)
        else:
            frame = pl.read_csv(path, infer_schema_length=0)
    except (pl.exceptions.ComputeError, pl.exceptions.PolarsError, OSError) as exc:
        raise StillhouseError(f"{what} {path}: cannot be read as {path.suffix or 'CSV'} ({exc})") from None
    for column in columns:
        if column not in frame.columns:
            raise StillhouseError(f"{what} {path}: no '{column}' column (columns: {', '.join(frame.columns)})")
    frame = frame.select(pl.col(column).cast(pl.String) for column in columns)
    if frame.height == 0:
        raise StillhouseError(f"{what} {path}: no rows")
    return frame


def read_test_file(path: Path | str, text_column: str = "text", label_column: str = "label") -> TestSet:
    """A JSONL, CSV or Parquet file with text and label columns."""
    frame = read_text_table(path, [text_column, label_column], "test file")
    missing = frame[text_column].is_null() | frame[label_column].is_null()
    if missing.any():
        raise StillhouseError(f"test file {path}: row {int(missing.arg_true()[0]) + 1} has an empty text or label")
    return TestSet(Path(path), frame[text_column].to_list(), frame[label_column].to_list())


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """sum_b |B_b|/n * |accuracy(B_b) - mean confidence(B_b)| over equal-width bins of (0, 1]."""
    return float(calibration_bins(confidence, correct, n_bins)["gap_weighted"].sum())


def bin_index(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Each confidence's equal-width bin of (0, 1]: bins are (lo, hi], a confidence of 0 goes to the first."""
    return np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)


def ece_sampling_floor(confidence: np.ndarray, n_bins: int = ECE_BINS, draws: int = 1000, seed: int = 0) -> float:
    """Mean ECE of a perfectly calibrated model with these confidences, outcomes drawn at those rates: what
    ECE reads from the test set's size alone (SST-2's student: 0.031 on 800 sentences, 0.021 on 1,821)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    if len(confidence) == 0:
        return 0.0
    in_bin = np.eye(n_bins)[bin_index(confidence, n_bins)]  # [rows, bins]
    correct = np.random.default_rng(seed).random((draws, len(confidence))) < confidence
    # ECE = sum over bins of |correct in bin - confidence in bin| / rows
    gaps = np.abs(correct.astype(np.float64) @ in_bin - confidence @ in_bin)
    return float(gaps.sum(axis=1).mean() / len(confidence))


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> pl.DataFrame:
    """Per bin: count, accuracy, mean confidence and the weighted gap (ECE's terms); bins are (lo, hi]."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    index = bin_index(confidence, n_bins)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
        mean_confidence = np.bincount(index, weights=confidence, minlength=n_bins) / count
    gap = np.where(count > 0, np.abs(accuracy - mean_confidence) * count / max(len(confidence), 1), 0.0)
    return pl.DataFrame(
        {
            "lower": np.arange(n_bins) / n_bins,
            "upper": np.arange(1, n_bins + 1) / n_bins,
            "count": count,
            "accuracy": accuracy,
            "confidence": mean_confidence,
            "gap_weighted": gap,
        }
    )


def macro_f1(true: list[str], predicted: list[str]) -> float:
    """Macro-F1 over the union of true and predicted labels (sklearn's default label set)."""
    return float(f1_score(true, predicted, labels=sorted(set(true) | set(predicted)), average="macro", zero_division=0))


def resampled_macro_f1(true: np.ndarray, predicted: np.ndarray, counts: np.ndarray, n_labels: int) -> np.ndarray:
    """Macro-F1 of label indices `predicted` against `true` on each draw of `counts` [draws, rows] (how often
    each row is drawn), over the labels that occur in the draw's true or predicted labels, as `macro_f1`."""
    eye = np.eye(n_labels)
    truth, guessed = eye[true], eye[predicted]  # [rows, labels] one-hot
    counts = counts.astype(np.float64)
    hits, made, actual = counts @ (truth * guessed), counts @ guessed, counts @ truth  # [draws, labels]
    present = (made + actual) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        per_label = np.where(present, 2 * hits / (made + actual), 0.0)
    return per_label.sum(axis=1) / present.sum(axis=1)


def bootstrap_f1_ratio(
    true: list[str],
    student: list[str],
    teacher: list[str],
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """A paired bootstrap interval of macro-F1(student) / macro-F1(teacher) over the test rows.

    Each draw takes the test rows with replacement and scores both models on the same draw, so
    the interval says how far the ratio could move on another test set like this one: on a few
    hundred examples that is often more than the gap it is read against. None when the teacher
    scores 0 on every draw."""
    labels = sorted(set(true) | set(student) | set(teacher))
    index = {label: i for i, label in enumerate(labels)}
    true_index, student_index, teacher_index = (
        np.array([index[x] for x in column]) for column in (true, student, teacher)
    )
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, resamples, BOOTSTRAP_CHUNK):  # memory: chunk x test rows
        counts = rng.multinomial(
            len(true), np.full(len(true), 1.0 / len(true)), size=min(BOOTSTRAP_CHUNK, resamples - start)
        )
        s = resampled_macro_f1(true_index, student_index, counts, len(labels))
        t = resampled_macro_f1(true_index, teacher_index, counts, len(labels))
        chunks.append(s[t > 0] / t[t > 0])
    ratios = np.concatenate(chunks)
    if ratios.size == 0:  # the teacher gets nothing right on any draw: there is no ratio to bound
        return None
    tail = (1.0 - level) / 2 * 100
    return float(np.percentile(ratios, tail)), float(np.percentile(ratios, 100 - tail))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return scaled / scaled.sum(axis=1, keepdims=True)


def latency_ms(predictor: Predictor, texts: list[str], n: int = 200, warmup: int = 20) -> dict[str, float]:
    """Single-example predict_proba wall time in milliseconds (p50, p95, mean) after warm-up."""
    for text in texts[:warmup]:
        predictor.predict_proba([text])
    timings = []
    for i in range(n):
        start = time.perf_counter()
        predictor.predict_proba([texts[i % len(texts)]])
        timings.append((time.perf_counter() - start) * 1000)
    return {
        "p50": float(np.percentile(timings, 50)),
        "p95": float(np.percentile(timings, 95)),
        "mean": float(np.mean(timings)),
    }


def num_parameters(predictor: Any) -> int | None:
    value = getattr(predictor, "num_parameters", None)
    return int(value() if callable(value) else value) if value is not None else None


def model_directory(path: Path | str) -> Path:
    """The model directory itself, or the model/ inside a training output_dir."""
    directory = Path(path)
    if not directory.is_dir():
        raise StillhouseError(f"model directory {directory} does not exist")
    if not (directory / "config.json").is_file() and (directory / "model" / "config.json").is_file():
        return directory / "model"
    return directory


def load_predictor(directory: Path | str) -> Predictor:
    """A Stillhouse student directory (config.json model_type hashed or static bag) or a classifier teacher dir."""
    from trainer.bag_model import MODEL_TYPES, BagClassifier

    directory = model_directory(directory)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    if config.get("model_type") in MODEL_TYPES:
        return BagClassifier.from_pretrained(directory)
    if (directory / "encoder_head.json").is_file() or any(
        name.endswith("ForSequenceClassification") for name in config.get("architectures") or []
    ):
        return TeacherPredictor(directory)
    raise StillhouseError(
        f"{directory}: not a classifier (expected a Stillhouse hashed_bag student, an encoder_head directory or a "
        f"Hugging Face *ForSequenceClassification model)"
    )


class TeacherPredictor:
    """A classifier teacher directory (hf or encoder_head) through factory.teachers, as a Predictor.

    Its calibration temperature is the one `train_encoder_head` fitted on held-out training
    rows, or on cross-fitted logits for a small head-only teacher (encoder_head.json
    `calibration_temperature`); 1.0 when there is none.
    """

    def __init__(self, directory: Path) -> None:
        from factory.teachers import ClassifierTeacherConfig, build_teacher
        from factory.teachers.classifier import ENCODER_HEAD_CONFIG, read_encoder_head

        encoder_head = (directory / ENCODER_HEAD_CONFIG).is_file()
        kind = "encoder_head" if encoder_head else "hf"
        config = ClassifierTeacherConfig(model=str(directory), kind=kind, device="cpu")
        self.teacher = build_teacher(config)  # no cache_dir: nothing is cached
        self.labels = list(self.teacher.labels)
        self.temperature = read_encoder_head(directory).calibration_temperature if encoder_head else 1.0

    def logits(self, texts: list[str]) -> np.ndarray:
        return self.teacher.logits(texts).cpu().numpy()

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return softmax(self.logits(texts), self.temperature)

    @property
    def num_parameters(self) -> int:
        import torch

        # every torch module the teacher holds (HF model, or sentence encoder + head)
        modules = [value for value in vars(self.teacher).values() if isinstance(value, torch.nn.Module)]
        return sum(p.numel() for module in modules for p in module.parameters())


def score(predictor: Predictor, test: TestSet, name: str = "model", batch_size: int = 256) -> dict[str, Any]:
    """Quality and calibration on the test set; `ece` at the model's calibration temperature, `ece_raw` at T = 1."""
    chunks = []
    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), transient=True) as progress:
        task = progress.add_task(f"scoring {name}", total=len(test.texts))
        for start in range(0, len(test.texts), batch_size):
            chunks.append(predictor.logits(test.texts[start : start + batch_size]))
            progress.update(task, advance=len(chunks[-1]))
    logits = np.concatenate(chunks).astype(np.float64)
    predicted = [predictor.labels[i] for i in logits.argmax(axis=1)]  # temperature never changes the argmax
    correct = np.array([p == t for p, t in zip(predicted, test.labels)])
    confidence = softmax(logits, predictor.temperature).max(axis=1)
    return {
        "predicted": predicted,
        "confidence": confidence,
        "correct": correct,
        "macro_f1": macro_f1(test.labels, predicted),
        "accuracy": float(correct.mean()),
        "ece": expected_calibration_error(confidence, correct),
        "ece_raw": expected_calibration_error(softmax(logits).max(axis=1), correct),
        "temperature": float(predictor.temperature),
    }


def reliability_diagram(curves: dict[str, pl.DataFrame], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 4.2), squeeze=False)
    for axis, (name, bins) in zip(axes[0], curves.items()):
        filled = bins.filter(pl.col("count") > 0)
        axis.bar(filled["lower"], filled["accuracy"], width=1 / ECE_BINS, align="edge", edgecolor="black", alpha=0.7)
        axis.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        axis.plot(filled["confidence"], filled["accuracy"], "o", color="crimson", markersize=3, label="bin mean conf.")
        axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
        axis.set_title(f"{name} (ECE {bins['gap_weighted'].sum():.3f})")
        axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def evaluate(
    model_dir: Path | str,
    test_file: Path | str,
    teacher_dir: Path | str | None = None,
    hourly_usd: float = 0.10,
    out_dir: Path | str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    latency_examples: int = 200,
    threads: int = 1,
) -> dict[str, Any]:
    """Score a classifier student (and optionally its teacher) on a human-labelled test file.

    Latency is measured one example at a time with `threads` torch threads for both
    models; cost per million predictions = hourly_usd * mean latency of one sequential
    worker. Writes evaluation.json, evaluation.md and reliability.png to `out_dir`
    (default: <model_dir>/evaluation) and returns the JSON as a dict.
    """
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _evaluate(
            model_dir, test_file, teacher_dir, hourly_usd, out_dir, text_column, label_column, latency_examples
        )
    finally:
        torch.set_num_threads(previous_threads)


def _evaluate(
    model_dir: Path | str,
    test_file: Path | str,
    teacher_dir: Path | str | None,
    hourly_usd: float,
    out_dir: Path | str | None,
    text_column: str,
    label_column: str,
    latency_examples: int,
) -> dict[str, Any]:
    test = read_test_file(test_file, text_column, label_column)
    model_dir = model_directory(model_dir)
    out = Path(out_dir) if out_dir is not None else Path(model_dir) / "evaluation"
    out.mkdir(parents=True, exist_ok=True)

    models = {"student": load_predictor(model_dir)}
    if teacher_dir is not None:
        models["teacher"] = load_predictor(teacher_dir)
    report: dict[str, Any] = {"test_file": str(test.path), "examples": len(test.texts), "hourly_usd": hourly_usd}
    provenance = Path(model_dir) / "stillhouse_training.json"
    if provenance.is_file():
        trained = json.loads(provenance.read_text(encoding="utf-8"))
        report["dataset"], report["manifest_sha256"] = trained.get("dataset"), trained.get("manifest_sha256")

    scores, curves = {}, {}
    for name, model in models.items():
        scores[name] = score(model, test, name)
        curves[name] = calibration_bins(scores[name]["confidence"], scores[name]["correct"])
        latency = latency_ms(model, test.texts, n=latency_examples)
        report[name] = {
            "path": str(model_dir if name == "student" else teacher_dir),
            "macro_f1": scores[name]["macro_f1"],
            "accuracy": scores[name]["accuracy"],
            "ece": scores[name]["ece"],
            "ece_raw": scores[name]["ece_raw"],
            "ece_floor": ece_sampling_floor(scores[name]["confidence"]),
            "calibration_temperature": scores[name]["temperature"],
            "latency_ms": latency,
            "parameters": num_parameters(model),
            "usd_per_million": hourly_usd / 3600 * latency["mean"] / 1000 * 1e6,
        }
    if "teacher" in models:
        student, teacher = report["student"], report["teacher"]
        agreement = np.mean([a == b for a, b in zip(scores["student"]["predicted"], scores["teacher"]["predicted"])])
        params = (
            (student["parameters"] / teacher["parameters"]) if student["parameters"] and teacher["parameters"] else None
        )
        # None when the teacher scores 0 (then on every draw too)
        interval = bootstrap_f1_ratio(test.labels, scores["student"]["predicted"], scores["teacher"]["predicted"])
        report["ratios"] = {
            "f1": student["macro_f1"] / teacher["macro_f1"] if teacher["macro_f1"] else None,
            "f1_interval_95": list(interval) if interval else None,
            "agreement": float(agreement),
            "latency_p50": student["latency_ms"]["p50"] / teacher["latency_ms"]["p50"],
            "latency_p95": student["latency_ms"]["p95"] / teacher["latency_ms"]["p95"],
            "parameters": params,
            "cost": student["usd_per_million"] / teacher["usd_per_million"],
        }
    report["reliability_png"] = str(reliability_diagram(curves, out / "reliability.png"))
    report["calibration_bins"] = {name: bins.to_dicts() for name, bins in curves.items()}
    (out / "evaluation.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n", encoding="utf-8")
    (out / "evaluation.md").write_text(markdown_report(report), encoding="utf-8")
    report["out_dir"] = str(out)
    return report


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def interval_text(bounds: list[float] | None) -> str:
    """An interval as printed everywhere (report, CLI, run table, benchmark): "0.897 to 0.970"."""
    return "–" if not bounds else f"{bounds[0]:.3f} to {bounds[1]:.3f}"


def markdown_report(report: dict[str, Any]) -> str:
    names = [name for name in ("teacher", "student") if name in report]
    lines = [
        "# Student evaluation",
        "",
        f"Test set: `{report['test_file']}` ({report['examples']} human-labelled examples).",
    ]
    if report.get("dataset"):
        lines.append(f"Trained on `{report['dataset']}` (manifest sha256 `{report['manifest_sha256'][:16]}…`).")
    lines += [
        "",
        "| model | macro-F1 | accuracy | ECE calibrated (T) | ECE floor | ECE raw | p50 ms | p95 ms | parameters "
        "| $ / 1M predictions |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        m = report[name]
        lines.append(
            f"| {name} | {m['macro_f1']:.4f} | {m['accuracy']:.4f} | {m['ece']:.4f} "
            f"({m['calibration_temperature']:.2f}) | {m['ece_floor']:.4f} | {m['ece_raw']:.4f} | "
            f"{m['latency_ms']['p50']:.2f} | {m['latency_ms']['p95']:.2f} | {_fmt(m['parameters'], ',')} | "
            f"{m['usd_per_million']:.4f} |"
        )
    if "ratios" in report:
        r = report["ratios"]
        lines += [
            "",
            "| student / teacher | value |",
            "|---|---|",
            f"| macro-F1 ratio (95% paired bootstrap over the test rows) | {_fmt(r['f1'], '.4f')} "
            f"({interval_text(r.get('f1_interval_95'))}) |",
            f"| agreement (same predicted label) | {r['agreement']:.4f} |",
            f"| latency ratio p50 / p95 | {r['latency_p50']:.4f} / {r['latency_p95']:.4f} |",
            f"| parameter ratio | {_fmt(r['parameters'], '.4f')} |",
            f"| cost ratio | {r['cost']:.4f} |",
        ]
    lines += [
        "",
        "Macro-F1 is taken over the union of true and predicted labels. ECE calibrated: each model at the "
        "temperature its training fitted on held-out training rows; ECE raw: both at T = 1. ECE floor: "
        "what a perfectly calibrated model with the same calibrated confidences reads on this many examples "
        "(the mean over 1,000 draws of its outcomes), so an ECE near it is sampling noise.",
        "",
        f"Latency: one example per call, after warm-up, on this CPU. Cost: ${report['hourly_usd']}/hour for one "
        "worker serving predictions one after another at the mean latency.",
        "",
        "![reliability diagram](reliability.png)",
        "",
    ]
    return "\n".join(lines)
