"""`stillhouse run CONFIG` and `stillhouse runs list | show RUN`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from stillhouse import logs
from stillhouse.runlock import live_status, run_lock
from stillhouse.runs import RunState, list_runs

console = Console()
runs_app = typer.Typer(help="State and progress of runs.", no_args_is_help=True)


def run_command(
    config: Annotated[Path, typer.Argument(help="A run config YAML file (see configs/).")],
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Validate, count seeds and estimate requests, tokens and cost; send nothing."),
    ] = False,
) -> None:
    """Run a config end to end: seeds -> tasks -> curation -> publish -> review -> train -> eval -> report.

    Resumable: killed at any point, the same command picks up where it stopped and
    re-issues no teacher request already answered.
    """
    from stillhouse.config import load_run_config

    run_config = load_run_config(config)
    if dry_run:
        from stillhouse.estimate import estimate_run, estimate_table

        console.print(estimate_table(estimate_run(run_config)))
        return
    from stillhouse.estimate import estimate_run, estimate_vs_actual_table
    from stillhouse.run import Runner, evaluation_table, summary_table

    estimate = None
    if run_config.teacher is not None:
        from factory.errors import StillhouseError

        try:
            estimate = estimate_run(run_config)
        except StillhouseError:
            raise  # bad input: the run would stop on it too, with the same one line
        except Exception as error:  # noqa: BLE001 - the estimate is a courtesy, never a reason not to run
            console.print(f"estimate unavailable ({type(error).__name__}: {str(error)[:160]}); running anyway")
    directory = run_config.run_dir / run_config.name
    with run_lock(directory), logs.run_log(directory):
        result = Runner(run_config, config, Console(quiet=logs.quiet)).execute()
    if result.evaluation:
        console.print(evaluation_table(result.evaluation))
    console.print(summary_table(result))
    if estimate is not None:
        console.print(estimate_vs_actual_table(estimate, result.state.teacher))


RunsRoot = Annotated[Path, typer.Option("--runs", help="Directory holding run states.")]


@runs_app.command("list")
def runs_list(runs: RunsRoot = Path("runs")) -> None:
    """Every run with its status and progress."""
    states = list_runs(runs)
    if not states:
        console.print(f"no runs in {runs}")
        return
    table = Table("run", "status", "steps done", "attempts", "dataset", "updated")
    for state in states:
        done = sum(1 for s in state.steps.values() if s.get("status") == "done")
        version = state.steps.get("publish", {}).get("ref", "-")
        status = live_status(state.directory, state.status)
        table.add_row(state.name, status, f"{done}/{len(state.steps)}", str(state.attempts), version, state.updated_at)
    console.print(table)


@runs_app.command("show")
def runs_show(run: Annotated[str, typer.Argument(help="Run name.")], runs: RunsRoot = Path("runs")) -> None:
    """Steps of one run: status, rows, teacher requests, timing."""
    state = RunState.load(runs / run)
    status = live_status(state.directory, state.status)
    console.print(f"[bold]{state.name}[/]: {status} (attempts {state.attempts}, updated {state.updated_at})")
    table = Table("step", "status", "rows", "teacher requests", "result", "finished")
    for name, step in state.steps.items():
        teacher = step.get("teacher") or {}
        result = step.get("error") or step.get("ref") or step.get("model_dir") or step.get("out_dir") or ""
        table.add_row(
            name,
            step.get("status", "?"),
            str(step.get("rows", "")),
            str(teacher.get("requests_sent", "")) if teacher else "",
            str(result),
            step.get("finished_at", ""),
        )
    console.print(table)
    if state.teacher:
        totals = ", ".join(f"{key} {value}" for key, value in state.teacher.items())
        console.print(f"teacher totals: {totals}")
