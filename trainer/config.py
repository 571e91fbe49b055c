"""The training config: which dataset version, which objective, which student, how.

One pydantic model per concept; unknown keys are rejected everywhere so a typo in a
YAML file is an error, not a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class CausalLMStudent(BaseModel):
    """A Hugging Face causal LM directory (SFT or token-level KD)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["causal_lm"] = "causal_lm"
    path: str = Field(description="Local directory of the student model and its tokenizer.")
    max_length: int = Field(512, ge=8, description="Longest prompt+response, in tokens (longer ones are cut).")
    packing: bool = Field(
        False,
        description="Not supported: packed examples would attend to each other (no per-example attention mask).",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, about a third more compute."
    )


class HashedBagStudent(BaseModel):
    """fastText-style classifier: hashed word + char n-gram embeddings, averaged, one linear layer."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["hashed_bag"] = "hashed_bag"
    buckets: int = Field(1 << 16, ge=16, description="Hash buckets shared by all n-grams.")
    dim: int = Field(64, ge=2, description="Embedding width.")
    word_ngrams: int = Field(2, ge=1, le=4, description="Word n-grams up to this length.")
    char_ngrams: tuple[int, int] = Field((3, 5), description="Character n-gram lengths (min, max) inside words.")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=0.5, description="Rows held out to fit the calibration temperature (0: no calibration)."
    )


class StaticEmbeddingStudent(BaseModel):
    """Token embeddings distilled from the teacher's own encoder (Model2Vec-style), averaged, one linear layer."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["static_embedding"] = "static_embedding"
    encoder: Path | None = Field(
        None,
        description="Sentence encoder (or encoder_head teacher directory) to distill the token vectors from "
        "[default: the encoder of the classifier teacher that labelled the dataset, else the offline MiniLM].",
    )
    dim: int = Field(256, ge=2, description="Embedding width (PCA of the encoder's token vectors).")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=0.5, description="Rows held out to fit the calibration temperature (0: no calibration)."
    )
    match_teacher: Literal["auto", "off"] = Field(
        "auto",
        description="auto: when an encoder_head classifier teacher labelled the dataset, first train the averaged "
        "vectors to point where the teacher's sentence embeddings point on the dataset's texts and use the "
        "teacher's own head, then train that head on the dataset's labels; off: KD on the labels alone.",
    )
    hidden: int = Field(
        512,
        ge=0,
        description="Width of a residual one-hidden-layer MLP (GELU) added to the linear map into the teacher's "
        "space, for matched students (0: the linear map alone).",
    )
    pooling: Literal["attention", "mean"] = Field(
        "attention",
        description="How a matched student pools its token vectors: attention with one learned query (a token's "
        "weight follows from its vector, so it carries over to unseen words) or the plain mean. Unmatched "
        "students take the mean.",
    )
    context_heads: int = Field(
        4,
        ge=0,
        description="Heads of one self-attention layer (learned positions, no feed-forward) over a matched "
        "student's token vectors, trained to reproduce the teacher's contextual token vectors as well as its "
        "sentence embeddings: word order, at about 0.2 ms more per prediction and about twice the matching "
        "time (five quickstart seeds: mean 0.959 of the teacher against 0.944 without it; SST-2 0.951 against "
        "0.948, Banking77 0.974 against 0.965). 0: a bag of vectors. Unmatched students have none.",
    )
    context_width: int = Field(
        64,
        ge=1,
        description="Width of the context layer's queries, keys and values (a multiple of context_heads): the "
        "layer adds a low-rank correction to the token vectors.",
    )
    match_texts: int = Field(
        20000,
        ge=0,
        description="A matched student also learns the teacher's embeddings of perturbed copies of the training "
        "texts (word dropout and windows; no labels needed), as many copies per text (at most 16) as "
        "bring the texts it matches to about this number (0: the training texts alone).",
    )
    match_epochs: int = Field(
        20, ge=1, description="Most epochs of matching the teacher's embeddings (stops early on the held-out rows)."
    )
    match_data: Path | None = Field(
        None,
        description="A JSONL/CSV/Parquet file of more in-domain texts whose teacher embeddings a matched student "
        "learns too (no labels needed), with their perturbed copies: above all the examples the teacher was "
        "trained on, where its head draws its boundaries [default in a run: teacher_training.data; else none].",
    )
    match_text_column: str = Field("text", description="The column of match_data that holds the texts.")

    @field_validator("match_data")
    @classmethod
    def _match_data_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():  # before a run spends its teacher's time, not after
            raise ValueError(f"{path} is not a file (from {Path.cwd()})")
        return path


StudentConfig = Annotated[Union[CausalLMStudent, HashedBagStudent, StaticEmbeddingStudent], Field(discriminator="type")]


class TrainConfig(BaseModel):
    """`stillhouse train CONFIG`: distill a student from one published dataset version."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="Dataset ref: name, name@latest or name@vN.")
    store_root: Path | None = Field(None, description="Dataset store root [default: $STILLHOUSE_DATASETS].")
    objective: Literal["sft", "token_kd", "classifier_kd"] = "classifier_kd"
    # default: the student that measured best across tasks (benchmarks/distill_classifier.py, README)
    student: StudentConfig = Field(default_factory=StaticEmbeddingStudent)
    output_dir: Path = Field(description="Where the trained model, checkpoints and provenance are written.")

    lr: float | None = Field(None, gt=0, description="Peak learning rate [default: 0.2 classifiers, 1e-4 causal_lm].")
    weight_decay: float = Field(0.0, ge=0)
    epochs: float = Field(5, gt=0)
    batch_size: int = Field(32, ge=1, description="Examples per optimizer step, over all processes and micro-batches.")
    seed: int = 0
    # defaults: the better student of benchmarks/distill_banking77.py (KD on soft targets, T = 1, alpha = 1)
    temperature: float = Field(1.0, gt=0, description="Distillation temperature T (KD objectives).")
    alpha: float = Field(
        1.0, ge=0, le=1, description="Weight of the KD term; 1 - alpha goes to cross-entropy on the hard label/token."
    )
    kl: Literal["forward", "reverse"] = Field("forward", description="KL(teacher||student) or KL(student||teacher).")
    lora: bool = Field(False, description="Causal students: train LoRA adapters (peft) instead of all weights.")
    lora_rank: int = Field(8, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="Save a resumable checkpoint every N optimizer steps (0: off).")
    resume: bool = Field(True, description="Continue from the last checkpoint in output_dir when there is one.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads [default: torch's choice].")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="Where the student trains: auto takes cuda, else mps, else cpu."
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Autocast precision of the forward pass (weights stay fp32; fp16 adds loss scaling)."
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches per optimizer step; batch_size stays the examples per step."
    )

    @model_validator(mode="after")
    def _objective_fits_student(self) -> TrainConfig:
        causal = self.student.type == "causal_lm"
        if causal and self.objective == "classifier_kd":
            raise ValueError("objective 'classifier_kd' needs a classifier student (static_embedding or hashed_bag)")
        if not causal and self.objective != "classifier_kd":
            raise ValueError(f"objective '{self.objective}' needs a causal LM student (student.type: causal_lm)")
        if self.lora and not causal:
            raise ValueError("lora applies to causal_lm students only")
        if causal and self.student.packing:
            raise ValueError(
                "student.packing is not supported: packed examples would attend to each other without a "
                "per-example attention mask; batches are padded to their longest example instead"
            )
        return self

    def fingerprint(self) -> str:
        """Hash of everything that shapes the weights: a checkpoint from another config is not resumed."""
        settings = self.model_dump(
            mode="json", exclude={"output_dir", "resume", "checkpoint_every", "threads", "device"}
        )
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:16]

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-4 if self.student.type == "causal_lm" else 0.2
