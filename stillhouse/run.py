"""`stillhouse run CONFIG`: seeds -> tasks -> curation -> publish -> review -> train -> eval -> report.

Each step writes its output to runs/<name>/steps/<step>/ and is recorded in the run
state with a fingerprint of its config and input; a re-run skips finished steps and
repeats unfinished ones, where the teacher's persistent response cache answers every
request already answered. Killed at any point, the same command resumes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.table import Table

from curation.funnel import funnel_from_frame
from curation.store import DatasetStore, DatasetVersion
from factory.errors import StillhouseError
from factory.schema import conform
from stillhouse.config import RunConfig, load_run_config
from stillhouse.runs import RunState, fingerprint, write_frame_atomic
from stillhouse.seeds import load_seeds

OUTPUT = "output.parquet"
REJECTED = "rejected.parquet"


def crash_point(name: str) -> None:
    """Fault injection for the resume tests: SIGKILL this process at a named point.

    `STILLHOUSE_CRASH_AT=<name>` (e.g. `after:publish`) makes the run die exactly
    there, as a power cut would; unset (always, outside tests) it does nothing.
    """
    if os.environ.get("STILLHOUSE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class RunResult:
    state: RunState
    version: DatasetVersion | None = None
    model_dir: Path | None = None
    evaluation: dict[str, Any] | None = None
    report: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _split(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    if "drop_stage" not in frame.columns:
        return frame, frame.clear()
    dropped = pl.col("drop_stage").is_not_null()
    return frame.filter(~dropped), frame.filter(dropped)


class Runner:
    def __init__(self, config: RunConfig, config_path: Path, console: Console | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.console = console or Console()
        self.state = RunState.open(config.run_dir / config.name, config.name)
        self.store = DatasetStore(config.publish.root)

    # -- helpers ----------------------------------------------------------------
    def _log(self, message: str) -> None:
        self.console.print(message, highlight=False)

    def _build_teacher(self):
        from factory.teachers import build_teacher

        return build_teacher(self.config.teacher, cache_dir=self.cache_dir)

    @property
    def cache_dir(self) -> Path:
        return self.state.directory / "cache"

    def _close(self, teacher) -> dict[str, Any]:
        """Close a step's teacher and add its counters to the run's totals."""
        asyncio.run(teacher.close())
        stats = teacher.stats.as_dict()
        self.state.add_teacher_stats(stats)
        return stats

    # -- steps ------------------------------------------------------------------
    def seeds(self) -> tuple[pl.DataFrame, str]:
        seeds = self.config.seeds
        records, merged = load_seeds(
            seeds.path,
            format=seeds.format,
            columns=seeds.columns.model_dump(),
            instruction=seeds.instruction,
            limit=seeds.limit,
        )
        if merged:
            self._log(f"seeds: merged {merged} exact duplicate seeds into one each")
        self._log(f"seeds: {records.height} records from {seeds.path}")
        return records, fingerprint("seeds", records["id"].to_list())

    def teacher_training(self) -> None:
        """Build a classifier teacher from labelled examples when the config asks for it."""
        spec = self.config.teacher_training
        if spec is None:
            return
        output = self.config.teacher.model
        step, step_fp = "teacher_training", fingerprint(spec.model_dump(mode="json"))
        if self.state.done(step, step_fp) and Path(output).exists():
            self._log(f"teacher: reusing {output}")
            return
        from factory.teachers.classifier import train_encoder_head

        self.state.start(step, step_fp)
        examples, merged = load_seeds(spec.data, columns={"instruction": spec.text_column, "label": spec.label_column})
        repeats = f" ({merged} repeated examples merged)" if merged else ""
        self._log(f"teacher: fitting a classifier head on {examples.height} labelled examples{repeats} -> {output}")
        train_encoder_head(
            examples["instruction"].to_list(),
            examples["label"].to_list(),
            Path(output),
            epochs=spec.epochs,
            seed=spec.seed,
            finetune=spec.finetune,
        )
        self.state.finish(step, examples=examples.height, output=str(output))

    def task(self, index: int, task_config: Any, records: pl.DataFrame, input_fp: str):
        """Run one generation task; returns (kept, rejected, fingerprint)."""
        from factory.shards import ShardWriter
        from factory.tasks import build_task

        step = f"task-{index}-{task_config.type}"
        step_fp = fingerprint(task_config.model_dump(mode="json"), self.config.teacher_fingerprint(), input_fp)
        directory = self.state.step_dir(step)
        if self.state.done(step, step_fp):
            output = pl.read_parquet(directory / OUTPUT)
            self._log(f"{step}: done earlier ({output.height} rows)")
        else:
            self.state.start(step, step_fp)
            task = build_task(task_config)

            async def run_task():
                teacher = self._build_teacher()
                try:
                    return await task.run(records, teacher, ShardWriter(directory / "shards"))
                finally:
                    await teacher.close()
                    self.state.add_teacher_stats(teacher.stats.as_dict())
                    step_stats.update(teacher.stats.as_dict())

            step_stats: dict[str, Any] = {}
            output = asyncio.run(run_task())
            crash_point(f"before-save:{step}")
            write_frame_atomic(output, directory / OUTPUT)
            self.state.finish(step, rows=output.height, teacher=step_stats)
            crash_point(f"after:{step}")
        # Generative tasks return only the records they add (new ids), enriching tasks the
        # records they were given (same ids): the union carries both to the next step.
        untouched = records.filter(~pl.col("id").is_in(output["id"].implode()))
        kept, rejected = _split(pl.concat([untouched, output], how="diagonal_relaxed"))
        return kept, rejected, step_fp

    def curation(self, frame: pl.DataFrame, input_fp: str, first_stages: list[str]):
        from curation.config import build_stage
        from curation.pipeline import run_stages

        step = "curation"
        configs = self.config.curation
        step_fp = fingerprint([c.model_dump(mode="json") for c in configs], input_fp)
        directory = self.state.step_dir(step)
        if self.state.done(step, step_fp):
            curated = pl.read_parquet(directory / OUTPUT)
            self._log(f"curation: done earlier ({curated.height} rows)")
        else:
            self.state.start(step, step_fp)
            needs_teacher = any(c.stage == "judge" for c in configs)
            teacher = self._build_teacher() if needs_teacher else None
            try:
                stages = [build_stage(c, teacher=teacher) for c in configs]
                curated, _ = run_stages(frame, stages, console=self.console)
            finally:
                stats = self._close(teacher) if teacher is not None else {}
            write_frame_atomic(curated, directory / OUTPUT)
            self.state.finish(step, rows=curated.height, teacher=stats)
            crash_point("after:curation")
        stage_names = first_stages + [c.name or c.stage for c in configs]
        return curated, funnel_from_frame(curated, stage_names), step_fp

    def publish(self, frame: pl.DataFrame, funnel: list[dict], input_fp: str) -> DatasetVersion:
        step = "publish"
        publish = self.config.publish
        step_fp = fingerprint(publish.model_dump(mode="json"), input_fp)
        entry = self.state.done(step, step_fp)
        if entry:
            version = self.store.resolve(entry["ref"])
            self._log(f"publish: done earlier ({version.ref})")
            return version
        # A run killed between the rename and the state update already published:
        # find that version by the run fingerprint in its manifest instead of repeating it.
        for number in reversed(self.store.versions(publish.name) if self.store.root.is_dir() else []):
            candidate = self.store.resolve(f"{publish.name}@v{number}")
            if candidate.manifest.get("config", {}).get("run", {}).get("fingerprint") == step_fp:
                self.state.start(step, step_fp)
                self.state.finish(step, ref=candidate.ref)
                self._log(f"publish: found {candidate.ref} from the interrupted attempt")
                return candidate
        self.state.start(step, step_fp)
        parent = self.store.resolve(f"{publish.name}@latest", verify=False).ref if self._has_versions() else None
        version = self.store.publish(
            publish.name,
            conform(frame),
            parent=parent,
            config={
                "run": {"name": self.config.name, "fingerprint": step_fp},
                **self.config.model_dump(mode="json"),
            },
            funnel=funnel,
            label_set=self._label_set(),
            description=publish.description,
        )
        crash_point("before-save:publish")
        self.state.finish(step, ref=version.ref)
        self._log(f"publish: {version.ref} ({version.manifest['rows']['kept']} kept) -> {version.path}")
        return version

    def _has_versions(self) -> bool:
        return self.store.root.is_dir() and bool(self.store.versions(self.config.publish.name))

    def _label_set(self) -> list[str] | None:
        for task_config in self.config.tasks:
            labels = getattr(task_config, "labels", None)
            if labels:
                return list(labels)
        return None

    def review(self, version: DatasetVersion) -> None:
        if self.config.review is None:
            return
        from curation.review import push

        step, step_fp = "review_push", fingerprint(version.ref, self.config.review.model_dump(mode="json"))
        if self.state.done(step, step_fp):
            return
        self.state.start(step, step_fp)
        pushed = push(version, self.config.review, console=self.console)
        self.state.finish(step, pushed=pushed.model_dump(mode="json"))
        self._log(f"review: pushed a sample of {version.ref}; annotate it, then `stillhouse review pull {version.ref}`")

    def train(self, version: DatasetVersion) -> Path | None:
        if self.config.train is None:
            return None
        from trainer.config import TrainConfig
        from trainer.training import train

        settings = self.config.train.model_dump()
        settings.update(dataset=version.ref, store_root=self.config.publish.root)
        settings["output_dir"] = settings["output_dir"] or self.student_dir
        train_config = TrainConfig.model_validate(settings)
        step, step_fp = "train", fingerprint(train_config.model_dump(mode="json"))
        entry = self.state.done(step, step_fp)
        if entry and Path(entry["model_dir"]).exists():
            self._log(f"train: done earlier ({entry['model_dir']})")
            return Path(entry["model_dir"])
        self.state.start(step, step_fp)
        result = train(train_config)
        self.state.finish(step, model_dir=str(result.model_dir))
        crash_point("after:train")
        return Path(result.model_dir)

    @property
    def student_dir(self) -> Path:
        return self.state.directory / "student"

    def evaluate(self, model_dir: Path) -> dict[str, Any] | None:
        spec = self.config.eval
        if spec is None:
            return None
        from trainer.evaluation import evaluate

        teacher = self.config.teacher
        teacher_dir = Path(teacher.model) if teacher.backend == "classifier" else None
        step = "eval"
        step_fp = fingerprint(spec.model_dump(mode="json"), self.state.steps.get("train", {}).get("fingerprint"))
        self.state.start(step, step_fp)
        evaluation = evaluate(
            model_dir,
            spec.test,
            teacher_dir=teacher_dir,
            hourly_usd=spec.hourly_usd,
            out_dir=self.state.directory / "eval",
        )
        self.state.finish(step, out_dir=str(self.state.directory / "eval"))
        return evaluation

    def report(self, version: DatasetVersion, evaluation: dict[str, Any] | None) -> Path:
        import shutil

        from curation.review import review_report
        from stillhouse.report import report_path, write_report

        report = write_report(
            version, self.state.directory / "report.html", evaluation=evaluation, review=review_report(version)
        )
        beside_version = report_path(version)  # the version directory itself is read-only
        beside_version.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report, beside_version)
        return beside_version

    # -- the whole run ----------------------------------------------------------
    def execute(self) -> RunResult:
        state = self.state
        state.attempts += 1
        state.status = "running"
        state.save()
        result = RunResult(state=state)
        started = time.perf_counter()
        try:
            records, records_fp = self.seeds()
            crash_point("after:seeds")
            self.teacher_training()
            rejected_parts: list[pl.DataFrame] = []
            task_stage_names: list[str] = []
            for index, task_config in enumerate(self.config.tasks):
                records, rejected, records_fp = self.task(index, task_config, records, records_fp)
                task_stage_names.append(task_config.type)
                if rejected.height:
                    rejected_parts.append(rejected)
                    self._log(f"task {task_config.type}: {rejected.height} rows dropped (kept for the audit)")
            frame = pl.concat([records, *rejected_parts], how="diagonal_relaxed")
            curated, funnel, curated_fp = self.curation(frame, records_fp, task_stage_names)
            result.version = self.publish(curated, funnel, curated_fp)
            crash_point("after:publish")
            self.review(result.version)
            result.model_dir = self.train(result.version)
            if result.model_dir is not None:
                result.evaluation = self.evaluate(result.model_dir)
            result.report = self.report(result.version, result.evaluation)
        except BaseException:
            state.status = "failed"
            state.save()
            raise
        state.status = "finished"
        state.steps["summary"] = {
            "status": "done",
            "version": result.version.ref if result.version else None,
            "seconds": round(time.perf_counter() - started, 1),
        }
        state.save()
        return result


def summary_table(result: RunResult) -> Table:
    table = Table("what", "where", title=f"run {result.state.name}: finished")
    table.add_row("run state", str(result.state.directory / "state.json"))
    if result.version is not None:
        rows = result.version.manifest["rows"]
        table.add_row("dataset", f"{result.version.ref}  ({rows['kept']} kept, {rows['rejected']} rejected)")
        table.add_row("dataset files", str(result.version.path))
    if result.model_dir is not None:
        table.add_row("student", str(result.model_dir))
    if result.report is not None:
        table.add_row("report", str(result.report))
    teacher = result.state.teacher
    if teacher:
        table.add_row(
            "teacher",
            f"{teacher.get('requests_sent', 0)} requests sent, {teacher.get('cache_hits', 0)} answered from cache",
        )
    return table


def evaluation_table(evaluation: dict[str, Any]) -> Table:
    """The student-vs-teacher table printed at the end of a run with evaluation."""
    table = Table(
        "metric", "student", "teacher", "student / teacher", title="student vs teacher (human-labelled test set)"
    )
    student, teacher = evaluation.get("student", {}), evaluation.get("teacher") or {}
    rows = [
        ("macro-F1", ("macro_f1",)),
        ("accuracy", ("accuracy",)),
        ("expected calibration error", ("ece",)),
        ("latency p50 (ms)", ("latency_ms", "p50")),
        ("latency p95 (ms)", ("latency_ms", "p95")),
        ("parameters", ("parameters",)),
        ("USD per million predictions", ("usd_per_million",)),
    ]
    for label, path in rows:
        s, t = _dig(student, path), _dig(teacher, path)
        if s is None:
            continue
        ratio = f"{s / t:.3f}" if isinstance(t, (int, float)) and t else "-"
        table.add_row(label, _fmt(s), _fmt(t), ratio)
    agreement = _dig(evaluation, ("ratios", "agreement"))
    if agreement is not None:
        table.add_row("agreement with the teacher", _fmt(agreement), "", "")
    return table


def _dig(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def run_config_file(path: Path, console: Console | None = None) -> RunResult:
    config = load_run_config(path)
    return Runner(config, Path(path), console).execute()


__all__ = ["Runner", "RunResult", "run_config_file", "StillhouseError"]
