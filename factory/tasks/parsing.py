"""Parsers for teacher output: numbered lists, yes/no verdicts, instances, final answers.

Teachers answer in free text; every parser here expects the worst (empty output,
a truncated last item, wrong or repeated numbering, prose around the answer) and
returns what it can instead of raising.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

# "3. text", "3) text", "3: text", "3 - text", "#3. text", "Task 3: text", "**3.** text"
NUMBERED_ITEM = re.compile(r"^\s*(?:\*\*)?(?:#\s*|task\s+|instruction\s+)?(\d{1,3})\s*(?:[.):]|\s-)\**\s*(.*)$", re.I)
ITEM_LABEL = re.compile(r"^(?:\*\*)?(?:instruction|task|prompt)\s*:\s*(?:\*\*)?\s*", re.I)
YES_NO = re.compile(r"\b(yes|no|true|false)\b", re.I)
EQUAL_VERDICT = re.compile(r"\b(not\s+equal|unequal|equal)\b", re.I)
YES_NO_WORD = re.compile(r"\b(yes|no)\b", re.I)
# "Final answer: X", "final answer is X", "The answer is X". One pattern for the Python parser
# and the polars expression below (its syntax is valid for both `re` and Rust's regex).
FINAL_ANSWER_PATTERN = r"(?i)\b(?:final answer\s*(?:is\b\s*:?|[:\-])|the answer is\b\s*:?)\s*(.+)"
FINAL_ANSWER = re.compile(FINAL_ANSWER_PATTERN)
NO_INPUT = {"", "<noinput>", "<no input>", "none", "n/a", "null", "-", "no input", "(none)", "<none>"}


def parse_numbered_list(text: str | None, truncated: bool = False) -> list[str]:
    """Items of a numbered list in the order written, whatever their numbers.

    Prose before the first item and after a blank line that follows the last item
    is ignored; unnumbered lines directly under an item continue it. With
    `truncated` (the teacher stopped at its token limit) the last item is dropped,
    since it is likely cut off mid-sentence. Duplicates keep their first position.
    """
    if not text:
        return []
    items: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        match = NUMBERED_ITEM.match(line)
        if match:
            if current is not None:
                items.append(" ".join(current))
            current = [match.group(2).strip()]
        elif current is not None:
            if line.strip():
                current.append(line.strip())
            else:  # a blank line ends the item; whatever prose follows is not part of it
                items.append(" ".join(current))
                current = None
    if current is not None:
        items.append(" ".join(current))
        if truncated:
            items.pop()
    cleaned: list[str] = []
    for item in items:
        item = ITEM_LABEL.sub("", item).strip().strip("*").strip()
        item = re.sub(r"\s+", " ", item)
        if item and item not in cleaned:
            cleaned.append(item)
    return cleaned


def parse_yes_no(text: str | None) -> bool | None:
    """True for yes, False for no, None when the text says neither (first verdict word wins)."""
    if not text:
        return None
    match = YES_NO.search(text)
    if match is None:
        return None
    return match.group(1).lower() in ("yes", "true")


def parse_equal_verdict(text: str | None) -> bool | None:
    """Evol-Instruct's equality check: True for "Equal", False for "Not Equal", None for neither.

    The last verdict word wins (the conclusion follows the reasoning). A reply that
    answers the question "are they equal?" with yes/no instead is read the same way:
    "No new constraint is added, so yes." is equal.
    """
    if not text:
        return None
    verdicts = EQUAL_VERDICT.findall(text)
    if verdicts:
        return verdicts[-1].lower() == "equal"
    answers = YES_NO_WORD.findall(text)
    return answers[-1].lower() == "yes" if answers else None


@dataclass(frozen=True)
class Instance:
    input: str
    output: str


def _clean_field(value: str) -> str:
    value = value.strip().strip("*").strip()
    return "" if value.lower() in NO_INPUT else value


def parse_instances(text: str | None, first: str = "input") -> list[Instance]:
    """Instances written as `Input: ... Output: ...` blocks (or `Label: ... Input: ...` with first="label").

    Fields may span lines; blocks may be numbered or prefixed with "Example N";
    a block whose leading field is missing is skipped, a missing second field is empty.
    """
    if not text:
        return []
    lead, second = ("label", "input") if first == "label" else ("input", "output")
    leads = {"label": r"(?:class\s+)?label|class", "input": r"input"}
    seconds = {"input": r"input", "output": r"output"}
    marker = re.compile(
        rf"^\s*(?:\d+[.)]\s*)?(?:\*\*)?(?P<field>{leads[lead]}|{seconds[second]})(?:\*\*)?\s*:\s*(?:\*\*)?",
        re.I | re.M,
    )
    matches = list(marker.finditer(text))
    instances: list[Instance] = []
    pending: str | None = None
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        value = re.sub(r"\n\s*example\s*\d*\s*:?\s*$", "", text[match.end() : end].strip(), flags=re.I)
        is_lead = re.fullmatch(leads[lead], match.group("field"), re.I) is not None
        if is_lead:
            if pending is not None:
                instances.append(_instance(lead, pending, ""))
            pending = _clean_field(value)
        elif pending is not None:
            instances.append(_instance(lead, pending, _clean_field(value)))
            pending = None
    if pending is not None:
        instances.append(_instance(lead, pending, ""))
    return instances


def _instance(lead: str, lead_value: str, second_value: str) -> Instance:
    if lead == "label":  # output-first: the label is the instance's output
        return Instance(input=second_value, output=lead_value)
    return Instance(input=lead_value, output=second_value)


def extract_final_answer(text: str | None) -> str | None:
    """The rest of the line after the last final-answer marker ("Final answer:", "The answer is"), or None.

    The last one wins: reasoning often says "final answer" before it gives one.
    """
    if not text:
        return None
    matches = FINAL_ANSWER.findall(text)
    if not matches:
        return None
    answer = matches[-1].strip().strip("*").strip()
    return answer or None


def final_answer_expr(text: pl.Expr) -> pl.Expr:
    """`extract_final_answer` as a polars expression (same pattern, same last match, same cleaning)."""
    last = text.str.extract_all(FINAL_ANSWER_PATTERN).list.last().str.extract(FINAL_ANSWER_PATTERN, 1)
    answer = last.str.strip_chars().str.strip_chars("*").str.strip_chars()
    return pl.when(answer != "").then(answer)
