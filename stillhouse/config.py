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
from factory.schema import canonical_json
from factory.secrets import redact_secrets
from factory.tasks.config import TaskConfig
from factory.teachers.config import TeacherConfig
from stillhouse.yaml_config import load_config
from trainer.config import TrainConfig


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def relative_to_config(path: Path, info: ValidationInfo) -> Path:
    """Data files named in a config are found relative to the config file."""
    config_dir = (info.context or {}).get("config_dir")
    return path if path.is_absolute() or config_dir is None else Path(config_dir) / path


def require_file(path: Path, what: str) -> Path:
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
    path: Path = Field(description="Seed file (JSONL, CSV or Parquet), relative to the config file.")
    format: Literal["jsonl", "csv", "parquet"] | None = Field(
        None, description="File format; inferred from the extension when omitted."
    )
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    instruction: str | None = Field(
        None, description="A constant instruction for every seed (classification pools carry only the input text)."
    )
    limit: int | None = Field(None, gt=0, description="Use only the first N seeds.")

    @field_validator("path")
    @classmethod
    def _seed_file_exists(cls, path: Path, info: ValidationInfo) -> Path:
        return require_file(relative_to_config(path, info), "seed file")


class TeacherTrainingConfig(StrictModel):
    """Build the classifier teacher (MiniLM encoder + a trained head) from labelled examples."""

    data: Path = Field(description="JSONL/CSV of labelled examples, relative to the config file.")
    text_column: str = "text"
    label_column: str = "label"
    epochs: int = Field(200, gt=0)
    seed: int = 0

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
    root: Path = Field(Path("datasets_out"), description="Dataset store root.")
    description: str = ""

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
    seeds: SeedsConfig
    teacher: TeacherConfig | None = None
    teacher_training: TeacherTrainingConfig | None = None
    tasks: list[TaskConfig] = Field(default_factory=list)
    curation: list[StageConfig] = Field(default_factory=list)
    publish: PublishConfig
    review: ReviewConfig | None = None
    train: RunTrainConfig | None = None
    eval: EvalConfig | None = None

    @field_validator("name")
    @classmethod
    def _run_name_is_valid(cls, name: str) -> str:
        return PublishConfig._name_is_valid(name)

    def teacher_fingerprint(self) -> str:
        """What about the teacher changes its answers (not concurrency, limits or budget)."""
        if self.teacher is None:
            return ""
        operational = {"concurrency", "rpm", "tpm", "max_retries", "timeout_s", "budget", "prices", "cache"}
        return canonical_json(self.teacher.model_dump(mode="json", exclude=operational))

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
