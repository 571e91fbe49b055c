"""The `stillhouse` command line.

Every command turns a `StillhouseError` into one line on stderr and exit code 1.
Sub-command groups live in their own modules and are registered here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from curation.funnel import funnel_table_rows
from curation.store import DatasetStore
from factory.errors import StillhouseError
from stillhouse import __version__
from stillhouse.cli_review import review_app
from stillhouse.cli_run import run_command, runs_app
from stillhouse.cli_train import eval_command, export_command, train_command

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="stillhouse",
    help="Grow, curate, version and distill task-specific datasets from a teacher model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
datasets_app = typer.Typer(help="Inspect published dataset versions.", no_args_is_help=True)
config_app = typer.Typer(help="Validate run configs and print their JSON schema.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(config_app, name="config")
app.command("run")(run_command)
app.add_typer(runs_app, name="runs")
app.add_typer(review_app, name="review")
app.command("train")(train_command)
app.command("eval")(eval_command)
app.command("export")(export_command)

RootOption = Annotated[
    Optional[Path],
    typer.Option("--root", help="Dataset store root [default: $STILLHOUSE_DATASETS or ./datasets_out]."),
]


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"stillhouse {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Grow, curate, version and distill task-specific datasets from a teacher model."""


# -- datasets -----------------------------------------------------------------
@datasets_app.command("list")
def datasets_list(root: RootOption = None) -> None:
    """List datasets and their versions."""
    store = DatasetStore(root)
    names = store.names()
    if not names:
        console.print(f"no datasets in {store.root}")
        return
    table = Table("dataset", "versions", "latest", "kept", "rejected", "created")
    for name in names:
        latest = store.resolve(f"{name}@latest", verify=False)
        versions = store.versions(name)
        rows = latest.manifest["rows"]
        table.add_row(
            name,
            str(len(versions)),
            latest.ref,
            str(rows["kept"]),
            str(rows["rejected"]),
            latest.manifest.get("created_at", ""),
        )
    console.print(table)


@datasets_app.command("show")
def datasets_show(
    ref: Annotated[str, typer.Argument(help="name, name@latest or name@vN")],
    root: RootOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Show a version's manifest: lineage, row counts, funnel, label set, files."""
    version = DatasetStore(root).resolve(ref)
    manifest = version.manifest
    if as_json:
        print(json.dumps(manifest, indent=2))
        return
    rows = manifest["rows"]
    console.print(f"[bold]{version.ref}[/]  ({version.path})")
    console.print(f"parent: {manifest.get('parent') or 'none'}   created: {manifest.get('created_at', '?')}")
    console.print(f"rows: {rows['kept']} kept, {rows['rejected']} rejected, {rows['total']} total")
    if manifest.get("label_set"):
        console.print(f"labels ({len(manifest['label_set'])}): {', '.join(manifest['label_set'])}")
    funnel = Table("stage", "rows in", "dropped", "rows out", title="funnel")
    for row in funnel_table_rows(manifest["funnel"]):
        funnel.add_row(*row)
    console.print(funnel)
    files = Table("file", "bytes", "sha256")
    for name, meta in manifest["files"].items():
        files.add_row(name, str(meta.get("bytes", "?")), meta["sha256"][:16] + "...")
    console.print(files)


@datasets_app.command("verify")
def datasets_verify(
    ref: Annotated[str, typer.Argument(help="name, name@latest or name@vN")],
    root: RootOption = None,
) -> None:
    """Check every file of a version against the sha256 in its manifest."""
    version = DatasetStore(root).resolve(ref, verify=False)
    version.verify()
    console.print(f"{version.ref}: OK ({len(version.manifest['files'])} files match their manifest)")


@datasets_app.command("diff")
def datasets_diff(
    old: Annotated[str, typer.Argument(help="The older version (name@vN).")],
    new: Annotated[str, typer.Argument(help="The newer version (name@vN).")],
    root: RootOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full diff (all ids) as JSON.")] = False,
) -> None:
    """Rows added, removed and changed between two versions, and funnel deltas."""
    from curation.version_diff import diff_versions

    store = DatasetStore(root)
    diff = diff_versions(store.resolve(old), store.resolve(new))
    if as_json:
        print(json.dumps(diff.as_dict(), indent=2))
        return
    console.print(f"[bold]{diff.old} -> {diff.new}[/]")
    summary = Table("kept rows", "count", "examples")
    for label, ids in (
        ("added", diff.added),
        ("removed", diff.removed),
        ("changed", diff.changed),
        ("moved to rejected", diff.newly_rejected),
        ("restored from rejected", diff.restored),
    ):
        summary.add_row(label, str(len(ids)), ", ".join(ids[:3]) + (" ..." if len(ids) > 3 else ""))
    console.print(summary)
    if diff.funnel_deltas:
        deltas = Table("stage", "reason", "old", "new", "delta", title="funnel deltas")
        for d in diff.funnel_deltas:
            deltas.add_row(d["stage"], d["reason"], str(d["old"]), str(d["new"]), f"{d['new'] - d['old']:+d}")
        console.print(deltas)
    else:
        console.print("funnel: no change")


@datasets_app.command("report")
def datasets_report(
    ref: Annotated[str, typer.Argument(help="name, name@latest or name@vN")],
    root: RootOption = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="HTML file [default: <root>/<name>/reports/v<N>.html].")
    ] = None,
    evaluation: Annotated[
        Optional[Path], typer.Option("--evaluation", help="A student evaluation.json to include.")
    ] = None,
) -> None:
    """Write the HTML report of a version: funnel, distributions, duplicates, drops, review, evaluation."""
    from curation.review import review_report
    from stillhouse.report import report_path, write_report

    version = DatasetStore(root).resolve(ref)
    results = json.loads(evaluation.read_text(encoding="utf-8")) if evaluation else None
    path = write_report(version, out or report_path(version), evaluation=results, review=review_report(version))
    console.print(f"{version.ref}: report written to {path}")


# -- config -------------------------------------------------------------------
@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of a run config (for editor validation)."""
    from stillhouse.config import RunConfig

    print(json.dumps(RunConfig.model_json_schema(), indent=2))


@config_app.command("validate")
def config_validate(path: Annotated[Path, typer.Argument(help="A run config YAML file.")]) -> None:
    """Check a run config without running anything."""
    from stillhouse.config import load_run_config

    config = load_run_config(path)
    console.print(f"{path}: OK (run '{config.name}')")


def main() -> None:
    """Console-script entry point."""
    # Hugging Face's per-load tqdm bars ("Loading weights") interleave with ours; ours
    # carry the totals that matter. Set before transformers is imported.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app()
    except StillhouseError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
