"""The teacher contract: `async generate(requests) -> generations`, for every backend.

A request is a chat prompt plus sampling parameters; a generation carries every
sample's text, finish reason, token ids, the sampled tokens' logprobs and the top-k
alternatives per position, the usage, and the teacher's identity. Classifier
teachers return class probabilities instead of samples.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any

from factory.schema import canonical_json


@dataclass(frozen=True)
class TeacherRequest:
    messages: tuple[tuple[str, str], ...]  # ((role, content), ...)
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_logprobs: int = 0  # k alternatives per position (0: none)
    presence_penalty: float = 0.0  # OpenAI semantics; honoured by the openai and vllm backends
    frequency_penalty: float = 0.0

    @classmethod
    def chat(cls, user: str, system: str | None = None, **params: Any) -> TeacherRequest:
        messages = ((("system", system),) if system else ()) + (("user", user),)
        return cls(messages=messages, **params)

    def openai_messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def sampling_params(self) -> dict[str, Any]:
        """Everything but the messages, as stored in a record's teacher.params."""
        params = self._fields()
        params.pop("messages")
        params["stop"] = list(self.stop)
        return params

    def _fields(self) -> dict[str, Any]:
        """The request as a dict; penalties only when set, so requests without them hash as before."""
        # Shallow: `asdict` deep-copies the messages tuple, which the JSON encoder reads as is.
        fields = {spec.name: getattr(self, spec.name) for spec in dataclass_fields(self)}
        for name in ("presence_penalty", "frequency_penalty"):
            if not fields[name]:
                fields.pop(name)
        return fields

    def cache_key(self, teacher: TeacherIdentity) -> str:
        """Hash of the request and of the teacher that answers it (never of any secret)."""
        payload = canonical_json({"request": self._fields(), "teacher": teacher.cache_fields()})
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TeacherIdentity:
    backend: str  # openai | vllm | transformers | classifier | scripted
    model: str
    tokenizer: str | None = None
    tokenizer_hash: str | None = None
    labels: tuple[str, ...] = ()  # classifier teachers: the label set, in probability order

    def cache_fields(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model, "tokenizer_hash": self.tokenizer_hash}

    def record(self, request: TeacherRequest) -> dict[str, Any]:
        """The record schema's `teacher` struct for a generation made with `request`."""
        return {
            "backend": self.backend,
            "model": self.model,
            "params": canonical_json(request.sampling_params()),
            "tokenizer": self.tokenizer,
            "tokenizer_hash": self.tokenizer_hash,
        }


@dataclass
class Sample:
    """One teacher sample; `as_record()` matches the record schema's samples struct."""

    text: str
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_ids: list[list[int]] = field(default_factory=list)
    top_logprobs: list[list[float]] = field(default_factory=list)
    ids_missing: bool = False  # the sample has text but its token ids could not be had (counted, never silent)

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Generation:
    request: TeacherRequest
    teacher: TeacherIdentity
    samples: list[Sample] = field(default_factory=list)
    class_probs: list[float] | None = None  # classifier teachers, ordered as teacher.labels
    usage: Usage = field(default_factory=Usage)
    token_ids_source: str | None = None  # engine | server | tokenizer: where token ids came from
    cached: bool = False
    error: str | None = None  # set when the request failed for good (or the budget stopped it)

    @property
    def ok(self) -> bool:
        return self.error is None


class Teacher(ABC):
    """A backend. Implementations answer every request exactly once, in order."""

    identity: TeacherIdentity

    @abstractmethod
    async def generate(self, requests: Sequence[TeacherRequest]) -> list[Generation]:
        """One generation per request, in the same order; failures carry `error`."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release clients, engines or servers."""
