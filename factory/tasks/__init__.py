"""Generation tasks: records in, teacher requests out, generations back into records.

`build_task(config)` turns a `TaskConfig` (discriminated by `type`) into a `Task`;
`await task.run(records, teacher, shards)` returns record-schema rows, the ones a
task eliminated included (with drop_stage/drop_reason).
"""

from __future__ import annotations

from factory.tasks.base import Task
from factory.tasks.config import (
    DistilabelConfig,
    EvolInstructConfig,
    LabelConfig,
    PluginTaskConfig,
    RespondConfig,
    SelfInstructConfig,
    TaskConfig,
)


def build_task(config: TaskConfig) -> Task:
    """The task a config describes (imports each task's module only when it is used)."""
    if isinstance(config, SelfInstructConfig):
        from factory.tasks.self_instruct import SelfInstruct

        return SelfInstruct(config)
    if isinstance(config, EvolInstructConfig):
        from factory.tasks.evol_instruct import EvolInstruct

        return EvolInstruct(config)
    if isinstance(config, RespondConfig):
        from factory.tasks.respond import Respond

        return Respond(config)
    if isinstance(config, LabelConfig):
        from factory.tasks.label import Label

        return Label(config)
    if isinstance(config, DistilabelConfig):
        from factory.tasks.distilabel_task import DistilabelTaskAdapter

        return DistilabelTaskAdapter(config)
    if isinstance(config, PluginTaskConfig):
        return config.task_class()(**(config.model_extra or {}))
    raise TypeError(f"not a task config: {type(config).__name__}")


__all__ = [
    "DistilabelConfig",
    "EvolInstructConfig",
    "LabelConfig",
    "PluginTaskConfig",
    "RespondConfig",
    "SelfInstructConfig",
    "Task",
    "TaskConfig",
    "build_task",
]
