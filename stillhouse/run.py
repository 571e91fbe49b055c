"""`stillhouse run CONFIG`: seeds -> tasks -> curation -> publish -> review -> train -> eval -> report.

Each step writes its output to runs/<name>/steps/<step>/ and is recorded in the run
state with a fingerprint of its config and input; a re-run skips finished steps and
repeats unfinished ones, where the teacher's persistent response cache answers every
request already answered. Killed at any point, the same command resumes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
from rich.console import Console
from rich.table import Table

from curation.funnel import funnel_from_frame
from curation.store import DatasetStore, DatasetVersion
from factory.aio import EventLoop
from factory.atomic import write_frame_atomic, write_text_atomic
from factory.errors import StillhouseError
from factory.schema import conform
from stillhouse.config import RunConfig, load_run_config, manifest_config
from stillhouse.runs import RunState, fingerprint
from stillhouse.seeds import load_seeds

OUTPUT = "output.parquet"
log = logging.getLogger(__name__)
EVALUATION = "evaluation.json"
T = TypeVar("T")


class TeacherFailedError(StillhouseError):
    """A step's teacher answered none of its requests."""


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
    reused: list[str] = field(default_factory=list)
    teacher_this_run: dict[str, Any] = field(default_factory=dict)


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
        # One event loop and one teacher for the whole run: the teacher's connections open
        # and close on the same loop, whichever step (task, judge) uses them.
        self.loop = EventLoop()
        self._teacher = None
        self._executor = None
        self.reused: list[str] = []  # steps this attempt took from earlier work
        self._teacher_described = False
        self.teacher_this_run: dict[str, Any] = {}

    # -- helpers ----------------------------------------------------------------
    def _log(self, message: str) -> None:
        self.console.print(message, highlight=False)
        log.info(message)

    @property
    def executor(self):
        """Where the steps' work runs (`executor:` in the config); connects on first use."""
        if self._executor is None:
            from stillhouse.executors import build_executor

            self._executor = build_executor(self.config.executor)
        return self._executor

    @property
    def teacher(self):
        """The run's teacher, built on first use by the executor (on Ray: fanned out over actors)."""
        if self._teacher is None:
            self._teacher = self.executor.teacher(self.config.teacher, self.cache_dir)
        return self._teacher

    @property
    def cache_dir(self) -> Path:
        return self.state.directory / "cache"

    def _teacher_counters(self) -> dict[str, Any]:
        return self._teacher.stats.as_dict() if self._teacher is not None else {}

    def close(self) -> None:
        """Close the teacher on the loop that opened its connections, then the loop."""
        try:
            if self._teacher is not None:
                self.teacher_this_run = self._teacher.stats.as_dict()
                self.loop.run(self._teacher.close())
        finally:
            self._teacher = None
            self.loop.close()
            if self._executor is not None:
                self._executor.close()
                self._executor = None

    # -- the step mechanism -----------------------------------------------------
    def step(
        self,
        name: str,
        step_fp: str,
        compute: Callable[[Path], tuple[T, dict[str, Any]]],
        load: Callable[[Path, dict[str, Any]], T],
    ) -> T:
        """Run one step once: reuse its recorded output, else compute it and record it.

        `compute(directory)` does the work, writes its outputs into the step's directory
        (atomically) and returns (value, facts to record); `load(directory, entry)` reads a
        finished step back. A step whose teacher requests failed or were not issued is
        recorded "partial": this run goes on with what was answered, the next run redoes
        the step (the response cache answers the rest, so only those requests are re-sent).
        A step whose every teacher request failed fails the run.
        """
        entry = self.state.done(name, step_fp)
        directory = self.state.step_dir(name)
        if entry is not None:
            try:
                value = load(directory, entry)
            except FileNotFoundError:
                self._log(f"{name}: recorded output is missing; computing it again")
            else:
                self.reused.append(name)
                return value
        self.state.start(name, step_fp)
        before = self._teacher_counters()
        try:
            value, facts = compute(directory)
            teacher = _delta(before, self._teacher_counters())
            if teacher:
                self.state.add_teacher_stats(teacher)
                facts["teacher"] = teacher
                _check_teacher(name, teacher, self._teacher)
        except BaseException as error:
            self.state.fail(name, error)
            raise
        crash_point(f"before-save:{name}")
        if self._teacher is not None and not self._teacher_described and self._teacher.describe():
            self._log(self._teacher.describe())
            self._teacher_described = True
        counters = facts.get("teacher", {})
        unanswered = counters.get("failed", 0) + counters.get("not_issued", 0)
        self.state.finish(name, status="partial" if unanswered else "done", **facts)
        if unanswered:
            self._log(self._unanswered_note(name, counters))
        if counters.get("ids_missing"):
            self._log(f"{name}: {counters['ids_missing']} teacher sample(s) without token ids (marked ids_missing)")
        crash_point(f"after:{name}")
        return value

    def _unanswered_note(self, name: str, counters: dict[str, Any]) -> str:
        """What a partial step left unanswered and how to continue (the cache answers the rest)."""
        failed, not_issued = counters.get("failed", 0), counters.get("not_issued", 0)
        answered = counters.get("answered", 0) + counters.get("cache_hits", 0)
        parts = []
        if failed:
            parts.append(f"{failed} teacher request(s) failed (last error: {self._teacher.last_error})")
        if not_issued:
            parts.append(
                f"the budget stopped {not_issued} teacher request(s), {not_issued} prompt(s) left "
                f"({self._teacher.budget.summary()}); raise teacher.budget in {self.config_path}"
            )
        return (
            f"{name}: {'; '.join(parts)}. The {answered} answered are kept; run the same command again "
            "to send exactly the unanswered ones (the response cache answers the rest)."
        )

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

    def prefilter(self, records: pl.DataFrame, input_fp: str) -> tuple[pl.DataFrame, str]:
        """The `prefilter:` stages on the prompts, before any teacher request: a row they drop is never sent."""
        configs = self.config.prefilter
        if not configs:
            return records, input_fp
        step_fp = fingerprint("prefilter", [c.model_dump(mode="json") for c in configs], input_fp)

        def compute(directory: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
            from curation.pipeline import run_stages
            from curation.stages import build_stage
            from stillhouse.estimate import requests_per_record

            stages = [build_stage(c, store=self.store) for c in configs]
            filtered, _ = run_stages(records, stages, console=self.console)
            write_frame_atomic(filtered, directory / OUTPUT)
            dropped = int(filtered["drop_stage"].is_not_null().sum())
            saved = dropped * requests_per_record(self.config)
            self._log(
                f"prefilter: {dropped} of {records.height} prompts dropped before the teacher: {saved} requests saved"
            )
            return filtered, {"rows": filtered.height, "dropped": dropped, "requests_saved": saved}

        def load(directory: Path, entry: dict[str, Any]) -> pl.DataFrame:
            return pl.read_parquet(directory / OUTPUT)

        return self.step("prefilter", step_fp, compute, load), step_fp

    def teacher_training(self) -> None:
        """Build a classifier teacher from labelled examples when the config asks for it."""
        spec = self.config.teacher_training
        if spec is None:
            return
        output = Path(self.config.teacher.model)

        def compute(directory: Path) -> tuple[None, dict[str, Any]]:
            from factory.teachers.classifier import train_encoder_head

            examples, merged = load_seeds(
                spec.data, columns={"instruction": spec.text_column, "label": spec.label_column}
            )
            repeats = f" ({merged} repeated examples merged)" if merged else ""
            self._log(f"teacher: fitting a classifier head on {examples.height} labelled examples{repeats} -> {output}")
            train_encoder_head(
                examples["instruction"].to_list(),
                examples["label"].to_list(),
                output,
                epochs=spec.epochs,
                seed=spec.seed,
                finetune=spec.finetune,
            )
            return None, {"examples": examples.height, "output": str(output)}

        def load(directory: Path, entry: dict[str, Any]) -> None:
            if not output.exists():
                raise FileNotFoundError(output)
            self._log(f"teacher: reusing {output}")

        self.step("teacher_training", fingerprint(spec.model_dump(mode="json")), compute, load)

    def task(self, index: int, task_config: Any, records: pl.DataFrame, input_fp: str):
        """Run one generation task; returns (kept, rejected, fingerprint)."""
        name = f"task-{index}-{task_config.type}"
        step_fp = fingerprint(task_config.model_dump(mode="json"), self.config.teacher_fingerprint(), input_fp)

        def compute(directory: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
            from factory.shards import ShardWriter
            from factory.tasks import build_task

            task = build_task(task_config)
            output = self.loop.run(task.run(records, self.teacher, ShardWriter(directory / "shards")))
            write_frame_atomic(output, directory / OUTPUT)
            return output, {"rows": output.height}

        def load(directory: Path, entry: dict[str, Any]) -> pl.DataFrame:
            output = pl.read_parquet(directory / OUTPUT)
            self._log(f"{name}: done earlier ({output.height} rows)")
            return output

        output = self.step(name, step_fp, compute, load)
        # Generative tasks return only the records they add (new ids), enriching tasks the
        # records they were given (same ids): the union carries both to the next step.
        untouched = records.filter(~pl.col("id").is_in(output["id"].implode()))
        kept, rejected = _split(pl.concat([untouched, output], how="diagonal_relaxed"))
        return kept, rejected, output_fingerprint(step_fp, output)

    def curation(self, frame: pl.DataFrame, input_fp: str, task_stages: list[str]):
        """Run the curation stages; returns (curated frame, funnel, fingerprint)."""
        configs = self.config.curation
        stage_names = task_stages + [c.name or c.stage for c in configs]
        step_fp = fingerprint([c.model_dump(mode="json") for c in configs], input_fp)

        def compute(directory: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
            from curation.pipeline import run_stages
            from curation.stages import build_stage

            needs_teacher = any(c.stage == "judge" for c in configs)
            teacher = self.teacher if needs_teacher else None
            stages = [build_stage(c, teacher=teacher, loop=self.loop, store=self.store) for c in configs]
            curated, _ = run_stages(
                frame, stages, console=self.console, executor=self.executor, earlier_stages=task_stages
            )
            write_frame_atomic(curated, directory / OUTPUT)
            return curated, {"rows": curated.height}

        def load(directory: Path, entry: dict[str, Any]) -> pl.DataFrame:
            curated = pl.read_parquet(directory / OUTPUT)
            self._log(f"curation: done earlier ({curated.height} rows)")
            return curated

        curated = self.step("curation", step_fp, compute, load)
        return curated, funnel_from_frame(curated, stage_names), output_fingerprint(step_fp, curated)

    def publish(self, frame: pl.DataFrame, funnel: list[dict], input_fp: str) -> DatasetVersion:
        publish = self.config.publish
        step_fp = fingerprint(publish.model_dump(mode="json"), input_fp)

        def compute(directory: Path) -> tuple[DatasetVersion, dict[str, Any]]:
            # A run killed between the rename and the state update already published:
            # find that version by the run fingerprint in its manifest instead of repeating it.
            earlier = self._published_by(step_fp)
            if earlier is not None:
                self._log(f"publish: found {earlier.ref} from the interrupted attempt")
                return earlier, {"ref": earlier.ref}
            parent = self.store.resolve(f"{publish.name}@latest", verify=False).ref if self._has_versions() else None
            version = self.store.publish(
                publish.name,
                conform(frame),
                parent=parent,
                config={
                    "run": {"name": self.config.name, "fingerprint": step_fp},
                    **manifest_config(self.config, self.config_path),
                },
                funnel=funnel,
                label_set=self._label_set(),
                description=publish.description,
                key=step_fp,  # checked under the store's lock: two runs of one config publish once
                teacher=self._teacher_outcome(frame),
            )
            self._log(f"publish: {version.ref} ({version.manifest['rows']['kept']} kept) -> {version.path}")
            return version, {"ref": version.ref}

        def load(directory: Path, entry: dict[str, Any]) -> DatasetVersion:
            version = self.store.resolve(entry["ref"])
            self._log(f"publish: done earlier ({version.ref})")
            return version

        return self.step("publish", step_fp, compute, load)

    def _teacher_outcome(self, frame: pl.DataFrame) -> dict[str, int] | None:
        """Requests the steps behind this data left unanswered, and kept samples without token ids."""
        steps = [entry for name, entry in self.state.steps.items() if name.startswith("task-") or name == "curation"]
        counters = [entry.get("teacher") or {} for entry in steps]
        if not any(counters):
            return None
        kept = frame.filter(pl.col("drop_stage").is_null()) if "drop_stage" in frame.columns else frame
        samples = kept["samples"].explode().drop_nulls() if "samples" in kept.columns else pl.Series([])
        without_ids = int(samples.struct.field("ids_missing").fill_null(False).sum()) if samples.len() else 0
        return {
            "failed_requests": sum(c.get("failed", 0) for c in counters),
            "not_issued_requests": sum(c.get("not_issued", 0) for c in counters),
            "kept_samples_without_token_ids": without_ids,
        }

    def _published_by(self, step_fp: str) -> DatasetVersion | None:
        name = self.config.publish.name
        for number in reversed(self.store.versions(name) if self.store.exists() else []):
            candidate = self.store.resolve(f"{name}@v{number}")
            if candidate.manifest.get("config", {}).get("run", {}).get("fingerprint") == step_fp:
                return candidate
        return None

    def _has_versions(self) -> bool:
        return self.store.exists() and bool(self.store.versions(self.config.publish.name))

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

        def compute(directory: Path) -> tuple[None, dict[str, Any]]:
            pushed = push(version, self.config.review, console=self.console)
            self._log(
                f"review: pushed a sample of {version.ref}; annotate it, then `stillhouse review pull {version.ref}`"
            )
            return None, {"pushed": pushed.model_dump(mode="json")}

        step_fp = fingerprint(version.ref, self.config.review.model_dump(mode="json"))
        self.step("review_push", step_fp, compute, lambda directory, entry: None)

    def train(self, version: DatasetVersion) -> Path | None:
        if self.config.train is None:
            return None
        from trainer.config import TrainConfig

        settings = self.config.train.model_dump()
        settings.update(dataset=version.ref, store_root=self.config.publish.root)
        settings["output_dir"] = settings["output_dir"] or self.student_dir
        student, teacher_training = settings["student"], self.config.teacher_training
        if teacher_training and student["type"] == "static_embedding" and student["match_data"] is None:
            # the teacher's own examples are where its head draws its boundaries: a student that matches
            # the teacher there follows it on phrasings the pool lacks (quickstart, 3 seeds: 0.915 -> 0.945 of its F1)
            student.update(match_data=teacher_training.data, match_text_column=teacher_training.text_column)
        train_config = TrainConfig.model_validate(settings)

        def compute(directory: Path) -> tuple[Path, dict[str, Any]]:
            from trainer.training import train

            result = train(train_config)
            return Path(result.model_dir), {"model_dir": str(result.model_dir)}

        def load(directory: Path, entry: dict[str, Any]) -> Path:
            model_dir = Path(entry["model_dir"])
            if not model_dir.exists():
                raise FileNotFoundError(model_dir)
            self._log(f"train: done earlier ({model_dir})")
            return model_dir

        return self.step("train", fingerprint(train_config.model_dump(mode="json")), compute, load)

    @property
    def student_dir(self) -> Path:
        return self.state.directory / "student"

    def evaluate(self, model_dir: Path) -> dict[str, Any] | None:
        spec = self.config.eval
        if spec is None:
            return None
        teacher = self.config.teacher
        teacher_dir = Path(teacher.model) if teacher.backend == "classifier" else None
        out_dir = self.state.directory / "eval"

        def compute(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
            from trainer.evaluation import evaluate

            evaluation = evaluate(
                model_dir, spec.test, teacher_dir=teacher_dir, hourly_usd=spec.hourly_usd, out_dir=out_dir
            )
            write_text_atomic(directory / EVALUATION, json.dumps(evaluation, indent=2) + "\n")
            return evaluation, {"out_dir": str(out_dir)}

        def load(directory: Path, entry: dict[str, Any]) -> dict[str, Any]:
            self._log(f"eval: done earlier ({out_dir})")
            return json.loads((directory / EVALUATION).read_text(encoding="utf-8"))

        step_fp = fingerprint(spec.model_dump(mode="json"), self.state.steps.get("train", {}).get("fingerprint"))
        return self.step("eval", step_fp, compute, load)

    def report(self, version: DatasetVersion, evaluation: dict[str, Any] | None) -> Path:
        import shutil

        from curation.review import review_report
        from stillhouse.report import report_path, write_report

        report = write_report(
            version, self.state.directory / "report.html", evaluation=evaluation, review=review_report(version)
        )
        if not self.store.local:  # on object storage the report stays in the run directory
            return report
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
            records, records_fp = self.prefilter(records, records_fp)
            self.teacher_training()
            rejected_parts: list[pl.DataFrame] = []
            task_stage_names: list[str] = [c.name or c.stage for c in self.config.prefilter]
            for index, task_config in enumerate(self.config.tasks):
                records, rejected, records_fp = self.task(index, task_config, records, records_fp)
                task_stage_names.append(task_config.type)
                if rejected.height:
                    rejected_parts.append(rejected)
                    # rows the prefilter dropped travel with the first task's output: count only this task's
                    own = int((rejected["drop_stage"] == task_config.type).sum())
                    if own:
                        self._log(f"task {task_config.type}: {own} rows dropped (kept for the audit)")
            frame = pl.concat([records, *rejected_parts], how="diagonal_relaxed")
            curated, funnel, curated_fp = self.curation(frame, records_fp, task_stage_names)
            result.version = self.publish(curated, funnel, curated_fp)
            self.review(result.version)
            result.model_dir = self.train(result.version)
            if result.model_dir is not None:
                result.evaluation = self.evaluate(result.model_dir)
            result.report = self.report(result.version, result.evaluation)
        except BaseException:
            state.status = "failed"
            state.save()
            raise
        finally:
            self.close()
        partial = [name for name, entry in state.steps.items() if entry.get("status") == "partial"]
        state.status = "partial" if partial else "finished"
        state.steps["summary"] = {
            "status": "done",
            "version": result.version.ref if result.version else None,
            "reused": list(self.reused),
            "seconds": round(time.perf_counter() - started, 1),
        }
        state.save()
        result.reused = list(self.reused)
        result.teacher_this_run = dict(self.teacher_this_run)
        return result


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The teacher counters a step added (nothing when it used no teacher)."""
    changes = {key: value - before.get(key, 0) for key, value in after.items()}
    return {key: round(value, 6) if isinstance(value, float) else value for key, value in changes.items() if value}


def output_fingerprint(step_fp: str, output: pl.DataFrame) -> str:
    """What later steps key on: a step's fingerprint and the rows it produced (ids and drop
    reasons), so a partial step redone with the answers it lacked makes them run again."""
    reasons = output["drop_reason"].to_list() if "drop_reason" in output.columns else []
    return fingerprint(step_fp, output["id"].to_list(), reasons)


def _check_teacher(step: str, counters: dict[str, Any], teacher: Any) -> None:
    """Fail a step whose teacher answered none of its requests: nothing it made can be published."""
    unanswered = counters.get("failed", 0) + counters.get("not_issued", 0)
    answered = counters.get("cache_hits", 0) + counters.get("answered", 0)
    if unanswered and answered <= 0:
        last = getattr(teacher, "last_error", None)
        detail = f"; last error: {last}" if last else ""
        raise TeacherFailedError(
            f"{step}: the teacher answered none of {unanswered} request(s) "
            f"({counters.get('failed', 0)} failed, {counters.get('not_issued', 0)} not issued){detail}. "
            "Nothing was published; fix the teacher (or raise the budget) and run the same command again."
        )


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
    prefilter = result.state.steps.get("prefilter")
    if prefilter:
        table.add_row(
            "prefilter",
            f"{prefilter.get('dropped', 0)} prompts dropped before the teacher: "
            f"{prefilter.get('requests_saved', 0)} requests saved",
        )
    if result.reused:
        table.add_row("reused", ", ".join(result.reused) + " (done earlier; nothing recomputed)")
    teacher, now = result.state.teacher, result.teacher_this_run
    if teacher:
        unanswered = f"{now.get('failed', 0)} failed, {now.get('not_issued', 0)} not issued"
        table.add_row(
            "teacher",
            f"this run: {now.get('requests_sent', 0)} requests sent, {now.get('cache_hits', 0)} answered from cache, "
            f"{unanswered}; all runs: {teacher.get('requests_sent', 0)} sent, {teacher.get('failed', 0)} failed",
        )
    outcome = result.version.manifest.get("teacher") if result.version is not None else None
    if outcome and any(outcome.values()):
        table.add_row(
            "unanswered",
            f"{outcome['failed_requests']} failed and {outcome['not_issued_requests']} not issued teacher requests "
            f"behind {result.version.ref}; {outcome['kept_samples_without_token_ids']} kept samples without token ids",
        )
    return table


def evaluation_table(evaluation: dict[str, Any]) -> Table:
    """The student-vs-teacher table printed at the end of a run with evaluation."""
    from trainer.evaluation import interval_text  # only runs with an evaluation: the import is due anyway

    table = Table(
        "metric", "student", "teacher", "student / teacher", title="student vs teacher (human-labelled test set)"
    )
    student, teacher = evaluation.get("student", {}), evaluation.get("teacher") or {}
    rows = [  # (label, keys into each model's report, whether student / teacher means anything)
        ("macro-F1", ("macro_f1",), True),
        ("accuracy", ("accuracy",), True),
        ("expected calibration error", ("ece",), True),
        ("ECE floor (sampling noise)", ("ece_floor",), False),
        ("latency p50 (ms)", ("latency_ms", "p50"), True),
        ("latency p95 (ms)", ("latency_ms", "p95"), True),
        ("parameters", ("parameters",), True),
        ("USD per million predictions", ("usd_per_million",), True),
    ]
    for label, path, comparable in rows:
        s, t = _dig(student, path), _dig(teacher, path)
        if s is None:
            continue
        ratio = f"{s / t:.3f}" if comparable and isinstance(t, (int, float)) and t else "-"
        interval = _dig(evaluation, ("ratios", "f1_interval_95")) if path == ("macro_f1",) else None
        if interval:  # what another test set of this size could show: read the gap against it
            ratio += f" ({interval_text(interval)})"
            table.caption = "(a to b): 95% paired bootstrap interval of the ratio over the test rows"
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
