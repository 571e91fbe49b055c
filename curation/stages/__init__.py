"""Curation stages: one small class per filter, one file each (see base.Stage for the contract)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from curation.stages.base import Scope, Stage, StageInputError
from curation.stages.consistency import Consistency
from curation.stages.entropy import Entropy
from curation.stages.exact_dedup import ExactDedup
from curation.stages.heuristics import Heuristics
from curation.stages.judge import Judge
from curation.stages.minhash_dedup import MinHashDedup
from curation.stages.semantic_dedup import SemanticDedup

STAGES: dict[str, type[Stage]] = {
    "heuristics": Heuristics,
    "exact_dedup": ExactDedup,
    "minhash_dedup": MinHashDedup,
    "semantic_dedup": SemanticDedup,
    "consistency": Consistency,
    "entropy": Entropy,
    "judge": Judge,
}

if TYPE_CHECKING:
    from curation.config import StageConfig
    from curation.store import DatasetStore
    from factory.aio import EventLoop
    from factory.teachers.base import Teacher


def build_stage(
    config: StageConfig,
    teacher: Teacher | None = None,
    loop: EventLoop | None = None,
    store: DatasetStore | None = None,
) -> Stage:
    """The stage a config describes; the judge needs a `teacher` (and runs it on `loop`);
    dedup stages with `against:` resolve its refs in `store` (default: the default store)."""
    from curation.config import PluginStageConfig
    from factory.errors import ConfigError

    if isinstance(config, PluginStageConfig):  # a user's own stage, by import path or entry point
        return config.build()
    if config.stage == "judge":
        if teacher is None:
            raise ConfigError("stage 'judge' needs a teacher (add a `teacher` section)")
        return STAGES["judge"](config, teacher, loop)
    stage = STAGES[config.stage](config)
    if getattr(config, "against", None):
        stage.reference_store = store
    return stage


__all__ = [
    "STAGES",
    "Scope",
    "build_stage",
    "Consistency",
    "Entropy",
    "ExactDedup",
    "Heuristics",
    "Judge",
    "MinHashDedup",
    "SemanticDedup",
    "Stage",
    "StageInputError",
]
