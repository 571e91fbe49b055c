"""Teacher backends (one file each) and the machinery they share (managed.py).

teacher = build_teacher(config, cache_dir=run_dir / "cache")
generations = await teacher.generate(requests)
teacher.stats  # requests_sent, cache_hits, failed, prompt_tokens, completion_tokens, usd
"""

from __future__ import annotations

from pathlib import Path

from factory.teachers.base import Generation, Sample, Teacher, TeacherIdentity, TeacherRequest, Usage
from factory.teachers.cache import CACHE_FILE_NAME, ResponseCache
from factory.teachers.classifier import train_encoder_head
from factory.teachers.config import (
    Budget,
    ClassifierTeacherConfig,
    OpenAITeacherConfig,
    PluginTeacherConfig,
    Prices,
    TeacherConfig,
    TransformersTeacherConfig,
    VLLMTeacherConfig,
)
from factory.teachers.errors import (
    MissingApiKeyError,
    ModelNotFoundError,
    ServerUnreachableError,
    TeacherError,
    UnknownModelError,
)
from factory.teachers.managed import ManagedTeacher, TeacherStats

__all__ = [
    "Budget",
    "ClassifierTeacherConfig",
    "Generation",
    "ManagedTeacher",
    "MissingApiKeyError",
    "ModelNotFoundError",
    "OpenAITeacherConfig",
    "PluginTeacherConfig",
    "Prices",
    "Sample",
    "ServerUnreachableError",
    "Teacher",
    "TeacherConfig",
    "TeacherError",
    "TeacherIdentity",
    "TeacherRequest",
    "TeacherStats",
    "TransformersTeacherConfig",
    "UnknownModelError",
    "Usage",
    "VLLMTeacherConfig",
    "build_teacher",
    "estimate_cost",
    "train_encoder_head",
]


def build_teacher(config: TeacherConfig, cache_dir: Path | None = None, show_progress: bool = False) -> ManagedTeacher:
    """The backend `config.backend` names, wrapped in the shared machinery.

    `cache_dir`: where the SQLite response cache lives (`teacher_cache.sqlite`); None
    (or `config.cache: false`) disables caching.
    """
    cache = ResponseCache(Path(cache_dir) / CACHE_FILE_NAME) if cache_dir is not None and config.cache else None
    machinery = {
        "concurrency": config.concurrency,
        "max_concurrency": config.max_concurrency,
        "rpm": config.rpm,
        "tpm": config.tpm,
        "max_retries": config.max_retries,
        "timeout_s": config.timeout_s,
        "budget": config.budget,
        "prices": config.prices,
        "cache": cache,
        "show_progress": show_progress,
    }
    try:
        if isinstance(config, OpenAITeacherConfig) and config.mode == "batch":
            from factory.teachers.openai_batch import OpenAIBatchTeacher

            machinery["prices"] = config.prices.for_batch() if config.prices is not None else None
            return OpenAIBatchTeacher(config, state_dir=cache_dir, **machinery)
        if isinstance(config, OpenAITeacherConfig):
            from factory.teachers.openai_backend import OpenAITeacher

            return OpenAITeacher(config, **machinery)
        if isinstance(config, VLLMTeacherConfig):
            from factory.teachers.vllm_backend import VLLMTeacher

            return VLLMTeacher(config, **machinery)
        if isinstance(config, TransformersTeacherConfig):
            from factory.teachers.transformers_backend import TransformersTeacher

            return TransformersTeacher(config, **machinery)
        if isinstance(config, ClassifierTeacherConfig):
            from factory.teachers.classifier import ClassifierTeacher

            return ClassifierTeacher(config, **machinery)
        if isinstance(config, PluginTeacherConfig):
            return config.teacher_class()(config, **machinery)
    except BaseException:
        if cache is not None:
            cache.close()
        raise
    raise TypeError(f"not a teacher config: {type(config).__name__}")


def estimate_cost(config: TeacherConfig, n_requests: int, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Dollars for `n_requests` requests averaging `prompt_tokens` in and
    `completion_tokens` out (all samples of a request together), from the config's price
    table; None when the config has no prices (local backends usually)."""
    if config.prices is None:
        return None
    prices = config.prices.for_batch() if getattr(config, "mode", "online") == "batch" else config.prices
    return n_requests * prices.usd(prompt_tokens, completion_tokens)
