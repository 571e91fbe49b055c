"""The HTML report of a dataset version: one self-contained file that opens from disk.

Sections: lineage, the funnel (SVG chart + table), score and length distributions,
the label distribution, near-duplicate clusters, examples of each drop reason,
review results and the student's evaluation. Each section renders from whatever
columns and keys exist and says so when there is nothing to show. Plots are
matplotlib PNGs (the `Figure` API, no pyplot state) embedded as base64; the funnel
is inline SVG. Every piece of dataset text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation.funnel import Funnel, reason_code
from curation.store import DatasetVersion
from factory.atomic import write_text_atomic
from factory.schema import LABEL_ID_COLUMN, RECORD_SCHEMA
from factory.secrets import redact_secrets

PLOT_SAMPLE_ROWS = 20_000  # plots of bigger versions use a seeded sample of this many rows
EXCERPT_CHARS = 240
EXAMPLES_PER_REASON = 3
DUP_CLUSTERS_SHOWN = 5
DUP_MEMBERS_SHOWN = 6
MAX_LABEL_BARS = 40
NAMED_SCORES = ("mean_entropy", "judge_score", "consistency")
# columns never worth loading for a report (token-level samples are by far the biggest)
SKIPPED_COLUMNS = {"samples", "teacher", "judge_rationale"}
KEPT_COLOR, DROPPED_COLOR = "#2a9d8f", "#e76f51"
REASON_COLORS = ["#e76f51", "#f4a261", "#e9c46a", "#9c6644", "#b5838d", "#6d597a", "#e5989b", "#8d99ae", "#bc4749"]
IMAGE_SUFFIXES = (".png", ".svg")
MIN_BIN_COUNT = 10  # calibration bins with fewer examples are drawn hollow (too few to judge)


@dataclass
class Section:
    anchor: str
    title: str
    body: str


def report_path(version: DatasetVersion) -> Path:
    """Where a version's report lives: beside its (read-only) directory, in <name>/reports/."""
    return version.path.parent / "reports" / f"v{version.version}.html"


def evaluation_path(version: DatasetVersion) -> Path:
    """Where the evaluation a version's report showed is kept, so a later report shows it too."""
    return version.path.parent / "reports" / f"v{version.version}.evaluation.json"


def saved_evaluation(version: DatasetVersion) -> dict | None:
    """The evaluation last reported for `version`, if any."""
    path = evaluation_path(version)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_report(
    version: DatasetVersion,
    out_path: Path,
    evaluation: dict | None = None,
    review: dict | None = None,
) -> Path:
    """Write the HTML report of `version` to `out_path` (atomically) and return the path.

    `evaluation` is the dict of `trainer.evaluate(...)`: a `student`/`teacher` pair of
    metric dicts (or `student_*`/`teacher_*` keys) becomes a comparison table, other
    keys a metrics table, and any key ending in `_png`/`_svg` (e.g. `reliability_png`)
    that names an existing image is embedded. `review` is the summary of
    `curation.review` (rendered key by key); review verdicts stored in the `review`
    column are summarised as well.
    """
    out_path = Path(out_path)
    frame = _load_rows(version)
    plot_frame = frame.sample(PLOT_SAMPLE_ROWS, seed=0) if frame.height > PLOT_SAMPLE_ROWS else frame
    sections = [
        _lineage_section(version),
        _funnel_section(version.manifest.get("funnel") or [], version.manifest["rows"]["total"]),
        _distributions_section(plot_frame, sampled_from=frame.height),
        _labels_section(frame, version.label_set),
        _duplicates_section(frame),
        _drop_examples_section(frame),
        _review_section(frame, review),
        _evaluation_section(evaluation),
    ]
    page = _page(f"{version.ref} — Stillhouse dataset report", version, sections)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_path, page)
    if evaluation:
        evaluation_path(version).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(evaluation_path(version), json.dumps(evaluation, indent=2, default=str) + "\n")
    return out_path


# -- data ---------------------------------------------------------------------
def _load_rows(version: DatasetVersion) -> pl.DataFrame:
    """Kept and rejected rows with only the columns a report uses, plus `kept` and `text`."""
    columns = [name for name in version.manifest.get("columns", {}) if name not in SKIPPED_COLUMNS] or None
    frame = version.read_all(columns=columns)
    has_input = pl.col("input").fill_null("") != ""
    if frame["instruction"].n_unique() == 1 and frame.select(has_input.any()).item():
        # One constant instruction over input texts (a classification pool): the text is the
        # input, even when empty; showing the instruction would hide an empty ticket.
        text = pl.col("input")
    else:
        text = pl.when(has_input).then(pl.concat_str("instruction", pl.lit("\n\n"), "input")).otherwise("instruction")
    return frame.with_columns(kept=pl.col("drop_stage").is_null(), text=text.fill_null(""))


def _has_values(frame: pl.DataFrame, column: str) -> bool:
    return column in frame.columns and frame[column].null_count() < frame.height


def _numeric(frame: pl.DataFrame, column: str) -> bool:
    return column in frame.columns and frame.schema[column].is_numeric()


# -- html helpers ---------------------------------------------------------------
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _excerpt(text: str | None, limit: int = EXCERPT_CHARS) -> str:
    text = " ".join((text or "").split())
    if not text:
        return '<span class="muted">(empty)</span>'
    return _esc(text if len(text) <= limit else text[: limit - 1] + "…")


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]], raw: bool = False, css_class: str = "") -> str:
    """An HTML table; cells are escaped unless `raw` (then callers escaped them and it spans the page)."""
    head = "".join(f"<th>{_esc(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell if raw else _esc(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    classes = " ".join(name for name in ("wide" if raw else "", css_class) if name)
    attribute = f' class="{classes}"' if classes else ""
    return f"<table{attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _facts(rows: Iterable[tuple[str, Any]]) -> str:
    """A two-column key/value table with the keys as row headers."""
    body = "".join(f'<tr><th scope="row">{_esc(key)}</th><td>{_esc(value)}</td></tr>' for key, value in rows)
    return f'<table class="facts"><tbody>{body}</tbody></table>'


def _note(text: str) -> str:
    return f'<p class="muted">{_esc(text)}</p>'


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1e5 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        text = json.dumps(value, default=str)
        return text if len(text) <= 120 else text[:119] + "…"
    return str(value)


def _png(figure: Any, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{encoded}">'


def _figure(width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # lazy: matplotlib costs ~0.5 s to import

    figure = Figure(figsize=(width, height))
    axes = figure.add_subplot()
    axes.spines[["top", "right"]].set_visible(False)
    return figure, axes


def _image_file(path: Path, alt: str) -> str:
    if not path.is_file():
        return _note(f"image not found: {path}")
    data = path.read_bytes()
    if path.suffix.lower() == ".svg":
        return f'<img alt="{_esc(alt)}" src="data:image/svg+xml;base64,{base64.b64encode(data).decode("ascii")}">'
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


# -- sections -----------------------------------------------------------------
def _lineage_section(version: DatasetVersion) -> Section:
    manifest = version.manifest
    rows, code = manifest["rows"], manifest.get("code_version") or {}
    facts = [
        ("ref", version.ref),
        ("parent", manifest.get("parent") or "none"),
        ("created", manifest.get("created_at", "unknown")),
        (
            "code version",
            f"stillhouse {code.get('stillhouse', 'unknown')}, commit {code.get('git_commit') or 'unknown'}",
        ),
        ("schema version", manifest.get("schema_version")),
        ("rows", f"{rows['kept']:,} kept, {rows['rejected']:,} rejected ({rows['total']:,} total)"),
        ("path", version.path),
    ]
    if version.label_set:
        facts.append(("label set", f"{len(version.label_set)}: {', '.join(version.label_set)}"))
    body = ""
    if manifest.get("description"):
        body += f"<p>{_esc(manifest['description'])}</p>"
    body += _facts(facts)
    config = redact_secrets(manifest.get("config") or {})
    if config:
        body += f"<details><summary>run config</summary><pre>{_esc(json.dumps(config, indent=2))}</pre></details>"
    files = manifest.get("files") or {}
    if files:
        file_rows = [(name, _fmt(meta.get("bytes")), meta.get("sha256", "")) for name, meta in files.items()]
        body += f"<details><summary>files</summary>{_table(['file', 'bytes', 'sha256'], file_rows)}</details>"
    return Section("lineage", "Lineage", body)


def _funnel_section(funnel: Funnel, total: int) -> Section:
    if not funnel:
        return Section("funnel", "Funnel", _note(f"No curation stage dropped rows: all {total:,} rows were kept."))
    rows = []
    for step in funnel:
        dropped = sum(step["dropped"].values())
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in step["dropped"].items()) or "-"
        share = f"{step['rows_out'] / step['rows_in']:.1%}" if step["rows_in"] else "-"
        rows.append((step["stage"], f"{step['rows_in']:,}", f"{dropped:,}", reasons, f"{step['rows_out']:,}", share))
    table = _table(["stage", "rows in", "dropped", "by reason", "rows out", "kept"], rows)
    return Section("funnel", "Funnel", _funnel_svg(funnel) + table)


def _funnel_svg(funnel: Funnel) -> str:
    """Horizontal bars, one per stage: rows out in green, each drop reason a coloured segment."""
    label_width, bar_width, row_height, top = 170, 460, 30, 10
    start = funnel[0]["rows_in"] or 1
    scale = bar_width / start
    reasons = list(dict.fromkeys(reason for step in funnel for reason in step["dropped"]))
    colors = {reason: REASON_COLORS[index % len(REASON_COLORS)] for index, reason in enumerate(reasons)}
    parts = []
    bars = [("all rows", start, {}, start)] + [(s["stage"], s["rows_in"], s["dropped"], s["rows_out"]) for s in funnel]
    for index, (stage, rows_in, dropped, rows_out) in enumerate(bars):
        y = top + index * row_height
        parts.append(
            f'<text x="{label_width - 8}" y="{y + 15}" text-anchor="end" class="svg-label">{_esc(stage)}</text>'
        )
        x = label_width
        width = rows_out * scale
        parts.append(
            f'<rect x="{x}" y="{y}" width="{width:.1f}" height="20" fill="{KEPT_COLOR}">'
            f"<title>{_esc(stage)}: {rows_out:,} rows out</title></rect>"
        )
        x += width
        for reason, count in dropped.items():
            width = count * scale
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="20" fill="{colors[reason]}">'
                f"<title>{_esc(stage)}: {count:,} dropped ({_esc(reason)})</title></rect>"
            )
            x += width
        summary = f"{rows_out:,}" if not dropped else f"{rows_out:,} (−{rows_in - rows_out:,})"
        parts.append(f'<text x="{label_width + bar_width + 8}" y="{y + 15}" class="svg-label">{summary}</text>')
    legend_y = top + len(bars) * row_height + 8
    x = label_width
    for reason, color in [("kept", KEPT_COLOR), *colors.items()]:
        parts.append(f'<rect x="{x}" y="{legend_y}" width="12" height="12" fill="{color}"/>')
        parts.append(f'<text x="{x + 16}" y="{legend_y + 11}" class="svg-legend">{_esc(reason)}</text>')
        x += 28 + 7 * len(reason)
    width = max(label_width + bar_width + 110, x + 20)
    height = legend_y + 24
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="curation funnel">{"".join(parts)}</svg>'
    )


def _distribution_columns(frame: pl.DataFrame) -> list[tuple[str, pl.Expr]]:
    """(title, expression) for every distribution worth plotting in this frame."""
    columns: list[tuple[str, pl.Expr]] = []
    if (frame["input"].fill_null("") != "").any():
        columns.append(("input length (characters)", pl.col("input").str.len_chars()))
    if frame["instruction"].n_unique() > 1:
        columns.append(("instruction length (characters)", pl.col("instruction").str.len_chars()))
    if _has_values(frame, "response"):
        columns.append(("response length (characters)", pl.col("response").str.len_chars()))
    if _has_values(frame, "label_probs"):
        columns.append(("teacher confidence (max label probability)", pl.col("label_probs").list.max()))
    known = {field.name for field in RECORD_SCHEMA} | {"kept", "text", "dup_cluster", LABEL_ID_COLUMN}
    extras = [name for name in frame.columns if name not in known and name not in NAMED_SCORES]
    for name in [*NAMED_SCORES, *extras]:
        if _numeric(frame, name) and _has_values(frame, name):
            columns.append((name, pl.col(name)))
    return columns


def _distributions_section(frame: pl.DataFrame, sampled_from: int) -> Section:
    columns = _distribution_columns(frame)
    if not columns:
        return Section("distributions", "Distributions", _note("No length or score columns to plot."))
    cards, stats = [], []
    for title, expression in columns:
        values = frame.select(expression.cast(pl.Float64).alias("value"), "kept").drop_nulls("value")
        values = values.filter(pl.col("value").is_finite())
        if values.height == 0:
            continue
        kept = values.filter(pl.col("kept"))["value"].to_numpy()
        dropped = values.filter(~pl.col("kept"))["value"].to_numpy()
        figure, axes = _figure(4.6, 2.6)
        edges = np.histogram_bin_edges(values["value"].to_numpy(), bins=30)
        axes.hist(kept, bins=edges, color=KEPT_COLOR, alpha=0.85, label=f"kept ({len(kept):,})")
        if len(dropped):
            axes.hist(dropped, bins=edges, color=DROPPED_COLOR, alpha=0.6, label=f"dropped ({len(dropped):,})")
        axes.set_title(title, fontsize=10)
        axes.set_ylabel("rows", fontsize=8)
        axes.tick_params(labelsize=8)
        axes.legend(fontsize=7, frameon=False)
        cards.append(f"<figure>{_png(figure, title)}</figure>")
        for name, part in (("kept", kept), ("dropped", dropped)):
            if len(part):
                quantiles = np.percentile(part, [5, 50, 95])
                stats.append((title, name, f"{len(part):,}", _fmt(float(part.mean())), *map(_fmt, quantiles)))
    body = f'<div class="grid">{"".join(cards)}</div>'
    body += _table(["column", "rows", "n", "mean", "p5", "median", "p95"], stats)
    if frame.height < sampled_from:
        body += _note(f"Plots use a seeded sample of {frame.height:,} of {sampled_from:,} rows.")
    return Section("distributions", "Distributions", body)


def _labels_section(frame: pl.DataFrame, label_set: list[str] | None) -> Section:
    if not _has_values(frame, "label"):
        return Section("labels", "Labels", _note("This version has no labels."))
    counts = (
        frame.filter(pl.col("label").is_not_null())
        .group_by("label")
        .agg(kept=pl.col("kept").sum(), dropped=(~pl.col("kept")).sum())
        .with_columns(total=pl.col("kept") + pl.col("dropped"))
    )
    order = {label: index for index, label in enumerate(label_set or [])}
    counts = counts.with_columns(
        order=pl.col("label").replace_strict(order, default=len(order), return_dtype=pl.Int64)
    ).sort(["order", "total", "label"], descending=[False, True, False])
    if label_set:  # labels of the set that never occur are worth seeing too
        missing = [label for label in label_set if label not in set(counts["label"].to_list())]
        if missing:
            counts = pl.concat(
                [counts, pl.DataFrame({"label": missing}).with_columns(kept=0, dropped=0, total=0, order=0)],
                how="diagonal_relaxed",
            )
    shown = counts.head(MAX_LABEL_BARS)
    labels = shown["label"].to_list()
    figure, axes = _figure(6.4, 0.8 + 0.28 * len(labels))
    positions = np.arange(len(labels))[::-1]
    kept = shown["kept"].to_numpy()
    axes.barh(positions, kept, color=KEPT_COLOR, label="kept")
    axes.barh(positions, shown["dropped"].to_numpy(), left=kept, color=DROPPED_COLOR, alpha=0.6, label="dropped")
    axes.set_yticks(positions, labels, fontsize=8)
    axes.tick_params(axis="x", labelsize=8)
    axes.set_xlabel("rows", fontsize=8)
    axes.legend(fontsize=7, frameon=False, ncols=2, loc="lower right", bbox_to_anchor=(1.0, 1.0))
    body = _png(figure, "label distribution")
    if counts.height > MAX_LABEL_BARS:
        body += _note(f"Showing {MAX_LABEL_BARS} of {counts.height} labels.")
    kept_total = max(int(counts["kept"].sum()), 1)
    rows = [
        (r["label"], f"{r['kept']:,}", f"{r['kept'] / kept_total:.1%}", f"{r['dropped']:,}")
        for r in counts.iter_rows(named=True)
    ]
    body += f"<details><summary>counts</summary>{_table(['label', 'kept', 'share of kept', 'dropped'], rows)}</details>"
    return Section("labels", "Labels", body)


def _status(kept: bool, reason: str | None) -> str:
    if kept:
        return '<span class="badge kept">kept</span>'
    return f'<span class="badge dropped">dropped</span> <span class="muted">{_esc(reason or "")}</span>'


def _duplicates_section(frame: pl.DataFrame) -> Section:
    title = "Near-duplicate clusters"
    if not _has_values(frame, "dup_cluster"):
        return Section("duplicates", title, _note("This version has no dup_cluster column."))
    clustered = frame.filter(pl.col("dup_cluster").is_not_null())
    sizes = clustered.group_by("dup_cluster").len().filter(pl.col("len") > 1)
    if sizes.height == 0:
        return Section("duplicates", title, _note("No cluster has more than one row."))
    in_clusters = int(sizes["len"].sum())
    body = f"<p>{sizes.height:,} clusters with more than one row, {in_clusters:,} rows in them.</p>"
    largest = sizes.sort(["len", "dup_cluster"], descending=[True, False]).head(DUP_CLUSTERS_SHOWN)
    for cluster, size in largest.iter_rows():
        members = clustered.filter(pl.col("dup_cluster") == cluster)
        kept = members.filter(pl.col("kept")).head(DUP_MEMBERS_SHOWN // 2)  # show both sides of the decision
        shown = pl.concat([kept, members.filter(~pl.col("kept")).head(DUP_MEMBERS_SHOWN - kept.height)])
        rows = [
            (_status(row["kept"], row["drop_reason"]), _excerpt(row["text"])) for row in shown.iter_rows(named=True)
        ]
        more = f" (showing {DUP_MEMBERS_SHOWN})" if size > DUP_MEMBERS_SHOWN else ""
        body += f"<h3>cluster {_esc(cluster)}: {size} rows{more}</h3>"
        body += _table(["status", "text"], rows, raw=True, css_class="statuses")
    return Section("duplicates", title, body)


def _drop_examples_section(frame: pl.DataFrame) -> Section:
    title = "Drop reasons"
    dropped = frame.filter(~pl.col("kept"))
    if dropped.height == 0:
        return Section("drops", title, _note("No row was dropped."))
    examples = (
        dropped.with_columns(code=reason_code(pl.col("drop_reason")))
        .group_by("drop_stage", "code", maintain_order=True)
        .head(EXAMPLES_PER_REASON)
    )
    # Show the response too: a row dropped as `empty` must show its empty answer, not only its prompt.
    with_response = _has_values(frame, "response")
    header = ["stage", "reason", "prompt", "response"] if with_response else ["stage", "reason", "text"]
    rows = [
        (
            _esc(row["drop_stage"]),
            _esc(row["drop_reason"]),
            _excerpt(row["text"]),
            *([_excerpt(row["response"])] if with_response else []),
        )
        for row in examples.iter_rows(named=True)
    ]
    body = f"<p>Up to {EXAMPLES_PER_REASON} examples of each stage and reason.</p>"
    return Section("drops", title, body + _table(header, rows, raw=True, css_class="drops"))


def _review_section(frame: pl.DataFrame, review: dict | None) -> Section:
    title = "Review"
    body = ""
    if _has_values(frame, "review"):
        reviewed = frame.filter(pl.col("review").is_not_null()).with_columns(
            status=pl.col("review").struct.field("status").fill_null("unknown"),
            rating=pl.col("review").struct.field("rating"),
        )
        verdicts = reviewed.group_by("status").len().sort("len", descending=True)
        body += f"<p>{reviewed.height:,} rows carry a reviewer verdict.</p>"
        body += _table(["verdict", "rows"], [(s, f"{n:,}") for s, n in verdicts.iter_rows()])
        per_origin = (
            reviewed.group_by("origin")
            .agg(
                reviewed=pl.len(),
                rejected=(pl.col("status") == "rejected").sum(),
                corrected=(pl.col("status") == "corrected").sum(),
                mean_rating=pl.col("rating").mean(),
            )
            .sort("origin")
        )
        rows = [
            (
                r["origin"],
                f"{r['reviewed']:,}",
                f"{r['rejected']:,}",
                f"{r['rejected'] / r['reviewed']:.1%}",
                f"{r['corrected']:,}",
                _fmt(r["mean_rating"]) if r["mean_rating"] is not None else "-",
            )
            for r in per_origin.iter_rows(named=True)
        ]
        body += "<h3>Rejection rate per origin</h3>"
        body += _table(["origin", "reviewed", "rejected", "rejection rate", "corrected", "mean rating"], rows)
        corrections = reviewed.filter(pl.col("status") == "corrected").head(5)
        if corrections.height:
            rows = [
                (_excerpt(r["review"]["original"], 120), _excerpt(r["review"]["correction"], 120), _excerpt(r["text"]))
                for r in corrections.iter_rows(named=True)
            ]
            body += "<h3>Corrections</h3>" + _table(["original", "correction", "row"], rows, raw=True)
    if review:
        body += "<h3>Review summary</h3>" + _table(["key", "value"], _flatten(redact_secrets(review)))
    return Section("review", title, body or _note("This version has not been reviewed."))


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as (dotted.key, display value) rows."""
    if isinstance(value, dict):
        rows: list[tuple[str, str]] = []
        for key, item in value.items():
            rows += _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return rows
    return [(prefix, _fmt(value))]


def _is_image_key(key: str, value: Any) -> bool:
    return isinstance(value, (str, Path)) and (
        key.endswith(("_png", "_svg")) or str(value).lower().endswith(IMAGE_SUFFIXES)
    )


def _comparison(evaluation: dict) -> tuple[list[tuple[str, Any, Any]], dict]:
    """(metric, student, teacher) rows and the rest of the dict."""
    rest = dict(evaluation)
    if isinstance(evaluation.get("student"), dict) and isinstance(evaluation.get("teacher"), dict):
        student, teacher = rest.pop("student"), rest.pop("teacher")
        student_rows, teacher_rows = dict(_flat_values(student)), dict(_flat_values(teacher))
    else:
        student_rows = {k[len("student_") :]: rest.pop(k) for k in list(rest) if k.startswith("student_")}
        teacher_rows = {k[len("teacher_") :]: rest.pop(k) for k in list(rest) if k.startswith("teacher_")}
    metrics = list(dict.fromkeys([*student_rows, *teacher_rows]))
    rows = [(m, student_rows.get(m), teacher_rows.get(m)) for m in metrics]
    return [row for row in rows if not _is_image_key(row[0], row[1] or row[2])], rest


def _flat_values(value: dict, prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, item in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        rows += _flat_values(item, name) if isinstance(item, dict) else [(name, item)]
    return rows


def _evaluation_section(evaluation: dict | None) -> Section:
    title = "Student evaluation"
    if not evaluation:
        return Section("evaluation", title, _note("No student was evaluated for this version."))
    comparison, rest = _comparison(evaluation)
    body = ""
    if comparison:
        rows = []
        for metric, student, teacher in comparison:
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (student, teacher))
            ratio = _fmt(student / teacher) if numeric and teacher else "-"
            rows.append(
                (
                    metric,
                    _fmt(student) if student is not None else "-",
                    _fmt(teacher) if teacher is not None else "-",
                    ratio,
                )
            )
        body += _table(["metric", "student", "teacher", "student / teacher"], rows)
    bins = rest.pop("calibration_bins", None)
    if isinstance(bins, dict) and bins:
        rest.pop("reliability_png", None)  # drawn below from the bins, with their counts
    flat = _flat_values(rest)
    images = [(key, Path(value)) for key, value in flat if _is_image_key(key, value)]
    others = [(key, _metric_value(value)) for key, value in flat if not _is_image_key(key, value)]
    if others:
        body += "<h3>Metrics</h3>" + _table(["metric", "value"], others)
    if isinstance(bins, dict) and bins:
        body += "<h3>Reliability</h3>" + _reliability(bins)
    for key, path in images:
        caption = key.removesuffix("_png").removesuffix("_svg").replace("_", " ")
        body += f"<figure>{_image_file(path, caption)}<figcaption>{_esc(caption)}</figcaption></figure>"
    return Section("evaluation", title, body)


def _metric_value(value: Any) -> str:
    """A metric cell: numbers formatted, lists as comma-separated values, never raw JSON."""
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(item) for item in value) or "-"
    return _fmt(value)


def _reliability(curves: dict[str, list[dict]]) -> str:
    """One reliability diagram per model from its calibration bins, each bar labelled with
    its count. Bins of fewer than MIN_BIN_COUNT rows are drawn hollow: one example is
    right or wrong, an accuracy of 0 or 1 there is no evidence of (mis)calibration."""
    figure = _figure_grid(len(curves))
    for axes, (name, bins) in zip(figure.axes, curves.items()):
        filled = [
            b for b in bins if b.get("count") and b.get("accuracy") is not None and b["accuracy"] == b["accuracy"]
        ]
        total = sum(b["count"] for b in filled) or 1
        for b in filled:
            width = b["upper"] - b["lower"]
            solid = b["count"] >= MIN_BIN_COUNT
            axes.bar(
                b["lower"],
                b["accuracy"],
                width=width,
                align="edge",
                color=KEPT_COLOR if solid else "none",
                edgecolor=KEPT_COLOR,
                hatch=None if solid else "//",
                alpha=0.8 if solid else 0.6,
            )
            axes.text(b["lower"] + width / 2, min(b["accuracy"], 0.93) + 0.02, str(b["count"]), ha="center", fontsize=6)
        axes.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
        ece = sum(b.get("gap_weighted") or 0 for b in filled)
        axes.set(xlim=(0, 1), ylim=(0, 1))
        axes.set_xlabel("confidence", fontsize=8)
        axes.set_ylabel("accuracy", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.set_title(f"{name}: ECE {ece:.3f}, {total:,} examples", fontsize=9)
    note = _note(
        f"Numbers are the examples in each confidence bin; hatched bins hold fewer than {MIN_BIN_COUNT} "
        "examples, too few to show (mis)calibration."
    )
    return _png(figure, "reliability diagram") + note


def _figure_grid(columns: int) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.6 * columns, 3.4))
    for index in range(columns):
        axes = figure.add_subplot(1, columns, index + 1)
        axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    return figure


# -- page ---------------------------------------------------------------------
STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232a; margin: 0;
       background: #f6f7f9; }
header { background: #1d3557; color: #fff; padding: 18px 32px; }
header h1 { margin: 0; font-size: 22px; } header p { margin: 4px 0 0; opacity: .8; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #dde1e6; padding: 8px 32px; z-index: 1; }
nav a { margin-right: 16px; color: #1d3557; text-decoration: none; font-weight: 600; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 32px 48px; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 16px 22px; margin: 18px 0; }
h2 { margin: 0 0 12px; font-size: 18px; } h3 { font-size: 14px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border-bottom: 1px solid #e6e9ed; padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; } table.wide { width: 100%; } table.wide td:first-child { width: 1%; white-space: nowrap; }
table.facts th { background: none; font-weight: 600; white-space: nowrap; }
td { max-width: 720px; overflow-wrap: anywhere; }
table.drops, table.statuses { table-layout: fixed; }
table.drops td:first-child, table.statuses td:first-child { width: auto; white-space: normal; }
table.drops th:nth-child(1) { width: 12%; } table.drops th:nth-child(2) { width: 24%; }
table.statuses th:nth-child(1) { width: 38%; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(430px, 1fr)); gap: 12px; }
figure { margin: 0; } figcaption { font-size: 12px; color: #5c6670; }
img { max-width: 100%; height: auto; }
.muted { color: #6c757d; } pre { background: #f0f2f5; padding: 10px; overflow-x: auto; font-size: 12px; }
.badge { display: inline-block; padding: 1px 7px; border-radius: 9px; font-size: 11px; font-weight: 600; color: #fff; }
.badge.kept { background: #2a9d8f; } .badge.dropped { background: #e76f51; }
.chart { max-width: 100%; height: auto; } .svg-label { font-size: 12px; fill: #1d232a; }
.svg-legend { font-size: 11px; fill: #1d232a; }
summary { cursor: pointer; color: #1d3557; margin-top: 8px; }
"""


def _page(title: str, version: DatasetVersion, sections: list[Section]) -> str:
    rows = version.manifest["rows"]
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    nav = "".join(f'<a href="#{s.anchor}">{_esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.anchor}"><h2>{_esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{_esc(version.ref)}</h1><p>{rows['kept']:,} kept · {rows['rejected']:,} rejected · "
        f"report generated {generated}</p></header><nav>{nav}</nav><main>{body}</main></body></html>\n"
    )
