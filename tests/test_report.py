import base64
import re

import polars as pl
import pytest

from curation.store import DatasetStore
from stillhouse.report import write_report

LABELS = ["refund_request", "delivery_late", "card_lost"]
SCRIPT_TEXT = "<script>alert('x')</script> where is my parcel & my refund?"
TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def full_frame(n: int = 40) -> pl.DataFrame:
    """Every optional column: labels, soft labels, scores, dup clusters, review, 3 stages of drops."""
    drops = {
        3: ("minhash_dedup", "near_duplicate: of row 2"),
        4: ("minhash_dedup", "near_duplicate: of row 2"),
        7: ("heuristics", "too_short: 4 chars < 10"),
        8: ("heuristics", "too_short: 4 chars < 10"),
        9: ("heuristics", "too_short: 4 chars < 10"),
        10: ("heuristics", "blocklist: matched 'script'"),
        11: ("judge", "low_score: 1.5 < 3"),
        12: ("judge", "low_score: 1.5 < 3"),
    }
    texts = [f"ticket number {i} about my order and a refund" for i in range(n)]
    texts[10] = SCRIPT_TEXT
    review = [None] * n
    review[0] = {"status": "accepted", "reviewer": "ana", "rating": 5}
    review[1] = {"status": "rejected", "reviewer": "ana", "rating": 1}
    review[5] = {"status": "corrected", "reviewer": "bo", "rating": 3, "correction": "card_lost", "original": "x<b>"}
    return pl.DataFrame(
        {
            "id": [f"id{i}" for i in range(n)],
            "instruction": ["Classify the intent of this support ticket."] * n,
            "input": texts,
            "origin": ["seed" if i % 3 else "self_instruct" for i in range(n)],
            "label": [LABELS[i % 3] for i in range(n)],
            "label_probs": [[0.8, 0.1, 0.1] if i % 2 else [0.2, 0.3, 0.5] for i in range(n)],
            "drop_stage": [drops[i][0] if i in drops else None for i in range(n)],
            "drop_reason": [drops[i][1] if i in drops else None for i in range(n)],
            "review": review,
            "dup_cluster": [2 if i in (2, 3, 4, 10) else None for i in range(n)],
            "mean_entropy": [0.1 * (i % 7) for i in range(n)],
            "judge_score": [float(i % 5) + 1 for i in range(n)],
            "consistency": [1.0 - 0.02 * i for i in range(n)],
        },
        schema_overrides={
            "review": pl.Struct(
                {
                    "status": pl.String,
                    "reviewer": pl.String,
                    "rating": pl.Int32,
                    "correction": pl.String,
                    "original": pl.String,
                }
            )
        },
    )


@pytest.fixture
def store(tmp_path):
    return DatasetStore(tmp_path / "datasets")


def test_full_report_has_every_section_with_plots(store, tmp_path):
    parent = store.publish("tickets", full_frame(20))
    version = store.publish(
        "tickets",
        full_frame(),
        parent=parent.ref,
        label_set=LABELS,
        config={"teacher": {"backend": "openai", "api_key": "sk-live-secret"}},
        description="Support tickets <labelled> by the teacher.",
    )
    reliability = tmp_path / "eval" / "reliability.png"
    reliability.parent.mkdir()
    reliability.write_bytes(TINY_PNG)
    evaluation = {
        "student": {"macro_f1": 0.8, "ece": 0.05, "latency_ms_p50": 1.5, "latency_ms_p95": 3.0, "params": 1_000_000},
        "teacher": {"macro_f1": 0.9, "ece": 0.04, "latency_ms_p50": 15.0, "latency_ms_p95": 30.0, "params": 22_000_000},
        "agreement": 0.91,
        "cost_per_million": {"student_usd": 0.02, "teacher_usd": 1.3},
        "reliability_png": str(reliability),
        "confusion_png": str(tmp_path / "missing.png"),
    }
    review = {"pushed": 30, "answered": 3, "rejection_rate": {"seed": 0.5}, "api_key": "argilla-secret-key"}

    out = write_report(version, tmp_path / "reports" / "tickets-v2.html", evaluation=evaluation, review=review)

    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for section in ("lineage", "funnel", "distributions", "labels", "duplicates", "drops", "review", "evaluation"):
        assert f'<section id="{section}">' in page
    # lineage
    assert "tickets@v2" in page and "tickets@v1" in page and version.manifest["created_at"] in page
    assert "Support tickets &lt;labelled&gt; by the teacher." in page
    # charts: funnel SVG; input length, confidence, entropy, judge, consistency, labels; reliability diagram
    assert page.count("<svg") == 1
    assert page.count("data:image/png;base64,") >= 7
    assert base64.b64encode(TINY_PNG).decode() in page
    assert "image not found" in page and "missing.png" in page
    for name in ("mean_entropy", "judge_score", "consistency", "teacher confidence"):
        assert name in page
    # funnel stages and reasons in chart and table
    for stage, reason in (("minhash_dedup", "near_duplicate"), ("heuristics", "too_short"), ("judge", "low_score")):
        assert stage in page and reason in page
    assert "<td>heuristics</td><td>38</td><td>4</td><td>too_short 3, blocklist 1</td><td>34</td>" in page
    # every drop reason has examples; the duplicate cluster shows kept and dropped members
    assert "blocklist: matched &#x27;script&#x27;" in page and "low_score: 1.5 &lt; 3" in page
    assert "cluster 2: 4 rows" in page
    duplicates = page.split('<section id="duplicates">')[1].split("</section>")[0]
    assert "badge kept" in duplicates and "badge dropped" in duplicates
    # dataset text is escaped everywhere it appears
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; where is my parcel &amp; my refund?" in page
    assert "x&lt;b&gt;" in page  # review correction's original text
    # review: verdicts from the column, rejection rate per origin, the summary dict
    review_html = page.split('<section id="review">')[1].split("</section>")[0]
    assert "3 rows carry a reviewer verdict" in review_html
    assert re.search(r"<td>seed</td><td>2</td><td>1</td><td>50.0%</td>", review_html)
    assert "rejection_rate.seed" in review_html
    # evaluation: student vs teacher with ratios, other metrics flattened
    assert "<td>macro_f1</td><td>0.8</td><td>0.9</td><td>0.8889</td>" in page
    assert "<td>params</td><td>1,000,000</td><td>22,000,000</td><td>0.04545</td>" in page
    assert "cost_per_million.teacher_usd" in page and "agreement" in page
    # secrets never reach the report
    assert "sk-live-secret" not in page and "argilla-secret-key" not in page
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no staging file left behind


def test_minimal_version_renders(store, tmp_path):
    frame = pl.DataFrame(
        {"id": ["a", "b"], "instruction": ["Say hi.", "Say bye."], "input": ["", ""], "origin": ["seed", "seed"]}
    )
    version = store.publish("minimal", frame)
    page = write_report(version, tmp_path / "minimal.html").read_text(encoding="utf-8")
    assert "minimal@v1" in page
    assert "all 2 rows were kept" in page
    assert "This version has no labels." in page
    assert "no dup_cluster column" in page
    assert "No row was dropped." in page
    assert "This version has not been reviewed." in page
    assert "No student was evaluated for this version." in page
    assert page.count("data:image/png;base64,") == 1  # only the instruction length varies


def test_flat_student_teacher_keys_and_empty_version(store, tmp_path):
    frame = full_frame(16).with_columns(drop_stage=pl.lit("heuristics"), drop_reason=pl.lit("too_short"))
    version = store.publish("all-dropped", frame)
    evaluation = {"student_macro_f1": 0.5, "teacher_macro_f1": 0.25, "macro_f1_ratio": 2.0}
    page = write_report(version, tmp_path / "r.html", evaluation=evaluation).read_text(encoding="utf-8")
    assert "<td>macro_f1</td><td>0.5</td><td>0.25</td><td>2</td>" in page
    assert "<td>macro_f1_ratio</td><td>2</td>" in page
    assert "0 kept" in page


def _bins(counts: list[int], accuracy: list[float]) -> list[dict]:
    width = 1 / len(counts)
    return [
        {
            "lower": i * width,
            "upper": (i + 1) * width,
            "count": n,
            "accuracy": a if n else float("nan"),
            "confidence": (i + 0.5) * width if n else float("nan"),
            "gap_weighted": 0.01 * n,
        }
        for i, (n, a) in enumerate(zip(counts, accuracy))
    ]


def test_evaluation_metrics_are_a_table_and_bins_are_drawn_with_counts(store, tmp_path, monkeypatch):
    version = store.publish("tickets", full_frame(), label_set=LABELS)
    trainer_png = tmp_path / "reliability.png"
    trainer_png.write_bytes(TINY_PNG)
    evaluation = {
        "examples": 12,
        "student": {"macro_f1": 0.8, "latency_ms": {"p50": 1.0, "p95": 2.0}},
        "teacher": {"macro_f1": 0.9, "latency_ms": {"p50": 10.0, "p95": 20.0}},
        "ratios": {"f1": 0.889, "agreement": 0.9},
        "reliability_png": str(trainer_png),
        "calibration_bins": {"student": _bins([0, 1, 11], [0.0, 1.0, 0.7]), "teacher": _bins([0, 0, 12], [0, 0, 0.9])},
    }
    labels_drawn: list[str] = []
    from matplotlib.axes import Axes

    real_text = Axes.text

    def recording_text(self, x, y, s, *args, **kwargs):
        labels_drawn.append(s)
        return real_text(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(Axes, "text", recording_text)
    page = write_report(version, tmp_path / "r.html", evaluation=evaluation).read_text(encoding="utf-8")
    section = page.split('<section id="evaluation">')[1].split("</section>")[0]
    assert "<td>latency_ms.p50</td><td>1</td><td>10</td><td>0.1</td>" in section
    assert "<td>ratios.agreement</td><td>0.9</td>" in section
    assert "calibration_bins" not in section and "[{" not in section and "{&quot;" not in section
    assert base64.b64encode(TINY_PNG).decode() not in section  # redrawn from the bins instead
    assert "Reliability" in section and "hatched bins hold fewer than 10 examples" in section
    assert sorted(labels_drawn) == ["1", "11", "12"]  # every non-empty bin shows its count


def test_empty_drops_show_the_empty_response_and_long_reasons_have_their_column(store, tmp_path):
    long_reason = "judge_low_score: " + "the answer restates the question without addressing it " * 6
    frame = pl.DataFrame(
        {
            "id": ["a", "b", "c"],
            "instruction": ["Say hi.", "Name a colour.", "Describe the sea."],
            "input": ["", "", ""],
            "origin": ["seed"] * 3,
            "response": ["Hello!", "   ", "The sea is the sea."],
            "drop_stage": [None, "heuristics", "judge"],
            "drop_reason": [None, "empty", long_reason],
        }
    )
    version = store.publish("answers", frame)
    page = write_report(version, tmp_path / "r.html").read_text(encoding="utf-8")
    drops = page.split('<section id="drops">')[1].split("</section>")[0]
    assert '<table class="wide drops">' in drops
    assert "<th>prompt</th><th>response</th>" in drops
    assert '<td>empty</td><td>Name a colour.</td><td><span class="muted">(empty)</span></td>' in drops
    assert "table.drops, table.statuses { table-layout: fixed; }" in page


def test_an_empty_input_of_a_classification_pool_shows_as_empty(store, tmp_path):
    frame = full_frame(12).with_columns(
        input=pl.when(pl.col("id") == "id7").then(pl.lit("")).otherwise(pl.col("input")),
        drop_reason=pl.when(pl.col("id") == "id7").then(pl.lit("empty")).otherwise(pl.col("drop_reason")),
    )
    version = store.publish("tickets", frame, label_set=LABELS)
    page = write_report(version, tmp_path / "r.html").read_text(encoding="utf-8")
    drops = page.split('<section id="drops">')[1].split("</section>")[0]
    assert '<td>heuristics</td><td>empty</td><td><span class="muted">(empty)</span></td>' in drops
    assert "Classify the intent" not in drops  # the constant instruction is not the row's text
    assert "<th>response</th>" not in drops  # a classification version has no responses to show


def test_datasets_report_keeps_the_evaluation_the_run_reported(store, tmp_path, run_cli):
    version = store.publish("tickets", full_frame(), label_set=LABELS)
    evaluation = {"student": {"macro_f1": 0.8}, "teacher": {"macro_f1": 0.9}}
    write_report(version, tmp_path / "run-report.html", evaluation=evaluation)  # what a run does
    code, out, err = run_cli("datasets", "report", "tickets@v1", "--root", store.root)
    assert code == 0, err
    page = (store.root / "tickets" / "reports" / "v1.html").read_text(encoding="utf-8")
    assert "<td>macro_f1</td><td>0.8</td><td>0.9</td>" in page


def test_label_id_is_not_plotted_as_a_score():
    from stillhouse.report import _distribution_columns

    frame = pl.DataFrame(
        {
            "instruction": ["Classify."] * 3,
            "input": ["a b", "c d e", "f"],
            "label_probs": [[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]],
            "label_id": [0, 1, 1],
            "my_score": [0.1, 0.5, 0.9],
        }
    )
    titles = [title for title, _ in _distribution_columns(frame)]
    assert "my_score" in titles and "teacher confidence (max label probability)" in titles
    assert "label_id" not in titles
