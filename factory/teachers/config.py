"""Teacher configs: one pydantic model per backend, discriminated by `backend`.

API keys are never config fields: `api_key_env` names the environment variable that
holds one, so a config file (and everything written from it) stays free of secrets.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from factory.plugins import load_plugin, plugin_discriminator


class Budget(BaseModel):
    """A hard cap: no request is issued that could take spending past either limit."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, gt=0, description="prompt + completion tokens, all requests")
    max_usd: float | None = Field(default=None, gt=0, description="dollars, priced with `prices`")


class Prices(BaseModel):
    """USD per one million tokens; `batch_*`: the provider's batch-API rate (OpenAI: half)."""

    model_config = ConfigDict(extra="forbid")

    input_per_1m: float = Field(ge=0)
    output_per_1m: float = Field(ge=0)
    batch_input_per_1m: float | None = Field(default=None, ge=0, description="None: the online rate")
    batch_output_per_1m: float | None = Field(default=None, ge=0, description="None: the online rate")

    def usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1_000_000

    def for_batch(self) -> Prices:
        """The rates batch requests are billed at (the online ones where no batch rate is given)."""
        return Prices(
            input_per_1m=self.input_per_1m if self.batch_input_per_1m is None else self.batch_input_per_1m,
            output_per_1m=self.output_per_1m if self.batch_output_per_1m is None else self.batch_output_per_1m,
        )


class _TeacherConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="model name (openai) or local model directory")
    concurrency: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default=16,
        description="requests in flight at once, or `auto`: AIMD (grow while answered, cut on 429/503/timeouts)",
    )
    max_concurrency: int = Field(default=256, ge=1, description="`concurrency: auto` never goes above this")
    rpm: int | None = Field(default=None, gt=0, description="requests-per-minute limit")
    tpm: int | None = Field(default=None, gt=0, description="tokens-per-minute limit (prompt + max completion)")
    max_retries: int = Field(default=5, ge=0)
    timeout_s: float = Field(default=120.0, gt=0)
    budget: Budget | None = None
    prices: Prices | None = None
    cache: bool = True

    @model_validator(mode="after")
    def _usd_budget_needs_prices(self):
        if self.budget is not None and self.budget.max_usd is not None and self.prices is None:
            raise ValueError("budget.max_usd needs a `prices` table (input_per_1m, output_per_1m)")
        return self


class BatchSettings(BaseModel):
    """`mode: batch`: the provider's batch API (upload a JSONL file, poll, download)."""

    model_config = ConfigDict(extra="forbid")

    completion_window: str = Field(default="24h", description="the provider's completion window")
    max_requests: int = Field(default=50_000, ge=1, description="requests per batch (OpenAI: 50,000)")
    max_bytes: int = Field(default=200_000_000, ge=1024, description="input file size per batch (OpenAI: 200 MB)")
    poll_initial_s: float = Field(default=5.0, gt=0, description="first wait between status checks")
    poll_max_s: float = Field(default=60.0, gt=0, description="the wait grows by half each check up to this")


class OpenAITeacherConfig(_TeacherConfigBase):
    backend: Literal["openai"] = "openai"
    mode: Literal["online", "batch"] = Field(
        default="online", description="online: one request at a time, many in flight; batch: the batch API"
    )
    batch: BatchSettings = Field(default_factory=BatchSettings)
    base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint; None: api.openai.com")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="environment variable holding the key")
    tokenizer: str | None = Field(
        default=None,
        description="tokenizer of the served model (directory or HF name): hashes stored ids; recovers ids "
        "from token bytes on servers that send none. vLLM's own model directory is found by itself",
    )
    return_token_ids: bool | None = Field(
        default=None,
        description="ask for `token_id:N` tokens (vLLM's return_tokens_as_token_ids); None: when the "
        "server is vLLM; false: never (text and logprobs only)",
    )
    logprobs: bool = Field(default=True, description="ask for the sampled tokens' logprobs")


class VLLMTeacherConfig(_TeacherConfigBase):
    backend: Literal["vllm"] = "vllm"
    dtype: str = "auto"
    max_model_len: int | None = Field(default=None, gt=0)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    enforce_eager: bool = False
    seed: int = 0


class TransformersTeacherConfig(_TeacherConfigBase):
    backend: Literal["transformers"] = "transformers"
    device: str = "auto"
    batch_size: int = Field(default=8, ge=1)
    dtype: str = "auto"


class ClassifierTeacherConfig(_TeacherConfigBase):
    backend: Literal["classifier"] = "classifier"
    kind: Literal["hf", "encoder_head"] = "hf"
    temperature: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=32, ge=1)
    device: str = "auto"


class PluginTeacherConfig(_TeacherConfigBase):
    """A user's own backend: `backend: mypkg.teachers:MyTeacher` (a `ManagedTeacher`
    subclass, built like the built-ins as `MyTeacher(config, **machinery)`) or an entry
    point in `stillhouse.teachers`; other keys are in `config.model_extra`."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    backend: str = Field(description="Import path (module:Class) or entry-point name of a ManagedTeacher subclass.")

    def teacher_class(self) -> type:
        from factory.teachers.managed import ManagedTeacher

        return load_plugin(self.backend, "teacher", ManagedTeacher)

    @field_validator("backend")
    @classmethod
    def _plugin_resolves(cls, reference: str) -> str:
        from factory.teachers.managed import ManagedTeacher

        load_plugin(reference, "teacher", ManagedTeacher, BUILTIN_BACKENDS)  # a config error at this key's line
        return reference


BUILTIN_BACKENDS = ("openai", "vllm", "transformers", "classifier")
TeacherConfig = Annotated[
    Union[
        Annotated[OpenAITeacherConfig, Tag("openai")],
        Annotated[VLLMTeacherConfig, Tag("vllm")],
        Annotated[TransformersTeacherConfig, Tag("transformers")],
        Annotated[ClassifierTeacherConfig, Tag("classifier")],
        Annotated[PluginTeacherConfig, Tag("plugin")],
    ],
    Discriminator(plugin_discriminator("backend", BUILTIN_BACKENDS)),
]
