"""`stillhouse train CONFIG`, `stillhouse eval MODEL --test FILE` and `stillhouse export REF --format F --out DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

console = Console()


def train_command(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="A training config YAML file (TrainConfig).")],
    output_dir: Annotated[
        Optional[Path], typer.Option("--output-dir", "-o", help="Override the config's output_dir.")
    ] = None,
    root: Annotated[Optional[Path], typer.Option("--root", help="Override the config's store_root.")] = None,
) -> None:
    """Train a student on a dataset version (SFT, token-level KD or classifier KD); resumes from checkpoints."""
    from stillhouse.yaml_config import load_config
    from trainer.config import TrainConfig
    from trainer.training import train

    config = load_config(config_path, TrainConfig)
    updates = {key: value for key, value in (("output_dir", output_dir), ("store_root", root)) if value is not None}
    if updates:
        config = config.model_copy(update=updates)
    result = train(config)
    if not result.is_main:  # under accelerate / torchrun the first process reports
        return
    resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from else ""
    loss = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    console.print(f"trained on {result.dataset_ref}: {result.steps} steps{resumed}{loss}")
    if result.details.get("skipped_review_corrected"):
        console.print(
            f"left out {result.details['skipped_review_corrected']} review-corrected rows: no teacher logprobs "
            "describe their corrected responses (objective: sft trains on them)"
        )
    console.print(f"model: {result.model_dir}")


def eval_command(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL", help="A trained classifier student directory.")],
    test: Annotated[Path, typer.Option("--test", help="Human-labelled JSONL/CSV with text and label columns.")],
    teacher: Annotated[Optional[Path], typer.Option("--teacher", help="The teacher classifier directory.")] = None,
    out_dir: Annotated[
        Optional[Path], typer.Option("--out", help="Report directory [default: MODEL/evaluation].")
    ] = None,
    hourly_usd: Annotated[float, typer.Option("--hourly-usd", help="Machine price per hour for cost.")] = 0.10,
    text_column: Annotated[str, typer.Option("--text-column")] = "text",
    label_column: Annotated[str, typer.Option("--label-column")] = "label",
    latency_examples: Annotated[int, typer.Option("--latency-examples", help="Single-example calls timed.")] = 200,
) -> None:
    """Score a student (and its teacher) on a human-labelled test set: F1, agreement, ECE, latency, cost."""
    from trainer.evaluation import evaluate, interval_text

    report = evaluate(
        model_dir,
        test,
        teacher_dir=teacher,
        hourly_usd=hourly_usd,
        out_dir=out_dir,
        text_column=text_column,
        label_column=label_column,
        latency_examples=latency_examples,
    )
    for name in ("teacher", "student"):
        if name in report:
            m = report[name]
            console.print(
                f"{name}: macro-F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f} (floor {m['ece_floor']:.4f})  "
                f"p50 {m['latency_ms']['p50']:.2f} ms  p95 {m['latency_ms']['p95']:.2f} ms  params {m['parameters']}"
            )
    if "ratios" in report:
        r = report["ratios"]
        interval = r.get("f1_interval_95")
        spread = f" (95% bootstrap {interval_text(interval)})" if interval else ""
        console.print(
            f"ratios: F1 {r['f1']:.4f}{spread}  agreement {r['agreement']:.4f}  latency p50 {r['latency_p50']:.4f}"
        )
    console.print(f"report: {Path(report['out_dir']) / 'evaluation.md'}")


def export_command(
    ref: Annotated[str, typer.Argument(metavar="REF", help="Dataset ref: name, name@latest or name@vN.")],
    format: Annotated[
        str, typer.Option("--format", "-f", help="messages, axolotl-kd, distillkit, openai-chat or sharegpt.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="A new directory for the export.")],
    tokenizer: Annotated[
        Optional[str],
        typer.Option("--tokenizer", help="Student tokenizer directory (axolotl-kd, distillkit: the teacher's)."),
    ] = None,
    root: Annotated[Optional[Path], typer.Option("--root", help="Dataset store root.")] = None,
) -> None:
    """Write a dataset version in the format another trainer reads (TRL, axolotl KD, DistillKit, OpenAI, ShareGPT)."""
    from curation.store import DatasetStore
    from trainer.export import METADATA_FILE, export_version

    version = DatasetStore(root).resolve(ref)
    metadata = export_version(version, format, out, tokenizer)  # type: ignore[arg-type]
    left = f", left out {len(metadata['left_out'])} (see {METADATA_FILE})" if metadata["left_out"] else ""
    console.print(f"exported {metadata['rows']} rows of {version.ref} as {format}{left}: {out / metadata['file']}")
