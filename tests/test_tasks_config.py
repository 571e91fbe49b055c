"""Task configs: the discriminated union, bounds, unknown keys, and build_task."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from factory.tasks import TaskConfig, build_task
from factory.tasks.evol_instruct import EvolInstruct
from factory.tasks.label import Label
from factory.tasks.respond import Respond
from factory.tasks.self_instruct import SelfInstruct

ADAPTER = TypeAdapter(TaskConfig)


@pytest.mark.parametrize(
    "raw, task_class",
    [
        ({"type": "self_instruct", "target_size": 10}, SelfInstruct),
        ({"type": "evol_instruct", "generations": 3, "mutations": ["deepen"]}, EvolInstruct),
        ({"type": "respond", "n": 2, "chain_of_thought": True}, Respond),
        ({"type": "label", "labels": ["a", "b"]}, Label),
    ],
)
def test_build_task_from_each_config(raw, task_class):
    task = build_task(ADAPTER.validate_python(raw))
    assert isinstance(task, task_class)
    assert task.estimate_requests(10) > 0


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"type": "respond", "n": 0}, "n"),
        ({"type": "respond", "temprature": 0.5}, "temprature"),
        ({"type": "self_instruct", "rouge_threshold": -0.1}, "rouge_threshold"),
        ({"type": "self_instruct", "target_size": -5}, "target_size"),
        ({"type": "self_instruct", "human_examples": 0, "machine_examples": 0}, "human_examples"),
        ({"type": "self_instruct", "min_words": 10, "max_words": 5}, "min_words"),
        ({"type": "evol_instruct", "mutations": ["teleport"]}, "mutations"),
        ({"type": "evol_instruct", "generations": 0}, "generations"),
        ({"type": "label", "labels": ["a"]}, "labels"),
        ({"type": "label", "labels": ["a", "a"]}, "repeated"),
        ({"type": "label", "labels": ["a", "b"], "temperature": 0}, "temperature"),
        ({"type": "distill", "labels": ["a", "b"]}, "type"),
        ({"type": "respond", "seed": -1}, "seed"),
    ],
)
def test_invalid_configs_name_the_field(raw, field):
    with pytest.raises(ValidationError, match=field):
        ADAPTER.validate_python(raw)
