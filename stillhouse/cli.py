"""The `stillhouse` command line.

Every command turns a `StillhouseError` into one line on stderr and exit code 1.
Sub-command groups live in their own modules and are registered here.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from curation.funnel import funnel_table_rows
from curation.store import DatasetStore
from factory.errors import StillhouseError
from stillhouse import __version__, logs
from stillhouse.cli_review import review_app
from stillhouse.cli_run import run_command, runs_app
from stillhouse.cli_train import eval_command, export_command, train_command
from stillhouse.errors import os_fault_message

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="stillhouse",
    help="Grow, curate, version and distill task-specific datasets from a teacher model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts say "[default: ...]": rich markup would swallow it as a tag
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
    Optional[str],  # a str, not a Path: pathlib folds `s3://bucket` into `s3:/bucket`
    typer.Option(
        "--root",
        help="Dataset store root, a directory or s3://bucket/prefix "
        "[default: $STILLHOUSE_DATASETS, else $STILLHOUSE_HOME/datasets_out, else ./datasets_out].",
    ),
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
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="Log steps, requests and retries to stderr (-vv: debug).")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and each command's result.")] = False,
) -> None:
    """Grow, curate, version and distill task-specific datasets from a teacher model."""
    logs.configure(verbose, quiet)


VERBOSITY_FLAGS = ("-v", "-vv", "-vvv", "--verbose", "-q", "--quiet")


def _verbosity_first(args: list[str]) -> list[str]:
    """-v/-q are accepted anywhere (`stillhouse run x.yaml -v`): move them before the command."""
    if "--" in args:
        return args
    flags = [arg for arg in args if arg in VERBOSITY_FLAGS]
    return flags + [arg for arg in args if arg not in VERBOSITY_FLAGS]


# -- datasets -----------------------------------------------------------------
@datasets_app.command("list")
def datasets_list(root: RootOption = None) -> None:
    """List datasets and their versions."""
    store = DatasetStore(root)
    entries = store.listing()
    if not entries:
        console.print(f"no datasets in {store.root}")
        return
    table = Table("dataset", "versions", "latest", "kept", "rejected", "created")
    for entry in entries:
        if entry.latest is None:  # one broken manifest never hides the other datasets
            table.add_row(entry.name, str(len(entry.versions)), f"BROKEN: {entry.error}", "-", "-", "-")
            continue
        rows = entry.latest.manifest["rows"]
        table.add_row(
            entry.name,
            str(len(entry.versions)),
            entry.latest.ref,
            str(rows["kept"]),
            str(rows["rejected"]),
            entry.latest.manifest.get("created_at", ""),
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
    with err_console.status(f"{version.ref}: hashing {len(version.manifest['files'])} files"):
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


ROW_COLUMNS = ("id", "origin", "instruction", "input", "response", "label")


@datasets_app.command("rows")
def datasets_rows(
    ref: Annotated[str, typer.Argument(help="name, name@latest or name@vN")],
    root: RootOption = None,
    rejected: Annotated[bool, typer.Option("--rejected", help="Browse the rejected rows instead of the kept.")] = False,
    where: Annotated[
        Optional[str],
        typer.Option(
            "--where",
            help="SQL filter, e.g. \"drop_reason = 'empty'\" or \"mean_entropy > 1.5 AND origin LIKE 'evol%'\".",
        ),
    ] = None,
    columns: Annotated[
        Optional[str],
        typer.Option(
            "--columns",
            help="Comma-separated columns [default: id, origin, instruction, input, response, label; "
            "with --rejected also drop_stage, drop_reason].",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="Rows to show; 0: all.")] = 20,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the rows as JSON (full values, one object each).")
    ] = False,
) -> None:
    """Print rows of a version as a table: kept or rejected, filtered and projected."""
    from stillhouse.rows import select_rows

    version = DatasetStore(root).resolve(ref)
    path = version.rejected_path if rejected else version.data_path
    wanted = [name.strip() for name in columns.split(",") if name.strip()] if columns else None
    defaults = (*ROW_COLUMNS, "drop_stage", "drop_reason") if rejected else ROW_COLUMNS
    frame, total = select_rows(path, where=where, columns=wanted, default_columns=defaults, limit=limit)
    if as_json:
        print(json.dumps(frame.to_dicts(), indent=2, ensure_ascii=False, default=str))
        return
    table = Table(*frame.columns, title=f"{version.ref} {'rejected' if rejected else 'kept'} rows", show_lines=True)
    for row in frame.iter_rows():
        table.add_row(*(_cell(value) for value in row))
    console.print(table)
    console.print(f"{frame.height} of {total} matching rows shown", highlight=False)


def _cell(value: object, width: int = 160) -> str:
    """One table cell: nested values as compact JSON, long text cut (use --json for all of it)."""
    text = "" if value is None else value if isinstance(value, str) else json.dumps(value, default=str)
    return escape(text if len(text) <= width else text[: width - 1] + "…")


@datasets_app.command("report")
def datasets_report(
    ref: Annotated[str, typer.Argument(help="name, name@latest or name@vN")],
    root: RootOption = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="HTML file [default: <root>/<name>/reports/v<N>.html].")
    ] = None,
    evaluation: Annotated[
        Optional[Path],
        typer.Option(
            "--evaluation", help="A student evaluation.json to include [default: the one last reported for REF]."
        ),
    ] = None,
) -> None:
    """Write the HTML report of a version: funnel, distributions, duplicates, drops, review, evaluation."""
    from curation.review import review_report
    from stillhouse.report import report_path, saved_evaluation, write_report

    version = DatasetStore(root).resolve(ref)
    results = json.loads(evaluation.read_text(encoding="utf-8")) if evaluation else saved_evaluation(version)
    with err_console.status(f"{version.ref}: writing the report ({version.manifest['rows']['total']:,} rows)"):
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


INTERRUPTED = "interrupted; run the same command to resume"


def _interrupted(exc: BaseException) -> bool:
    """Whether an exit came from Ctrl-C (typer turns KeyboardInterrupt into a silent exit 130)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise SystemExit(1) from None


def main() -> None:
    """Console-script entry point: bad input and machine faults become one line and exit 1."""
    # Hugging Face's per-load tqdm bars ("Loading weights") interleave with ours; ours
    # carry the totals that matter. Set before transformers is imported.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app(args=_verbosity_first(sys.argv[1:]))
    except StillhouseError as exc:
        _fail(escape(str(exc)))
    except OSError as exc:
        message = os_fault_message(exc)
        if message is None:
            raise
        _fail(escape(message))
    except SystemExit as exc:
        if exc.code == 130 and _interrupted(exc):
            err_console.print(f"[bold red]{INTERRUPTED}[/]", highlight=False)
        raise
    except KeyboardInterrupt:
        err_console.print(f"[bold red]{INTERRUPTED}[/]", highlight=False)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
