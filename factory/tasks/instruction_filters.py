"""Self-Instruct's filters for new instructions and their generated instances: one small class per rule,
each naming its reason.

`check(text)` returns None to keep the instruction, else a drop reason
(`code` or `code: detail`, as the funnel expects).
"""

from __future__ import annotations

import re

from factory.tasks.novelty import RougeLPool, is_too_similar
from factory.tasks.parsing import Instance

# Things a text-only model cannot see, draw or play (the paper's keyword list).
UNSUITABLE_KEYWORDS = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)  # fmt: skip


class TooShort:
    def __init__(self, min_words: int) -> None:
        self.min_words = min_words

    def check(self, text: str) -> str | None:
        words = len(text.split())
        return f"too_short: {words} words" if words < self.min_words else None


class TooLong:
    def __init__(self, max_words: int) -> None:
        self.max_words = max_words

    def check(self, text: str) -> str | None:
        words = len(text.split())
        return f"too_long: {words} words" if words > self.max_words else None


class UnsuitableForText:
    pattern = re.compile(r"\b(" + "|".join(re.escape(word) for word in UNSUITABLE_KEYWORDS) + r")\b", re.I)

    def check(self, text: str) -> str | None:
        match = self.pattern.search(text)
        return f"unsuitable_for_text: {match.group(1).lower()}" if match else None


class BadStart:
    """Starts with punctuation or a non-ASCII character (usually a parsing leftover)."""

    def check(self, text: str) -> str | None:
        first = text.lstrip()[:1]
        if not first:
            return "empty"
        if not first.isascii():
            return f"bad_start: non-ascii {first!r}"
        if not first.isalnum():
            return f"bad_start: punctuation {first!r}"
        return None


class TooSimilar:
    """ROUGE-L (rouge_score's rougeL F) above the threshold against any pool instruction."""

    def __init__(self, pool: RougeLPool, threshold: float) -> None:
        self.pool = pool
        self.threshold = threshold

    def check(self, text: str) -> str | None:
        score, _ = self.pool.max_similarity(text)
        return f"too_similar: rouge_l={score:.3f}" if is_too_similar(score, self.threshold) else None


# --- instance filters (the paper's `filter_invalid_instances` / `filter_duplicate_instances`) ---
# `check(instance)` returns None to keep a generated (input, output) instance, else a drop reason.


class EmptyOutput:
    def check(self, instance: Instance) -> str | None:
        return "empty_output" if not instance.output.strip() else None


class OutputCopiesInput:
    def check(self, instance: Instance) -> str | None:
        return "output_copies_input" if instance.output.strip() == instance.input.strip() else None


class EndsWithColon:
    """An input or output ending with ':' is usually a generation cut off before its content."""

    def check(self, instance: Instance) -> str | None:
        for name, value in (("input", instance.input), ("output", instance.output)):
            if value.strip().endswith(":"):
                return f"incomplete_instance: {name} ends with ':'"
        return None


class SameInputDifferentOutput:
    """A task whose instances give one non-empty input two different outputs is ambiguous: the
    paper drops all of its instances. `check(instances)` judges the whole task."""

    def check(self, instances: list[Instance]) -> str | None:
        outputs: dict[str, str] = {}
        for instance in instances:
            if not instance.input:
                continue
            seen = outputs.setdefault(instance.input, instance.output)
            if seen != instance.output:
                return f"same_input_different_output: {instance.input[:60]!r}"
        return None
