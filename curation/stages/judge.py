"""LLM-as-judge through any teacher: a rubric prompt per row, a score and rationale parsed from the reply.

Rubrics: our own 1-10 rubric, or distilabel's UltraFeedback task (1-5 per aspect;
its prompt rendered by `format_input`, its reply parsed by `format_output`). Replies
are parsed robustly ("Score: 7", "7/10", "**Rating: 8**", JSON, a bare number). A
reply that cannot be parsed, or a request that failed, is recorded in `judge_error`
and counted in the stage notes: it gets no score and is not dropped as low quality.
"""

from __future__ import annotations

import json
import re
from typing import Any

import polars as pl

from curation.config import JudgeConfig
from curation.stages.base import Stage, active, progress
from factory.aio import EventLoop, default_loop
from factory.teachers.base import Generation, Teacher, TeacherRequest

SYSTEM = "You are a careful, strict evaluator of answers written by an AI assistant."
RUBRIC_1_10 = """Rate the response to the instruction below on a scale from 1 to 10.

10: fully correct, complete, follows every constraint of the instruction, clearly written.
7-9: correct and helpful with minor omissions or style issues.
4-6: partly correct or partly follows the instruction; noticeable errors or gaps.
1-3: wrong, irrelevant, refuses without reason, or ignores the instruction.

Instruction:
{instruction}
{input_block}
Response:
{response}

Give a one or two sentence rationale, then end with a line of the form "Score: N"."""

_NUMBER = r"(\d+(?:\.\d+)?)"
SCORE_PATTERNS = [
    r"(?i)\b(?:score|rating|grade)\b[^\d\n]{0,12}?" + _NUMBER + r"(?:\s*(?:/|out of)\s*(?:10|5))?",
    _NUMBER + r"\s*(?:/|out of)\s*(?:10|5)\b",
]


def parse_score(reply: str, low: float, high: float) -> tuple[float | None, str | None, str | None]:
    """(score, rationale, error) from a judge reply; exactly one of score/error is set."""
    text = reply.strip()
    rationale = None
    payload = re.search(r"\{.*\}", text, flags=re.DOTALL)
    if payload:
        try:
            data = json.loads(payload.group(0))
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            for key in ("score", "rating", "grade"):
                try:
                    score = float(data[key])
                except (KeyError, TypeError, ValueError):
                    continue
                rationale = next((str(data[k]) for k in ("rationale", "explanation", "reason") if k in data), None)
                return _in_range(score, rationale, low, high, reply)
    score = None
    for pattern in SCORE_PATTERNS:
        matches = re.findall(pattern, text)
        if matches:
            score = float(matches[-1])  # the verdict comes last
            break
    if score is None and re.fullmatch(r"\**\s*" + _NUMBER + r"\s*\**\.?", text):
        score = float(re.sub(r"[^\d.]", "", text).rstrip("."))
    if score is None:
        return None, None, f"unparsable reply: {text[:80]!r}"
    rationale = re.sub(r"(?im)^.*\b(?:score|rating|grade)\b.*$", "", text).strip() or None
    return _in_range(score, rationale, low, high, reply)


def _in_range(score: float, rationale: str | None, low: float, high: float, reply: str) -> tuple:
    if not low <= score <= high:
        return None, None, f"score {score:g} outside {low:g}-{high:g}: {reply.strip()[:80]!r}"
    return score, rationale, None


class _PromptOnlyLLM:
    """distilabel tasks need an `llm` to exist; ours only renders prompts and parses replies."""

    @staticmethod
    def build() -> Any:
        from factory.tasks.distilabel_task import import_distilabel

        class PromptOnly(import_distilabel("distilabel.models.llms.base").LLM):
            @property
            def model_name(self) -> str:
                return "stillhouse-teacher"

            def generate(self, inputs: Any, num_generations: int = 1, **kwargs: Any) -> Any:
                raise RuntimeError("Stillhouse sends judge prompts through its own teacher")

        return PromptOnly()


class Judge(Stage):
    def __init__(self, config: JudgeConfig | None, teacher: Teacher, loop: EventLoop | None = None) -> None:
        super().__init__()
        self.config = config or JudgeConfig()
        self.name = self.config.name or "judge"
        self.teacher = teacher
        # The loop the teacher's connections live on: the run's, else the process-wide one.
        # Close the teacher on the same loop (`loop.run(teacher.close())`).
        self.loop = loop or default_loop()
        self._ultrafeedback = None
        self.scale = self.config.scale

    @property
    def required_columns(self) -> tuple[str, ...]:
        return ("instruction", "input", "response")

    @property
    def ultrafeedback(self) -> Any:
        if self._ultrafeedback is None:
            from factory.tasks.distilabel_task import distilabel_quietly

            with distilabel_quietly():
                from distilabel.steps.tasks import UltraFeedback

                self._ultrafeedback = UltraFeedback(aspect=self.config.aspect, llm=_PromptOnlyLLM.build())
                self._ultrafeedback.load()
        return self._ultrafeedback

    def request(self, instruction: str, input: str, response: str) -> TeacherRequest:
        params = {"max_tokens": self.config.max_tokens, "temperature": self.config.temperature}
        if self.config.rubric == "ultrafeedback":
            prompt = f"{instruction}\n\n{input}" if input else instruction
            messages = self.ultrafeedback.format_input({"instruction": prompt, "generations": [response]})
            return TeacherRequest(messages=tuple((m["role"], m["content"]) for m in messages), **params)
        input_block = f"\nInput:\n{input}\n" if input else ""
        user = RUBRIC_1_10.format(instruction=instruction, input_block=input_block, response=response)
        return TeacherRequest.chat(user, system=SYSTEM, **params)

    def parse(self, generation: Generation) -> tuple[float | None, str | None, str | None]:
        if not generation.ok:
            return None, None, f"teacher error: {generation.error}"
        if not generation.samples:
            return None, None, "teacher returned no sample"
        reply = generation.samples[0].text or ""
        if self.config.rubric == "ultrafeedback":
            parsed = self.ultrafeedback.format_output(reply, {"instruction": "", "generations": [""]})
            rating = (parsed.get("ratings") or [None])[0]
            if rating is not None:
                return _in_range(float(rating), (parsed.get("rationales") or [None])[0], *self.scale, reply)
        return parse_score(reply, *self.scale)

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        rows = active(frame) & frame["response"].is_not_null()
        todo = frame.with_row_index("_row").filter(rows).select("_row", "instruction", "input", "response")
        requests = [
            self.request(i, n or "", r) for i, n, r in zip(todo["instruction"], todo["input"], todo["response"])
        ]
        generations = self.loop.run(self._generate(requests))
        parsed = [self.parse(g) for g in generations]
        results = pl.DataFrame(
            {
                "_row": todo["_row"],
                "judge_score": pl.Series([p[0] for p in parsed], dtype=pl.Float64),
                "judge_rationale": pl.Series([p[1] for p in parsed], dtype=pl.String),
                "judge_error": pl.Series([p[2] for p in parsed], dtype=pl.String),
            }
        )
        scored = frame.with_row_index("_row").drop(
            [c for c in ("judge_score", "judge_rationale", "judge_error") if c in frame.columns]
        )
        frame = scored.join(results, on="_row", how="left").sort("_row").drop("_row")
        errors = int(results["judge_error"].is_not_null().sum())
        if errors:
            self.notes.append(f"{self.name}: {errors} of {len(requests)} replies unparsed or failed (see judge_error)")
        if self.config.min_score is None:
            return frame
        return self.drop(
            frame,
            pl.col("judge_score") < self.config.min_score,
            pl.format("low_judge_score: {} < {}", pl.col("judge_score"), pl.lit(self.config.min_score)),
        )

    async def _generate(self, requests: list[TeacherRequest]) -> list[Generation]:
        size = self.config.batch_size
        batches = [requests[i : i + size] for i in range(0, len(requests), size)]
        generations: list[Generation] = []
        for batch in progress(batches, total=len(batches), description=f"{self.name}: judging"):
            generations.extend(await self.teacher.generate(batch))
        return generations
