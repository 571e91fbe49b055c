"""Task configs: one pydantic model per task, a union discriminated by `type`.

Unknown keys are rejected (extra="forbid") and every count/threshold is bounded,
so a typo in a run config fails at load time with the field's name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from factory.plugins import check_options, load_plugin, plugin_discriminator

MUTATIONS = ("add_constraints", "deepen", "concretize", "increase_reasoning", "in_breadth")
Mutation = Literal["add_constraints", "deepen", "concretize", "increase_reasoning", "in_breadth"]


class _TaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0, description="all randomness of the task derives from it (resumable runs)")
    shard_size: int = Field(500, ge=1, description="rows per Parquet shard written as the task goes")
    batch_size: int = Field(64, ge=1, description="requests handed to the teacher at once")


class SelfInstructConfig(_TaskConfig):
    type: Literal["self_instruct"]
    target_size: int = Field(100, ge=1, description="machine instructions to add to the pool")
    max_rounds: int = Field(50, ge=1)
    prompts_per_round: int = Field(4, ge=1)
    human_examples: int = Field(6, ge=0, description="in-context instructions from the human seeds")
    machine_examples: int = Field(2, ge=0, description="in-context machine instructions, when the pool has them")
    list_length: int = Field(20, ge=2, description="the numbered list the teacher completes (examples included)")
    rouge_threshold: float = Field(0.7, ge=0.0, le=1.0)
    min_words: int = Field(4, ge=1, description="instructions with fewer words are dropped (paper: <= 3)")
    max_words: int = Field(150, ge=1)
    instances_per_task: int = Field(5, ge=1, description="instances asked for per task, one row each (paper: 5)")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.5, gt=0.0, le=1.0)
    max_tokens: int = Field(1024, ge=16)
    presence_penalty: float = Field(
        2.0, ge=-2.0, le=2.0, description="instruction generation (paper: 2); openai and vllm teachers"
    )
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="instruction generation (paper: 0)")
    instance_presence_penalty: float = Field(1.5, ge=-2.0, le=2.0, description="instance generation (paper: 1.5)")
    instance_frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="instance generation (paper: 0)")

    @model_validator(mode="after")
    def _examples_fit(self) -> SelfInstructConfig:
        examples = self.human_examples + self.machine_examples
        if examples < 1 or examples >= self.list_length:
            raise ValueError(
                f"human_examples + machine_examples ({examples}) must be between 1 and list_length - 1 "
                f"({self.list_length - 1})"
            )
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) exceeds max_words ({self.max_words})")
        return self


class EvolInstructConfig(_TaskConfig):
    type: Literal["evol_instruct"]
    generations: int = Field(2, ge=1, description="rounds of evolution (the paper: 4)")
    mutations: list[Mutation] = Field(default_factory=lambda: list(MUTATIONS), min_length=1)
    check_information_gain: bool = Field(True, description="ask the teacher whether the evolution adds anything")
    sorry_max_words: int = Field(80, ge=0, description="a 'sorry' answer shorter than this eliminates")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=16)
    response_max_tokens: int = Field(512, ge=16)
    top_logprobs: int = Field(0, ge=0, le=20, description="top-k logprobs kept with the evolved answer")


class RespondConfig(_TaskConfig):
    type: Literal["respond"]
    n: int = Field(4, ge=1, description="samples per instruction")
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(512, ge=1)
    top_logprobs: int = Field(5, ge=0, le=20)
    chain_of_thought: bool = False
    system_prompt: str | None = None


class LabelConfig(_TaskConfig):
    type: Literal["label"]
    labels: list[str] = Field(min_length=2, description="the label set, in label_probs order")
    source: Literal["auto", "logprobs", "classifier"] = Field(
        "auto", description="auto: classifier probabilities for a classifier teacher, else label-token logprobs"
    )
    temperature: float = Field(1.0, gt=0.0, description="softmax temperature over the label logprobs")
    top_logprobs: int = Field(20, ge=1, le=20)
    tokenizer: str | None = Field(None, description="tokenizer of the LLM teacher (default: the teacher's own)")

    @model_validator(mode="after")
    def _labels_unique(self) -> LabelConfig:
        duplicates = sorted({label for label in self.labels if self.labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"labels must be unique; repeated: {duplicates}")
        if any(not label.strip() for label in self.labels):
            raise ValueError("labels must be non-empty strings")
        return self


class DistilabelConfig(_TaskConfig):
    type: Literal["distilabel"]
    task: str = Field(description="import path of a distilabel Task, e.g. distilabel.steps.tasks.TextGeneration")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the distilabel task")
    input_mapping: dict[str, str] = Field(default_factory=dict, description="distilabel input -> record column")
    output_mapping: dict[str, str] = Field(
        default_factory=lambda: {"generation": "response"}, description="distilabel output -> record column"
    )
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=1)
    top_logprobs: int = Field(0, ge=0, le=20)


class PluginTaskConfig(_TaskConfig):
    """A user's own task: `type: mypkg.tasks:MyTask` (a `factory.tasks.base.Task` subclass)
    or an entry point in `stillhouse.tasks`; every other key is a keyword argument of its
    constructor."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(description="Import path (module:Class) or entry-point name of a Task subclass.")

    def task_class(self) -> type:
        from factory.tasks.base import Task

        return load_plugin(self.type, "task", Task)

    @field_validator("type")
    @classmethod
    def _plugin_resolves(cls, reference: str) -> str:
        from factory.tasks.base import Task

        load_plugin(reference, "task", Task, BUILTIN_TASKS)  # a config error at this key's line
        return reference

    @model_validator(mode="after")
    def _plugin_accepts_options(self) -> PluginTaskConfig:
        check_options(self.task_class(), self.model_extra or {})
        return self


BUILTIN_TASKS = ("self_instruct", "evol_instruct", "respond", "label", "distilabel")
TaskConfig = Annotated[
    Union[
        Annotated[SelfInstructConfig, Tag("self_instruct")],
        Annotated[EvolInstructConfig, Tag("evol_instruct")],
        Annotated[RespondConfig, Tag("respond")],
        Annotated[LabelConfig, Tag("label")],
        Annotated[DistilabelConfig, Tag("distilabel")],
        Annotated[PluginTaskConfig, Tag("plugin")],
    ],
    Discriminator(plugin_discriminator("type", BUILTIN_TASKS)),
]
