"""The judge stage: prompts through a Teacher, a strict final score line, one retry, unscored rows dropped or kept.

The teacher here is a small test-local subclass of the real `Teacher` contract that
returns canned replies: what is under test is the judge's prompting and parsing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import polars as pl
import pytest
from pydantic import ValidationError

from curation.config import JudgeConfig
from curation.pipeline import run_stages
from curation.stages import Judge, build_stage
from curation.stages.judge import parse_score
from factory.errors import StillhouseError
from factory.schema import conform
from factory.teachers.base import Generation, Sample, Teacher, TeacherIdentity, TeacherRequest


class CannedTeacher(Teacher):
    """Answers the n-th request with replies[n]; None stands for a request that failed."""

    def __init__(self, replies: list[str | None]) -> None:
        self.identity = TeacherIdentity(backend="scripted", model="canned-judge")
        self.replies = replies
        self.requests: list[TeacherRequest] = []

    async def generate(self, requests: Sequence[TeacherRequest]) -> list[Generation]:
        out = []
        for request in requests:
            reply = self.replies[len(self.requests)]
            self.requests.append(request)
            if reply is None:
                out.append(Generation(request=request, teacher=self.identity, error="HTTP 500 after 3 retries"))
            else:
                out.append(Generation(request=request, teacher=self.identity, samples=[Sample(text=reply)]))
        return out


def frame_of(n: int) -> pl.DataFrame:
    rows = {
        "id": [f"r{k}" for k in range(n)],
        "instruction": [f"Add {k} and {k}." for k in range(n)],
        "input": ["" if k % 2 else "show your work" for k in range(n)],
        "origin": ["seed"] * n,
        "response": [f"{2 * k}" for k in range(n)],
    }
    return pl.from_arrow(conform(pl.DataFrame(rows)))


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("The answer is right and concise.\nScore: 7", 7.0),
        ("Clear and correct.\n**Score: 9**", 9.0),
        ("Good.\nScore: 8/10\n\n", 8.0),
        ("Minor gaps.\n[[6]]", 6.0),
        ("Score: 2 (was 9 before the fix)\nScore: 6.", 6.0),
    ],
)
def test_parse_score_reads_the_final_score_line(reply, score):
    parsed, _, error = parse_score(reply, 1, 10)
    assert error is None and parsed == score


@pytest.mark.parametrize(
    "reply",
    [
        # the cases: the old parser read 1 and 10 from the explanation
        "Rating: 7. Solid answer, judged on the rating scale 1 to 10",
        "Score: 7\nClear, with one slip; a grade of 10 is reserved for flawless answers.",
        "Solid work. 8/10",  # no verdict line
        '{"score": 6}',
        "I cannot decide.",
        "",
    ],
)
def test_parse_score_takes_no_number_from_anywhere_but_the_last_line(reply):
    parsed, _, error = parse_score(reply, 1, 10)
    assert parsed is None and error.startswith("unparsable reply")


def test_judge_min_score_follows_the_rubric_scale():
    assert JudgeConfig().min_score == 6.0
    assert JudgeConfig(rubric="ultrafeedback").min_score == 3.0
    with pytest.raises(ValidationError, match="above the ultrafeedback scale's maximum 5"):
        JudgeConfig(rubric="ultrafeedback", min_score=6)


def test_parse_score_reports_out_of_range():
    assert parse_score("Score: 42", 1, 10)[2].startswith("score 42 outside 1-10")


def test_judge_retries_unparsable_replies_once_then_drops_them_with_reason():
    replies = [
        "Correct and complete.\nScore: 9",
        "Wrong sum.\nScore: 2",
        "I cannot decide.",  # unparsable: retried ...
        None,  # request failed for good: not retried
        "Fine answer, a 10 is for perfect ones.",  # unparsable: retried ...
        "Still undecided.",  # ... r2's retry: unparsable again
        "Score: 7",  # ... r4's retry: the verdict line
    ]
    teacher = CannedTeacher(replies)
    stage = build_stage(JudgeConfig(min_score=5, batch_size=2), teacher=teacher)
    out, funnel = run_stages(frame_of(5), [stage])
    rows = {r["id"]: r for r in out.iter_rows(named=True)}
    assert rows["r0"]["judge_score"] == 9.0 and rows["r0"]["judge_rationale"] == "Correct and complete."
    assert rows["r1"]["drop_reason"] == "low_judge_score: 2.0 < 5.0"
    assert rows["r2"]["judge_score"] is None and rows["r2"]["drop_stage"] == "judge"
    assert rows["r2"]["drop_reason"].startswith("judge_unparsable: unparsable reply")
    assert "after a retry" in rows["r2"]["judge_error"]
    assert rows["r3"]["drop_reason"] == "judge_failed: teacher error: HTTP 500 after 3 retries"
    assert rows["r4"]["judge_score"] == 7.0 and rows["r4"]["drop_stage"] is None
    assert rows["r4"]["judge_rationale"] == "Fine answer, a 10 is for perfect ones."
    assert funnel == [
        {
            "stage": "judge",
            "rows_in": 5,
            "dropped": {"judge_failed": 1, "judge_unparsable": 1, "low_judge_score": 1},
            "rows_out": 2,
        }
    ]
    assert stage.notes == [
        "judge: 2 of 5 replies unscored (1 unparsable after a retry, 1 failed); on_unparsable=drop (see judge_error)"
    ]
    # the rubric prompt carries the row and asks for the verdict line
    first = teacher.requests[0].messages[-1][1]
    assert "Add 0 and 0." in first and "show your work" in first and '"Score: N"' in first
    assert teacher.requests[0].temperature == 0.0
    # the retry shows the judge its own reply and asks for the line alone
    retry = teacher.requests[5].messages
    assert retry[:-2] == teacher.requests[2].messages and retry[-2] == ("assistant", "I cannot decide.")
    assert "Score: N" in retry[-1][1]


def test_judge_keeps_unscored_rows_when_asked():
    teacher = CannedTeacher(["Score: 8", "no verdict", "Score: 9", "still none"])
    out = Judge(JudgeConfig(on_unparsable="keep"), teacher).apply(frame_of(3))
    assert out["judge_score"].to_list() == [8.0, None, 9.0]
    assert out["drop_stage"].to_list() == [None, None, None]
    assert out["judge_error"][1].startswith("unparsable reply")


def test_a_judge_that_answers_gibberish_fails_the_run_unless_allowed(capsys):
    gibberish = ["lorem ipsum"] * 3 + [None] + ["lorem ipsum"] * 3  # 4 rows: one fails, three retried
    with pytest.raises(StillhouseError, match=r"judge 'judge' is not working: 4 of 4 replies unscored"):
        Judge(JudgeConfig(), CannedTeacher(list(gibberish))).apply(frame_of(4))
    allowed = Judge(JudgeConfig(allow_unparsable=True), CannedTeacher(list(gibberish))).apply(frame_of(4))
    assert allowed["drop_reason"].str.starts_with("judge_").all()
    assert "WARNING: judge 'judge' is not working: 4 of 4" in capsys.readouterr().err
    # half unscored is not "more than half": no error
    half = Judge(JudgeConfig(), CannedTeacher(["Score: 8", "x", "Score: 7", "y", "z", "w"])).apply(frame_of(4))
    assert half["judge_score"].to_list() == [8.0, None, 7.0, None]


def test_judge_skips_rows_already_dropped_and_runs_inside_an_event_loop():
    frame = frame_of(3).with_columns(
        pl.when(pl.col("id") == "r1").then(pl.lit("heuristics")).alias("drop_stage"),
        pl.when(pl.col("id") == "r1").then(pl.lit("empty")).alias("drop_reason"),
    )
    teacher = CannedTeacher(["Score: 8", "Score: 3"])

    async def inside_loop() -> pl.DataFrame:
        return Judge(JudgeConfig(min_score=None), teacher).apply(frame)

    out = asyncio.run(inside_loop())
    assert len(teacher.requests) == 2
    assert out["judge_score"].to_list() == [8.0, None, 3.0]
    assert out["drop_reason"].to_list() == [None, "empty", None]


@pytest.mark.slow
def test_judge_with_distilabel_ultrafeedback_rubric():
    teacher = CannedTeacher(
        [
            "#### Output for Text 1\nRating: 4\nRationale: Accurate and follows the instruction.",
            "#### Output for Text 1\nRating: 2\nRationale: The sum is wrong.",
            "Overall I'd say **Rating: 5**",  # not the format: retried
            "Rating: 5\nRationale: Correct.",
        ]
    )
    stage = Judge(JudgeConfig(rubric="ultrafeedback", min_score=3), teacher)
    out = stage.apply(frame_of(3))
    assert out["judge_score"].to_list() == [4.0, 2.0, 5.0]
    assert out["judge_rationale"][0] == "Accurate and follows the instruction."
    assert out["drop_reason"].to_list() == [None, "low_judge_score: 2.0 < 3.0", None]
    prompt = teacher.requests[0].messages[-1][1]
    assert "<text 1> 0" in prompt and "Instruction: Add 0 and 0." in prompt
