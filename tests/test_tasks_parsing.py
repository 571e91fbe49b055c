"""The parsers of teacher output, on well-formed and malformed replies."""

from __future__ import annotations

import polars as pl
import pytest

from factory.tasks.parsing import (
    Instance,
    extract_final_answer,
    final_answer_expr,
    parse_instances,
    parse_numbered_list,
    parse_yes_no,
)


def test_numbered_list_plain():
    assert parse_numbered_list("1. Write a poem about rain.\n2. Sort these numbers.") == [
        "Write a poem about rain.",
        "Sort these numbers.",
    ]


@pytest.mark.parametrize("text", ["", None, "   \n\n", "I could not think of any tasks, sorry."])
def test_numbered_list_empty_or_prose_only(text):
    assert parse_numbered_list(text) == []


def test_numbered_list_drops_truncated_last_item_only_when_truncated():
    text = "9. Name three rivers in Africa.\n10. Explain how a bill becomes a law in the Uni"
    assert parse_numbered_list(text, truncated=True) == ["Name three rivers in Africa."]
    assert parse_numbered_list(text, truncated=False)[-1].endswith("in the Uni")


def test_numbered_list_wrong_and_repeated_numbering():
    text = "9. First task here please.\n9. Second task here please.\n3) Third task here.\n15: Fourth task now."
    assert parse_numbered_list(text) == [
        "First task here please.",
        "Second task here please.",
        "Third task here.",
        "Fourth task now.",
    ]


def test_numbered_list_ignores_prose_around_the_list():
    text = (
        "Sure! Here are some new tasks:\n\n"
        "9. Suggest a name for a bakery.\n"
        "10. Summarise the article in one sentence.\n\n"
        "I hope these are helpful. Let me know if you want more."
    )
    assert parse_numbered_list(text) == ["Suggest a name for a bakery.", "Summarise the article in one sentence."]


def test_numbered_list_continuation_lines_labels_markdown_and_duplicates():
    text = (
        "**9.** Instruction: Write a limerick\nabout a cat who loves boxes.\n"
        "Task 10: Convert the temperature to Celsius.\n"
        "11 - Convert the temperature to Celsius.\n"
        "#12. **Rank the cities by population.**"
    )
    assert parse_numbered_list(text) == [
        "Write a limerick about a cat who loves boxes.",
        "Convert the temperature to Celsius.",
        "Rank the cities by population.",
    ]


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("Yes", True),
        ("yes.", True),
        ("**No**", False),
        ("Answer: no, it is open-ended.", False),
        ("True", True),
        ("I think the answer is yes", True),
        ("", None),
        (None, None),
        ("It depends on the labels.", None),
        ("Nope, not really", None),
        ("Yesterday", None),
    ],
)
def test_yes_no(text, verdict):
    assert parse_yes_no(text) is verdict


def test_instances_input_first_with_noinput_and_multiline_fields():
    text = (
        "Example 1\nInput: The cat sat.\nOutput: Le chat était assis.\n\n"
        "Example 2\nInput: <noinput>\nOutput: Line one\nline two"
    )
    assert parse_instances(text) == [
        Instance("The cat sat.", "Le chat était assis."),
        Instance("", "Line one\nline two"),
    ]


def test_instances_output_first_for_classification():
    text = "Label: positive\nInput: I loved it.\n\nClass label: negative\nInput: Awful service."
    assert parse_instances(text, first="label") == [
        Instance("I loved it.", "positive"),
        Instance("Awful service.", "negative"),
    ]


def test_instances_malformed():
    assert parse_instances("") == []
    assert parse_instances("no markers at all") == []
    # an output without its input is skipped; a trailing input without output keeps an empty output
    assert parse_instances("Output: orphan\nInput: last one") == [Instance("last one", "")]
    # truncated label list: the last label lost its input
    assert parse_instances("Label: a\nInput: x\nLabel: b", first="label") == [Instance("x", "a"), Instance("", "b")]


@pytest.mark.parametrize(
    "text, answer",
    [
        ("2 + 2 = 4.\nFinal answer: 4", "4"),
        ("Final answer: 3\nWait, recheck.\nFinal Answer: **5**", "5"),
        ("Before the final answer, add 5 and 7.\nFinal answer: 12", "12"),
        ("So the final answer is 12.", "12."),
        ("The answer is $36.00.", "$36.00."),
        ("no marker here", None),
        ("Final answer:   ", None),
        (None, None),
    ],
)
def test_final_answer(text, answer):
    assert extract_final_answer(text) == answer
    # the polars expression curation uses is the same parser
    assert pl.select(final_answer_expr(pl.lit(text, dtype=pl.String))).item() == answer
