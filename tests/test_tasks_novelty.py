"""The ROUGE-L novelty filter and the other Self-Instruct instruction filters."""

from __future__ import annotations

import json
import random

import pytest
from conftest import shared_data
from rouge_score import rouge_scorer

from factory.tasks.instruction_filters import BadStart, TooLong, TooShort, TooSimilar, UnsuitableForText
from factory.tasks.novelty import RougeLPool, is_too_similar, rouge_l

INSTRUCTIONS = [
    "Write a haiku about the autumn wind.",
    "Write a haiku about the winter wind.",
    "Classify the sentiment of the following review as positive or negative.",
    "Give three tips for staying focused while studying.",
    "Translate the sentence into Spanish.",
    "Translate this sentence into German, keeping the tone formal.",
    "What is the capital of Australia?",
    "Explain the difference between weather and climate to a child.",
    "List the steps to change a flat tyre.",
    "Rewrite the paragraph so that it is easier to read.",
]


def test_rouge_l_is_rouge_score_rougeL_fmeasure():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for a in INSTRUCTIONS:
        for b in INSTRUCTIONS:
            assert rouge_l(a, b) == pytest.approx(scorer.score(a, b)["rougeL"].fmeasure, abs=1e-12)


def test_pool_max_equals_brute_force():
    rng = random.Random(3)
    words = "write a the poem list explain three steps about how to translate story cat rain why".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 12))) for _ in range(400)]
    pool = RougeLPool(texts[:300])  # 300 indexed, then 100 added after the index was built
    pool.max_similarity("warm up the index")
    for number, text in enumerate(texts[300:]):
        texts[300 + number] = text = f"{text} novel{number % 7}"  # words the index has never seen
        pool.add(text)
    for query in texts[:40] + texts[-20:] + ["novel3 novel4 poem", "completely unrelated words here", ""]:
        expected = max(rouge_l(query, other) for other in texts)
        score, index = pool.max_similarity(query)
        assert score == pytest.approx(expected, abs=1e-12)
        if expected > 0:
            assert rouge_l(query, texts[index]) == pytest.approx(expected)


def test_pool_exclude_and_empty():
    assert RougeLPool().max_similarity("anything") == (0.0, None)
    pool = RougeLPool(["Write a haiku about rain.", "Write a haiku about rain."])
    assert pool.max_similarity("Write a haiku about rain.", exclude=0) == (1.0, 1)


def test_threshold_is_strict_and_float_noise_is_not_more():
    assert not is_too_similar(0.7, 0.7)
    assert not is_too_similar(0.7000000000000001, 0.7)  # 2*7/20 computed through precision/recall
    assert is_too_similar(0.706, 0.7)


def test_filters_each_keep_their_reason():
    pool = RougeLPool(["Write a haiku about the autumn wind."])
    assert TooSimilar(pool, 0.7).check("Write a haiku about the winter wind.") == "too_similar: rouge_l=0.857"
    assert TooSimilar(pool, 0.7).check("Explain how vaccines train the immune system.") is None
    assert TooShort(4).check("Name a fruit.") == "too_short: 3 words"
    assert TooShort(4).check("Name a red fruit.") is None
    assert TooLong(150).check("word " * 151) == "too_long: 151 words"
    assert TooLong(150).check("word " * 150) is None
    assert UnsuitableForText().check("Describe the Image of a sunset.") == "unsuitable_for_text: image"
    assert UnsuitableForText().check("Tell me how to go to the station.") == "unsuitable_for_text: go to"
    assert UnsuitableForText().check("Summarise the profile of this user.") is None  # 'file' only as a word
    assert BadStart().check(": Explain the difference between a CPU and a GPU.") == "bad_start: punctuation ':'"
    assert BadStart().check("¿Qué hora es en Madrid ahora mismo?") == "bad_start: non-ascii '¿'"
    assert BadStart().check("3 reasons to learn a language.") is None
    assert BadStart().check("   ") == "empty"


# alpaca-libre's generator scored each row against every other row of the same run
# (rouge_score rougeL F, no stemming) and marked 'too similar' above 0.7. The v1 file
# holds three runs appended one after another; v3 holds one.
ALPACA_LIBRE_RUNS = {"alpaca_libre_tasks_v1.jsonl": [0, 1164, 2279], "alpaca_libre_tasks_v3.jsonl": [0]}


def _similarity(row: dict) -> float:
    return row["similarity"] if "similarity" in row else row["other"]["similarity"]


@pytest.mark.slow
def test_novelty_filter_reproduces_alpaca_libre_decisions():
    directory = shared_data("alpaca_libre")
    decided = agree_recorded = agree_recomputed = same_score = 0
    for name, starts in ALPACA_LIBRE_RUNS.items():
        rows = [json.loads(line) for line in (directory / name).read_text().splitlines() if line.strip()]
        bounds = starts + [len(rows)]
        for start, end in zip(bounds, bounds[1:]):
            run = rows[start:end]
            pool = RougeLPool([row["instruction"] for row in run])
            for index, row in enumerate(run):
                if row["status"] not in ("ok", "too similar"):
                    continue
                too_similar = row["status"] == "too similar"
                score, _ = pool.max_similarity(row["instruction"], exclude=index)
                decided += 1
                agree_recorded += is_too_similar(_similarity(row), 0.7) == too_similar
                agree_recomputed += is_too_similar(score, 0.7) == too_similar
                same_score += round(score, 3) == _similarity(row)
    print(
        f"\nalpaca-libre novelty decisions on {decided} rows: recorded-score agreement "
        f"{agree_recorded / decided:.4f}, recomputed-score agreement {agree_recomputed / decided:.4f}, "
        f"recomputed score == recorded score {same_score / decided:.4f}"
    )
    assert decided == 1202 + 848 + 654 + 484
    assert agree_recorded / decided >= 0.99
    assert agree_recomputed / decided >= 0.99
