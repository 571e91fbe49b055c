"""The run config: one YAML file from seeds to a published (and trained) dataset.

Every model forbids unknown keys, so a typo is an error naming its line rather than
a silently ignored setting. Sections owned by other layers (teacher, tasks, curation,
review, training) are defined next to the code that consumes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stillhouse.yaml_config import load_config


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    limit: int | None = Field(None, gt=0, description="Use only the first N seeds.")


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

    name: str = Field(description="Run name: its state lives in runs/<name>/.")
    seeds: SeedsConfig
    publish: PublishConfig


def load_run_config(path: Path | str) -> RunConfig:
    return load_config(path, RunConfig)
