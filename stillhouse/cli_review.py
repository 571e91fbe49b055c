"""`stillhouse review push|status|pull REF`: the human review loop in Argilla."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from curation.store import DatasetStore
from factory.errors import ConfigError

console = Console()
review_app = typer.Typer(
    help="Send a sample of a version to annotators in Argilla and apply their verdicts.", no_args_is_help=True
)

RefArgument = Annotated[str, typer.Argument(help="The reviewed version: name, name@latest or name@vN.")]
RootOption = Annotated[
    Optional[Path],
    typer.Option(
        "--root",
        help="Dataset store root "
        "[default: $STILLHOUSE_DATASETS, else $STILLHOUSE_HOME/datasets_out, else ./datasets_out].",
    ),
]
ApiUrlOption = Annotated[
    Optional[str], typer.Option("--api-url", help="Argilla URL [default: $ARGILLA_API_URL or http://localhost:6900].")
]
ApiKeyEnvOption = Annotated[
    Optional[str], typer.Option("--api-key-env", help="Variable holding the API key [default: ARGILLA_API_KEY].")
]
WorkspaceOption = Annotated[Optional[str], typer.Option("--workspace", help="Argilla workspace [default: stillhouse].")]
DatasetOption = Annotated[
    Optional[str], typer.Option("--dataset-name", help="Argilla dataset name [default: <name>-v<N>].")
]


def _config(pushed: dict[str, Any] | None = None, **given: Any):
    """A ReviewConfig from the options given; the others come from the push of this version
    (`pushed`: its state file's config, so status/pull find the same server, workspace and
    dataset), else from the defaults."""
    from curation.review import ReviewConfig

    settings = dict((pushed or {}).get("config", {}))
    settings.update({key: value for key, value in given.items() if value is not None})
    try:
        return ReviewConfig(**settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "review"
        raise ConfigError(f"review option '{field}': {first['msg']}") from None


@review_app.command("push")
def review_push(
    ref: RefArgument,
    root: RootOption = None,
    api_url: ApiUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    workspace: WorkspaceOption = None,
    dataset_name: DatasetOption = None,
    fraction: Annotated[Optional[float], typer.Option(help="Share of kept rows to review (0.05-0.10).")] = None,
    min_rows: Annotated[Optional[int], typer.Option(help="Review at least this many rows.")] = None,
    max_rows: Annotated[Optional[int], typer.Option(help="Review at most this many rows.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed.")] = None,
) -> None:
    """Create (or reuse) the Argilla dataset of REF and push its stratified sample."""
    from curation.review import push

    config = _config(
        api_url=api_url,
        api_key_env=api_key_env,
        workspace=workspace,
        dataset_name=dataset_name,
        fraction=fraction,
        min_rows=min_rows,
        max_rows=max_rows,
        seed=seed,
    )
    version = DatasetStore(root).resolve(ref)
    result = push(version, config, console=console)
    table = Table("Argilla dataset", "workspace", "kept rows", "sample", "already there", "pushed now")
    table.add_row(
        result.argilla_dataset,
        result.workspace,
        str(result.kept_rows),
        str(result.sample_rows),
        str(result.already_there),
        str(result.logged),
    )
    console.print(table)
    reasons = Table("sampled because", "rows")
    for reason, count in result.sample_reasons.items():
        reasons.add_row(reason, str(count))
    console.print(reasons)
    console.print(f"annotate at {result.dataset_url}")
    console.print(f"then: stillhouse review status {version.ref}; stillhouse review pull {version.ref}")


@review_app.command("status")
def review_status(
    ref: RefArgument,
    root: RootOption = None,
    api_url: ApiUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    workspace: WorkspaceOption = None,
    dataset_name: DatasetOption = None,
) -> None:
    """Review progress of REF: records reviewed / total, per annotator."""
    from curation.review import read_state, status

    version = DatasetStore(root).resolve(ref)
    config = _config(
        read_state(version), api_url=api_url, api_key_env=api_key_env, workspace=workspace, dataset_name=dataset_name
    )
    progress = status(version, config)
    console.print(
        f"[bold]{progress['argilla_dataset']}[/] ({progress['workspace']} on {progress['api_url']}): "
        f"{progress['completed']} of {progress['total']} records reviewed, {progress['pending']} pending"
        + ("" if progress["push_complete"] in (None, True) else "  [yellow](push incomplete: run push again)[/]")
    )
    if not progress["users"]:
        console.print("no responses yet")
        return
    table = Table("annotator", "submitted", "draft", "discarded", title="per annotator")
    for name, counts in sorted(progress["users"].items()):
        table.add_row(name, str(counts["submitted"]), str(counts["draft"]), str(counts["discarded"]))
    console.print(table)


@review_app.command("pull")
def review_pull(
    ref: RefArgument,
    root: RootOption = None,
    api_url: ApiUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    workspace: WorkspaceOption = None,
    dataset_name: DatasetOption = None,
    judge_threshold: Annotated[
        Optional[float], typer.Option(help="judge_score at/above which the judge accepts [default: mid-range].")
    ] = None,
) -> None:
    """Apply the submitted verdicts on REF and publish the reviewed version."""
    from curation.review import pull, read_state, review_report

    store = DatasetStore(root)
    version = store.resolve(ref)
    config = _config(
        read_state(version),
        api_url=api_url,
        api_key_env=api_key_env,
        workspace=workspace,
        dataset_name=dataset_name,
        judge_threshold=judge_threshold,
    )
    child = pull(version, config, store, console=console)
    print_review_report(review_report(child) or {})
    console.print(f"published {child.ref} (parent {child.manifest['parent']}) at {child.path}")


def print_review_report(report: dict[str, Any]) -> None:
    """The review report as rich tables: totals, rejection rates, judge agreement."""
    totals = report["totals"]
    table = Table("sampled", "reviewed", "accepted", "corrected", "rejected", "pending", "rejection rate")
    rate = totals["rejection_rate"]
    table.add_row(
        *(str(totals[k]) for k in ("sampled", "reviewed", "accepted", "corrected", "rejected", "pending")),
        "-" if rate is None else f"{rate:.1%}",
    )
    console.print(table)
    groups = [("origin", report["by_origin"])] + list(report["by_bucket"].items())
    for title, rows in groups:
        breakdown = Table(title, "reviewed", "rejected", "corrected", "rejection rate", title=f"by {title}")
        for row in rows:
            breakdown.add_row(
                str(row["group"]),
                str(row["reviewed"]),
                str(row["rejected"]),
                str(row["corrected"]),
                f"{row['rejection_rate']:.1%}",
            )
        console.print(breakdown)
    agreement = report.get("judge_agreement")
    if agreement:
        judge = Table(
            "judge threshold",
            "records",
            "agreement",
            "judge accepts, human rejects",
            "judge rejects, human accepts",
            "rating~judge rho",
            title="annotators vs judge",
        )
        rho = agreement["rating_judge_spearman"]
        judge.add_row(
            f"{agreement['threshold']:g}",
            str(agreement["records"]),
            "-" if agreement["agreement_rate"] is None else f"{agreement['agreement_rate']:.1%}",
            str(agreement["judge_accepts_human_rejects"]),
            str(agreement["judge_rejects_human_accepts"]),
            "-" if rho is None else f"{rho:+.2f}",
        )
        console.print(judge)
    inter = report.get("inter_annotator") or {}
    if inter.get("records"):
        console.print(f"records with several annotators: {inter['records']}, unanimous {inter['unanimous_rate']:.1%}")
