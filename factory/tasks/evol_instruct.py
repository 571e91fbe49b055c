"""Evol-Instruct (Xu et al., 2023): evolve instructions with five mutations, eliminate failures.

Each generation rewrites every active instruction with one mutation drawn from the
config (four in-depth ones: add constraints, deepen, concretize, increase
reasoning steps; and in-breadth), using distilabel's canonical templates rendered
here. An evolution is eliminated, with its reason recorded, when it copies the
rewriting scaffold, when the teacher judges it "Equal" to its parent (the paper's
equality check: same constraints, depth and breadth) or gives no readable verdict, when its
answer is a short "sorry", or when its answer is only punctuation and stop words.
A survivor replaces its parent for the next generation; after a failure the parent
is evolved again, as in the paper. The rewritten prompt is the parent's instruction
and input together, so an evolved record is self-contained (its input is empty).
"""

from __future__ import annotations

import random
import re
from typing import Any

import polars as pl
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from factory.shards import ShardWriter
from factory.tasks.base import (
    ShardBuffer,
    Task,
    failure_reason,
    first_text,
    generate_batched,
    generation_columns,
    live_records,
    new_record,
    prompt_text,
    rejected,
    require_columns,
    stable_seed,
)
from factory.tasks.config import EvolInstructConfig
from factory.tasks.parsing import parse_equal_verdict
from factory.teachers.base import Generation, Teacher, TeacherRequest

STAGE = "evol_instruct"

# our mutation names -> keys of distilabel.steps.tasks.evol_instruct.utils.MUTATION_TEMPLATES
TEMPLATE_KEYS = {
    "add_constraints": "CONSTRAINTS",
    "deepen": "DEEPENING",
    "concretize": "CONCRETIZING",
    "increase_reasoning": "INCREASED_REASONING_STEPS",
    "in_breadth": "BREADTH",
}

# The paper's equality check (Xu et al. 2023, appendix G): same constraints and requirements,
# same depth and breadth; the judge answers "Equal" or "Not Equal".
EQUALITY_PROMPT = (
    "Here are two instructions for an AI assistant. Are they equal to each other, meaning that:\n"
    "1. they have the same constraints and requirements, and\n"
    "2. they have the same depth and breadth of inquiry?\n\n"
    "The first instruction:\n{parent}\n\nThe second instruction:\n{evolved}\n\n"
    "Your judgement (answer only Equal or Not Equal, without explanation):"
)


def mutation_templates() -> dict[str, str]:
    from factory.tasks.distilabel_task import import_distilabel

    MUTATION_TEMPLATES = import_distilabel("distilabel.steps.tasks.evol_instruct.utils").MUTATION_TEMPLATES
    return {name: MUTATION_TEMPLATES[key] for name, key in TEMPLATE_KEYS.items()}


def render_mutation(template: str, prompt: str) -> str:
    return template.replace("<PROMPT>", prompt)


class CopiedScaffold:
    """The evolved prompt repeats the rewriting template's own vocabulary."""

    phrases = ("#the given prompt#", "#given prompt#", "#rewritten prompt#", "#created prompt#",
               "given prompt", "rewritten prompt", "created prompt")  # fmt: skip

    def check(self, evolved: str) -> str | None:
        lowered = evolved.lower()
        phrase = next((phrase for phrase in self.phrases if phrase in lowered), None)
        return f"copied_scaffold: {phrase!r}" if phrase else None


class SorryResponse:
    """The teacher could not answer the evolved instruction: a short reply containing "sorry"."""

    def __init__(self, max_words: int) -> None:
        self.max_words = max_words

    def check(self, response: str) -> str | None:
        words = len(response.split())
        if re.search(r"\bsorry\b", response, re.I) and words < self.max_words:
            return f"sorry_response: {words} words"
        return None


class OnlyStopWords:
    """The answer holds no content word: only punctuation and stop words (or nothing)."""

    def check(self, response: str) -> str | None:
        words = re.findall(r"[^\W_]+(?:'[^\W_]+)?", response.lower())
        content = [word for word in words if word not in ENGLISH_STOP_WORDS]
        return None if content else "only_stopwords"


class NoInformationGain:
    """The teacher judged the evolution equal to its parent: it adds no information. An unreadable
    verdict is no judgement, so that evolution does not pass either."""

    def check(self, verdict: str | None) -> str | None:
        equal = parse_equal_verdict(verdict)
        if equal is None:
            return f"unparsable_equality_verdict: {(verdict or '').strip()[:40]!r}"
        return "no_information_gain" if equal else None


class EvolInstruct(Task):
    stage = STAGE

    def __init__(self, config: EvolInstructConfig) -> None:
        self.config = config
        self.templates = mutation_templates()
        self.scaffold = CopiedScaffold()
        self.gain = NoInformationGain()
        self.response_rules = [SorryResponse(config.sorry_max_words), OnlyStopWords()]
        self.stats: dict[str, int] = {}

    def estimate_requests(self, n_records: int) -> int:
        per_evolution = 2 + (1 if self.config.check_information_gain else 0)  # evolve, answer, judge
        return n_records * self.config.generations * per_evolution

    def _evolve_request(self, parent: dict[str, Any], mutation: str, generation: int) -> TeacherRequest:
        prompt = render_mutation(self.templates[mutation], prompt_text(parent["instruction"], parent["input"]))
        return TeacherRequest.chat(
            prompt,
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
            seed=stable_seed(self.config.seed, "evolve", parent["id"], generation),
        )

    async def run(self, records: pl.DataFrame, teacher: Teacher, shards: ShardWriter | None = None) -> pl.DataFrame:
        require_columns(records, ["id", "instruction"], STAGE)
        records = live_records(records)
        config = self.config
        buffer = ShardBuffer(shards, config.shard_size)
        inputs = records["input"].fill_null("") if "input" in records.columns else [""] * records.height
        active = [
            {"id": i, "instruction": instruction, "input": text}
            for i, instruction, text in zip(records["id"], records["instruction"], inputs)
        ]
        emitted: set[str] = set()
        self.stats = {"evolved": 0, "kept": 0, "eliminated": 0, "failed_requests": 0, "repeated": 0}
        for generation in range(config.generations):
            mutations = [
                random.Random(stable_seed(config.seed, "mutation", parent["id"], generation)).choice(config.mutations)
                for parent in active
            ]
            evolutions = await generate_batched(
                teacher,
                [self._evolve_request(p, m, generation) for p, m in zip(active, mutations)],
                f"evolve generation {generation + 1}/{config.generations}",
                config.batch_size,
            )
            candidates: list[tuple[int, dict[str, Any]]] = []  # (index in active, row)
            rows: list[dict[str, Any]] = []
            for index, (parent, mutation, evolution) in enumerate(zip(active, mutations, evolutions)):
                text = first_text(evolution)
                if text is None:
                    self.stats["failed_requests"] += 1
                    continue
                evolved = text.strip().strip('"').strip()
                row = new_record(evolved, "", f"evol:{mutation}", parent["id"])
                if row["id"] in emitted:
                    self.stats["repeated"] += 1
                    continue
                emitted.add(row["id"])
                self.stats["evolved"] += 1
                reason = "empty_evolution" if not evolved else self.scaffold.check(evolved)
                if reason:
                    rows.append(rejected(row, STAGE, reason))
                else:
                    candidates.append((index, row))
            survivors = await self._judge(candidates, active, teacher, generation, rows)
            for index, row in survivors:
                active[index] = {"id": row["id"], "instruction": row["instruction"], "input": ""}
            self.stats["kept"] += len(survivors)
            self.stats["eliminated"] += sum(1 for row in rows if row.get("drop_stage"))
            buffer.add(rows)
        return buffer.finish()

    async def _judge(self, candidates, active, teacher: Teacher, generation: int, rows: list[dict[str, Any]]):
        """Answer each candidate and (optionally) ask whether it gains over its parent; apply the rules."""
        config = self.config
        answer_requests = [
            TeacherRequest.chat(
                row["instruction"],
                temperature=0.0,
                max_tokens=config.response_max_tokens,
                top_logprobs=config.top_logprobs,
                seed=stable_seed(config.seed, "answer", row["id"]),
            )
            for _, row in candidates
        ]
        answers = await generate_batched(
            teacher, answer_requests, f"answer generation {generation + 1}", config.batch_size
        )
        judged: list[Generation | None] = [None] * len(candidates)
        if config.check_information_gain:
            judge_requests = [
                TeacherRequest.chat(
                    EQUALITY_PROMPT.format(
                        parent=prompt_text(active[index]["instruction"], active[index]["input"]),
                        evolved=row["instruction"],
                    ),
                    temperature=0.0,
                    max_tokens=16,
                    seed=stable_seed(config.seed, "gain", row["id"]),
                )
                for index, row in candidates
            ]
            judged = await generate_batched(
                teacher, judge_requests, f"judge generation {generation + 1}", config.batch_size
            )
        survivors = []
        for (index, row), answer, judgement in zip(candidates, answers, judged):
            if not answer.ok or not answer.samples:
                rows.append(rejected(row, STAGE, failure_reason(answer)))
                continue
            row = {**row, **generation_columns(answer)}
            reason = None
            if judgement is not None:  # an evolution nobody could judge does not pass
                verdict = first_text(judgement)
                reason = self.gain.check(verdict) if judgement.ok else failure_reason(judgement)
            if reason is None:
                reason = next((r for rule in self.response_rules if (r := rule.check(row["response"]))), None)
            if reason:
                rows.append(rejected(row, STAGE, reason))
            else:
                rows.append(row)
                survivors.append((index, row))
        return survivors
