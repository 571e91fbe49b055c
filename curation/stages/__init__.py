"""Curation stages: one small class per filter, one file each (see base.Stage for the contract)."""

from __future__ import annotations

from curation.stages.base import Stage, StageInputError
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

__all__ = [
    "STAGES",
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
