"""The run config: one YAML file from seeds to a published (and trained) dataset.

Every model forbids unknown keys, so a typo is an error naming its line rather than
a silently ignored setting. Sections owned by other layers (teacher, tasks, curation,
review, training) are defined next to the code that consumes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from curation.config import StageConfig
from curation.review import ReviewConfig
from curation.store import default_root
from factory.schema import canonical_json
from factory.secrets import redact_secrets
from factory.storage import as_location
from factory.tasks.config import TaskConfig
from factory.teachers.config import TeacherConfig
from stillhouse.executors import ExecutorConfig, LocalExecutorConfig, executor_shorthand
from stillhouse.yaml_config import load_config
from trainer.config import TrainConfig

PREFILTER_STAGES = ("heuristics", "exact_dedup", "minhash_dedup", "semantic_dedup")
PROMPT_COLUMNS = ("instruction", "input")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def relative_to_config(path: Path, info: ValidationInfo) -> Path:
    """Data files named in a config are found relative to the config file."""
    config_dir = (info.context or {}).get("config_dir")
    return path if path.is_absolute() or config_dir is None else Path(config_dir) / path


def location_field(value: object) -> object:
    """Before validation: a URL (`s3://...`) stays a string (pathlib folds it into `s3:/...`), a path a Path."""
    return as_location(value) if isinstance(value, (str, Path)) else value


def require_file(path: Path | str, what: str) -> Path | str:
    if isinstance(path, str):  # a URL: checked when it is read (one line naming it), not at load time
        return path
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    return path


class ColumnMapping(StrictModel):
    """Which seed-file columns hold the record fields."""

    instruction: str = "instruction"
    input: str | None = None
    label: str | None = None
    response: str | None = None


class SeedsConfig(StrictModel):
    path: Path | str = Field(
        description="Seed file (JSONL, CSV or Parquet), relative to the config file, or a URL (s3://bucket/seeds.jsonl)."
    )
    format: Literal["jsonl", "csv", "parquet"] | None = Field(
        None, description="File format; inferred from the extension when omitted."
    )
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    instruction: str | None = Field(
        None, description="A constant instruction for every seed (classification pools carry only the input text)."
    )
    limit: int | None = Field(None, gt=0, description="Use only the first N seeds.")

    _seed_url = field_validator("path", mode="before")(location_field)

    @field_validator("path")
    @classmethod
    def _seed_file_exists(cls, path: Path | str, info: ValidationInfo) -> Path | str:
        if isinstance(path, str):
            return path
        return require_file(relative_to_config(path, info), "seed file")


class TeacherTrainingConfig(StrictModel):
    """Build the classifier teacher (MiniLM encoder + a trained head) from labelled examples."""

    data: Path = Field(description="JSONL/CSV of labelled examples, relative to the config file.")
    text_column: str = "text"
    label_column: str = "label"
    epochs: int = Field(200, gt=0)
    seed: int = 0
    finetune: Literal["auto", "full", "head"] = Field(
        "auto", description="full: fine-tune the encoder end to end; head: frozen encoder; auto: full from 1000 rows."
    )

    @field_validator("data")
    @classmethod
    def _data_exists(cls, path: Path, info: ValidationInfo) -> Path:
        return require_file(relative_to_config(path, info), "teacher training file")


class RunTrainConfig(TrainConfig):
    """`train` of a run config: the dataset is the version the run publishes."""

    dataset: str | None = Field(None, description="Filled by the run with the version it published.")
    output_dir: Path | None = Field(None, description="Default: runs/<name>/student.")


class EvalConfig(StrictModel):
    test: Path = Field(description="Human-labelled test set (JSONL/CSV with text and label), relative to the config.")
    hourly_usd: float = Field(0.10, ge=0, description="Hourly price of the machine serving a model (cost per million).")

    @field_validator("test")
    @classmethod
    def _test_exists(cls, path: Path, info: ValidationInfo) -> Path:
        return require_file(relative_to_config(path, info), "test file")


class PublishConfig(StrictModel):
    name: str = Field(description="Dataset name: versions land in <root>/<name>/v<N>/.")
    root: Path | str = Field(
        default_factory=default_root,
        description="Dataset store root: a directory or a URL (s3://bucket/prefix) "
        "[default: $STILLHOUSE_DATASETS, else $STILLHOUSE_HOME/datasets_out, else ./datasets_out].",
    )
    description: str = ""

    _root_url = field_validator("root", mode="before")(location_field)

    @field_validator("name")
    @classmethod
    def _name_is_valid(cls, name: str) -> str:
        from curation.store import NAME_PATTERN

        if not NAME_PATTERN.match(name):
            raise ValueError("letters, digits, '.', '_' and '-' only (no '@' or '/')")
        return name


class RunConfig(StrictModel):
    """A Stillhouse run: seeds -> tasks -> curation -> review -> publish -> train."""

    name: str = Field(description="Run name: its state lives in <run_dir>/<name>/.")
    run_dir: Path = Field(Path("runs"), description="Where run states, shards and caches live.")
    executor: ExecutorConfig = Field(
        default_factory=LocalExecutorConfig,
        description="Where the work runs: local (default), or {type: ray, address: auto, workers: N}.",
    )
    seeds: SeedsConfig
    teacher: TeacherConfig | None = None
    teacher_training: TeacherTrainingConfig | None = None
    prefilter: list[StageConfig] = Field(
        default_factory=list,
        description="Stages run on the prompts before any teacher request (heuristics on instruction/input, "
        "exact / MinHash / semantic dedup of instruction+input): every row they drop is a request never paid for.",
    )
    tasks: list[TaskConfig] = Field(default_factory=list)
    curation: list[StageConfig] = Field(default_factory=list)
    publish: PublishConfig
    review: ReviewConfig | None = None
    train: RunTrainConfig | None = None
    eval: EvalConfig | None = None

    _executor_shorthand = field_validator("executor", mode="before")(executor_shorthand)

    @field_validator("name")
    @classmethod
    def _run_name_is_valid(cls, name: str) -> str:
        return PublishConfig._name_is_valid(name)

    def teacher_fingerprint(self) -> str:
        """What about the teacher changes its answers (not concurrency, limits or budget)."""
        if self.teacher is None:
            return ""
        operational = {
            "concurrency",
            "max_concurrency",
            "rpm",
            "tpm",
            "max_retries",
            "timeout_s",
            "budget",
            "prices",
            "cache",
        }
        return canonical_json(self.teacher.model_dump(mode="json", exclude=operational))

    @field_validator("prefilter")
    @classmethod
    def _prefilter_needs_only_the_prompt(cls, stages: list[StageConfig]) -> list[StageConfig]:
        for index, stage in enumerate(stages):
            where = f"prefilter[{index}] ({stage.stage})"
            if stage.stage not in PREFILTER_STAGES:
                raise ValueError(f"{where}: only {', '.join(PREFILTER_STAGES)} can run before the teacher answers")
            columns = [stage.column] if stage.stage == "heuristics" else list(stage.columns)
            answer_columns = [column for column in columns if column not in PROMPT_COLUMNS]
            if answer_columns:
                raise ValueError(
                    f"{where}: looks at {answer_columns}, which the teacher has not written yet; "
                    f"use {' / '.join(PROMPT_COLUMNS)}"
                )
            if stage.stage == "heuristics" and stage.truncated:
                raise ValueError(f"{where}: `truncated` checks the teacher's answer; set truncated: false")
        # Named apart from curation stages of the same kind, so the funnel tells them apart.
        return [
            stage if stage.name else stage.model_copy(update={"name": f"prefilter_{stage.stage}"}) for stage in stages
        ]

    @model_validator(mode="after")
    def _sections_fit_together(self) -> RunConfig:
        needs_teacher = bool(self.tasks) or any(getattr(stage, "stage", "") == "judge" for stage in self.curation)
        if needs_teacher and self.teacher is None:
            raise ValueError("tasks and the judge stage need a `teacher` section")
        if self.eval is not None and self.train is None:
            raise ValueError("`eval` evaluates the trained student: add a `train` section")
        return self


def load_run_config(path: Path | str) -> RunConfig:
    return load_config(path, RunConfig)


def manifest_config(config: RunConfig, config_path: Path | str) -> dict[str, Any]:
    """The config as a published manifest records it: JSON, secrets redacted, and file
    paths relative to the config file's directory, never absolute paths of this machine
    (seed and test files are resolved to absolute paths when the config is loaded)."""
    base = Path(config_path).resolve().parent

    def relative(value: Any, as_json: Any) -> Any:
        if isinstance(value, dict):
            return {key: relative(value[key], as_json[key]) for key in value}
        if isinstance(value, (list, tuple)):
            return [relative(item, item_json) for item, item_json in zip(value, as_json)]
        is_file_path = isinstance(value, str) and os.path.isabs(value) and os.path.exists(value)
        if (isinstance(value, Path) and value.is_absolute()) or is_file_path:
            return os.path.relpath(value, base)
        return as_json

    return redact_secrets(relative(config.model_dump(mode="python"), config.model_dump(mode="json")))
