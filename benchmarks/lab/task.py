"""The lab's checkable task: addition and subtraction, bare or as a short word problem.

Difficulty is graded by the number of digits of the larger operand (level 1..MAX_LEVEL).
Every solution is one worked line (the column sums from the units up, with carries and
borrows, then the whole sum) and a last line `Final answer: N`, so any answer the
teacher or a student writes can be checked exactly against the true value. The column
work is what a small model can learn in minutes: with the bare line `a + b = N` the
same teacher and 3,000 steps reached 0.66 exact match on 150 validation problems
(3-digit: 0.32); with the columns, 0.960 on the 600 scoring questions.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

MAX_LEVEL = 3
NAMES = ["Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jin", "Kai", "Lena", "Max", "Nia", "Omar"]
ITEMS = ["apples", "books", "coins", "marbles", "pens", "shells", "stamps", "cards", "beads", "eggs"]
GAINS = ["gets {b} more", "finds {b} more", "buys {b} more", "is given {b} more"]
LOSSES = ["gives away {b}", "loses {b}", "sells {b}", "uses {b}"]
TASK_VERSION = 2  # part of the teacher cache key: 2 = the column work in every solution
# Generation budget for one solution (teacher sampling and greedy scoring): the longest is
# 59 tokens of the lab tokenizer, plus eos.
MAX_SOLUTION_TOKENS = 72
FINAL_ANSWER = re.compile(r"Final answer:\s*(-?\d+)")


@dataclass(frozen=True)
class Problem:
    question: str
    solution: str
    answer: int
    level: int
    kind: str  # "add", "sub", "word_add", "word_sub"


def _operands(rng: random.Random, level: int) -> tuple[int, int]:
    """a has exactly `level` digits; b has 1..level digits."""
    low = 0 if level == 1 else 10 ** (level - 1)
    a = rng.randint(low, 10**level - 1)
    b_digits = rng.randint(1, level)
    b = rng.randint(0 if b_digits == 1 else 10 ** (b_digits - 1), 10**b_digits - 1)
    return a, b


def column_work(a: int, b: int, subtract: bool) -> str:
    """The column steps from the units up: `7+5=12 3+4+1=8` (carries), `13-8=5 4-1=3` (borrows)."""
    top, bottom = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i, digit in enumerate(top):
        x, y = int(digit), int(bottom[i]) if i < len(bottom) else 0
        if subtract:
            x -= carry
            carry = int(x < y)
            steps.append(f"{x + 10 * carry}-{y}={x + 10 * carry - y}")
        else:
            steps.append(f"{x}+{y}+{carry}={x + y + carry}" if carry else f"{x}+{y}={x + y}")
            carry = (x + y + carry) // 10
    return " ".join(steps)


def make_problem(rng: random.Random, level: int | None = None) -> Problem:
    level = level or rng.randint(1, MAX_LEVEL)
    a, b = _operands(rng, level)
    kind = rng.choice(["add", "sub", "word_add", "word_sub"])
    subtract = kind.endswith("sub")
    if subtract and b > a:
        a, b = b, a
    answer = a - b if subtract else a + b
    work = f"{column_work(a, b, subtract)}; {a} {'-' if subtract else '+'} {b} = {answer}"
    if kind in ("add", "sub"):
        question = f"What is {a} {'-' if subtract else '+'} {b}?"
        solution = f"{work}\nFinal answer: {answer}"
    else:
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        change = rng.choice(LOSSES if subtract else GAINS).format(b=b)
        question = f"{name} has {a} {item} and {change}. How many {item} does {name} have now?"
        solution = f"{name} {'loses' if subtract else 'adds'} {b}: {work}\nFinal answer: {answer}"
    return Problem(question, solution, answer, level, kind)


def make_problems(count: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[Problem]:
    """`count` problems with distinct questions, none of them in `exclude`, levels spread evenly."""
    rng = random.Random(seed)
    seen = set(exclude)
    problems = []
    while len(problems) < count:
        problem = make_problem(rng, level=len(problems) % MAX_LEVEL + 1)
        if problem.question not in seen:
            seen.add(problem.question)
            problems.append(problem)
    rng.shuffle(problems)
    return problems


def extract_answer(text: str | None) -> int | None:
    """The integer after the last `Final answer:`; None when there is none."""
    found = FINAL_ANSWER.findall(text or "")
    return int(found[-1]) if found else None


def is_correct(text: str | None, answer: int) -> bool:
    return extract_answer(text) == answer
