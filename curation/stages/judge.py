"""LLM-as-judge through any teacher: a rubric prompt per row, a score and rationale parsed from the reply.

Rubrics: our own 1-10 rubric, or distilabel's UltraFeedback task (1-5 per aspect;
its prompt rendered by `format_input`, its reply parsed by `format_output`). Our
rubric asks for a strict last line, `Score: N` (or `[[N]]`), and only the reply's
last non-empty line is read: a number anywhere else ("on a scale of 1 to 10", "a
10 is reserved for...") is never taken for the verdict. A reply that does not end
that way gets one retry that shows the judge its reply and asks for the line alone.

A row still without a score (unparsable twice, or the request failed) is dropped
with its reason (`on_unparsable: drop`, the default) or kept unscored (`keep`);
either way `judge_error` says why. When more than half of the judged rows have no
score the judge itself is broken, not the data: the stage raises (the run fails)
unless `allow_unparsable: true`, in which case it says so in one loud line.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import polars as pl
from rich.console import Console

from curation.config import JudgeConfig
from curation.stages.base import Scope, Stage, active, progress
from factory.aio import EventLoop, default_loop
from factory.errors import StillhouseError
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

Give a one or two sentence rationale. Then end your reply with one last line of exactly the form
"Score: N", where N is a whole number from 1 to 10, and write nothing after it."""
RETRY_PROMPT = (
    'Your reply did not end with a line of the form "Score: N". Reply with that one line only, '
    "N a whole number from {low:g} to {high:g}."
)

# The whole last line: "Score: 7", "**Score: 7/10**", "[[7]]" (markdown emphasis and a final period allowed).
SCORE_LINE = re.compile(
    r"^[*_\s]*(?:score\s*[:=]\s*[*_]*\s*(?P<score>\d+(?:\.\d+)?)(?:\s*/\s*\d+)?|\[\[(?P<bracketed>\d+(?:\.\d+)?)\]\])"
    r"[*_\s.]*$",
    re.IGNORECASE,
)


class JudgeFailedError(StillhouseError):
    """Most judge replies gave no score: the judge teacher or its rubric is broken."""


def parse_score(reply: str, low: float, high: float) -> tuple[float | None, str | None, str | None]:
    """(score, rationale, error) from a judge reply's last non-empty line; exactly one of score/error is set."""
    lines = [line for line in reply.strip().splitlines() if line.strip()]
    if not lines:
        return None, None, "unparsable reply: empty"
    match = SCORE_LINE.match(lines[-1])
    if match is None:
        return None, None, f"unparsable reply (last line is not 'Score: N'): {lines[-1].strip()[:80]!r}"
    score = float(match.group("score") or match.group("bracketed"))
    rationale = "\n".join(lines[:-1]).strip() or None
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
    scope = Scope.ROW
    portable = False  # holds the teacher: runs in the driver, its requests fan out through the executor's teacher

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

    def retry_request(self, request: TeacherRequest, reply: str) -> TeacherRequest:
        """The request again with the unusable reply and a demand for the verdict line alone (a new
        request, so the response cache does not hand back the same reply)."""
        if self.config.rubric == "ultrafeedback":
            demand = 'Your reply did not follow the format. Reply with the two lines "Rating: N" and "Rationale: ...".'
        else:
            demand = RETRY_PROMPT.format(low=self.scale[0], high=self.scale[1])
        return replace(request, messages=(*request.messages, ("assistant", reply), ("user", demand)))

    def parse(self, generation: Generation) -> tuple[float | None, str | None, str | None]:
        if not generation.ok:
            return None, None, f"teacher error: {generation.error}"
        if not generation.samples:
            return None, None, "teacher returned no sample"
        reply = generation.samples[0].text or ""
        if self.config.rubric == "ultrafeedback":
            parsed = self.ultrafeedback.format_output(reply, {"instruction": "", "generations": [""]})
            rating = (parsed.get("ratings") or [None])[0]
            if rating is None:
                return None, None, f"unparsable reply (no 'Rating: N' / 'Rationale:' lines): {reply.strip()[:80]!r}"
            return _in_range(float(rating), (parsed.get("rationales") or [None])[0], *self.scale, reply)
        return parse_score(reply, *self.scale)

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        rows = active(frame) & frame["response"].is_not_null()
        todo = frame.with_row_index("_row").filter(rows).select("_row", "instruction", "input", "response")
        requests = [
            self.request(i, n or "", r) for i, n, r in zip(todo["instruction"], todo["input"], todo["response"])
        ]
        parsed = self.loop.run(self._judge(requests))
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
        self._check_unscored(results["judge_error"])
        unscored = pl.col("judge_error").is_not_null()
        if self.config.on_unparsable == "drop":
            failed = pl.col("judge_error").str.starts_with("teacher")
            reason = pl.when(failed).then(pl.lit("judge_failed: ")).otherwise(pl.lit("judge_unparsable: "))
            frame = self.drop(frame, unscored, pl.concat_str([reason, pl.col("judge_error")]))
        if self.config.min_score is None:
            return frame
        return self.drop(
            frame,
            pl.col("judge_score") < self.config.min_score,
            pl.format("low_judge_score: {} < {}", pl.col("judge_score"), pl.lit(self.config.min_score)),
        )

    def _check_unscored(self, errors: pl.Series) -> None:
        """Count rows without a score; more than half of them means the judge, not the data, is broken."""
        unscored, total = int(errors.is_not_null().sum()), errors.len()
        if not unscored:
            return
        failed = int(errors.str.starts_with("teacher").sum())
        counts = (
            f"{unscored} of {total} replies unscored ({unscored - failed} unparsable after a retry, {failed} failed)"
        )
        self.notes.append(f"{self.name}: {counts}; on_unparsable={self.config.on_unparsable} (see judge_error)")
        if 2 * unscored <= total:
            return
        example = errors.drop_nulls()[0]
        line = f"judge '{self.name}' is not working: {counts}; e.g. {example}"
        if not self.config.allow_unparsable:
            raise JudgeFailedError(f"{line}. Fix the judge teacher or rubric, or set allow_unparsable: true")
        warning = f"WARNING: {line} (allow_unparsable: true, continuing)"
        Console(stderr=True).print(warning, style="bold red", markup=False, highlight=False)

    async def _judge(self, requests: list[TeacherRequest]) -> list[tuple[float | None, str | None, str | None]]:
        """(score, rationale, error) per request: judge every row, then retry the unparsable replies once."""
        generations = await self._generate(requests)
        parsed = [self.parse(generation) for generation in generations]
        retry = [i for i, (score, _, _) in enumerate(parsed) if score is None and generations[i].samples]
        if not retry:
            return parsed
        replies = {i: generations[i].samples[0].text or "" for i in retry}
        retried = await self._generate([self.retry_request(requests[i], replies[i]) for i in retry])
        for i, generation in zip(retry, retried):
            score, rationale, error = self.parse(generation)
            if score is None:
                parsed[i] = (None, None, f"{parsed[i][2]}; after a retry: {error}")
            else:  # the retry holds the verdict line, the first reply the reasoning
                parsed[i] = (score, rationale or replies[i].strip() or None, None)
        return parsed

    async def _generate(self, requests: list[TeacherRequest]) -> list[Generation]:
        size = self.config.batch_size
        batches = [requests[i : i + size] for i in range(0, len(requests), size)]
        generations: list[Generation] = []
        for batch in progress(batches, total=len(batches), description=f"{self.name}: judging"):
            generations.extend(await self.teacher.generate(batch))
        return generations
