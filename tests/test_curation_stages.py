"""Curation stages on planted cases and on real Alpaca / Self-Instruct rows (../shared/data)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import polars as pl
import pytest
from conftest import shared_data
from pydantic import TypeAdapter, ValidationError
from rich.console import Console

from curation.config import (
    DEFAULT_MIN_SIMILARITY,
    ConsistencyConfig,
    EntropyConfig,
    ExactDedupConfig,
    HeuristicsConfig,
    MinHashDedupConfig,
    StageConfig,
)
from curation.minhash_kernel import band_keys, signatures
from curation.pipeline import run_stages
from curation.stages import Consistency, Entropy, ExactDedup, Heuristics, MinHashDedup, StageInputError, build_stage
from curation.stages.base import chosen_samples
from curation.stages.minhash_dedup import band_candidates, lsh_shape
from curation.text import _fmix32, gram_hashes, shingle
from factory.errors import ConfigError, StillhouseError
from factory.schema import conform, record_id


def sample(text: str, finish_reason: str = "stop", top_logprobs: list[list[float]] | None = None) -> dict:
    tops = top_logprobs or []
    return {
        "text": text,
        "finish_reason": finish_reason,
        "token_ids": list(range(len(tops))),
        "logprobs": [row[0] if row else 0.0 for row in tops],
        "top_ids": [list(range(len(row))) for row in tops],
        "top_logprobs": tops,
    }


def records(rows: list[dict]) -> pl.DataFrame:
    """Rows through the real record schema (`conform`), with ids and origin filled in."""
    full = []
    for k, row in enumerate(rows):
        row = {"input": "", "origin": "seed", **row}
        row.setdefault("instruction", f"instruction {k}")
        row.setdefault("id", record_id(row["instruction"], row["input"], row["origin"]) + f"-{k}")
        full.append(row)
    return pl.from_arrow(conform(pl.DataFrame(full, infer_schema_length=None)))


def dropped(frame: pl.DataFrame) -> dict[str, str]:
    return dict(frame.filter(pl.col("drop_stage").is_not_null()).select("id", "drop_reason").iter_rows())


def load_json_rows(path) -> pl.DataFrame:
    rows = json.loads(path.read_text())
    frame = pl.DataFrame(
        {
            "instruction": [r["instruction"] for r in rows],
            "input": [r["input"] for r in rows],
            "response": [r["output"] for r in rows],
            "origin": "import",
        }
    )
    return pl.from_arrow(conform(frame.with_columns(pl.Series("id", [f"r{k}" for k in range(frame.height)]))))


# --- heuristics -------------------------------------------------------------------------------


def test_heuristics_each_check_has_its_own_reason():
    frame = records(
        [
            {"id": "ok", "response": "Paris is the capital of France, and it is known for the Eiffel Tower."},
            {"id": "empty", "response": "   \n "},
            {"id": "long", "response": "word " * 50},
            {"id": "refusal", "response": "I'm sorry, but I cannot help with that request."},
            {"id": "ai", "response": "As an AI language model, I do not have opinions on this."},
            {"id": "cut", "response": "The three steps are: first, mix the", "samples": [sample("x", "length")]},
            {"id": "noise", "response": "\u2588\u2588\u2593\u2592\u2591 \u2588\u2588\u2593\u2592\u2591 ### @@@ ~~~"},
            {"id": "loop", "response": "the cat sat on the mat " * 6},
            {
                "id": "russian",
                "response": "Это очень хороший ответ на вопрос, и он написан на русском языке полностью.",
            },
            {"id": "short_ok", "response": "4"},
        ]
    )
    config = HeuristicsConfig(max_chars=150, language="en")
    out = Heuristics(config).apply(frame)
    reasons = {k: v.split(":")[0] for k, v in dropped(out).items()}
    assert reasons == {
        "empty": "empty",
        "long": "too_long",
        "refusal": "refusal",
        "ai": "refusal",
        "cut": "truncated",
        "noise": "non_text",
        "loop": "repetitive",
        "russian": "not_english",
    }
    assert dropped(out)["long"] == "too_long: 249 chars > 150"
    assert out.height == frame.height  # nothing is deleted


def test_heuristics_checks_can_be_disabled_and_tokens_bounded():
    frame = records(
        [
            {"id": "a", "response": "I apologize for the confusion, here is the fixed list of items."},
            {"id": "b", "response": "one two"},
            {"id": "c", "response": "the cat sat on the mat " * 8},
        ]
    )
    config = HeuristicsConfig(refusals=False, max_repeated_ngram_share=None, min_tokens=3, truncated=False)
    out = Heuristics(config).apply(frame)
    assert dropped(out) == {"b": "too_few_tokens: 2 < 3"}


def test_a_dropped_row_keeps_its_first_reason():
    frame = records(
        [
            {"id": "a", "response": ""},
            {"id": "b", "response": "A fine and complete answer."},
            {"id": "c", "response": "A fine and complete answer."},
        ]
    )
    out = ExactDedup(ExactDedupConfig(columns=["response"])).apply(Heuristics().apply(frame))
    assert out.filter(pl.col("id") == "a")[0, "drop_stage"] == "heuristics"
    assert out.filter(pl.col("id") == "a")[0, "drop_reason"] == "empty"
    assert dropped(out)["c"] == "exact_duplicate: of b"  # first row wins a tie on every score


# --- exact and near duplicates ----------------------------------------------------------------


def test_near_duplicate_chain_member_names_its_closest_link():
    # a -> b -> c: each step shifts a 100-word window by 8 words (jaccard 0.85 on 3-word
    # shingles), so c is 0.72 from a: a duplicate only through b.
    words = [f"w{i}" for i in range(200)]
    rows = [
        {"id": "a", "response": " ".join(words[0:100]), "judge_score": 9.0},
        {"id": "b", "response": " ".join(words[8:108]), "judge_score": 5.0},
        {"id": "c", "response": " ".join(words[16:116]), "judge_score": 1.0},
    ]
    out = MinHashDedup(MinHashDedupConfig(columns=["response"]), show_progress=False).apply(records(rows))
    reasons = dropped(out)
    assert reasons["b"] == "near_duplicate: of a jaccard=0.85"
    assert reasons["c"] == "near_duplicate: of a jaccard=0.72 (same cluster via a row at jaccard=0.85)"


EARLIER_DROP = {"drop_stage": "heuristics", "drop_reason": "too_short"}


def test_near_duplicate_of_an_already_dropped_row_is_kept():
    words = [f"w{i}" for i in range(200)]
    rows = [
        {"id": "earlier", "response": " ".join(words[0:100]), "judge_score": 9.0, **EARLIER_DROP},
        {"id": "live", "response": " ".join(words[8:108]), "judge_score": 1.0},
        {"id": "other", "response": " ".join(words[100:200])},
    ]
    stage = MinHashDedup(MinHashDedupConfig(columns=["response"]), show_progress=False)
    out = stage.apply(records(rows))
    assert dropped(out) == {"earlier": "too_short"}  # only the earlier drop: "live" has no live twin
    everything_dropped = records([{**row, **EARLIER_DROP} for row in rows])
    assert stage.apply(everything_dropped).height == 3


def test_exact_dedup_normalises_and_keeps_best_scored_copy():
    frame = records(
        [
            {"id": "low", "instruction": "Name a fruit.", "response": "An apple!", "judge_score": 3.0},
            {"id": "high", "instruction": "name a FRUIT", "response": "an   apple", "judge_score": 9.0},
            {"id": "other", "instruction": "Name a fruit.", "response": "A pear.", "judge_score": 1.0},
        ]
    )
    blanks = records([{"id": "blank1", "instruction": "?"}, {"id": "blank2", "instruction": "!"}])
    frame = pl.concat([frame, blanks], how="diagonal")
    out = ExactDedup().apply(frame)
    assert dropped(out) == {"low": "exact_duplicate: of high"}  # rows without any text are not duplicates


def words_doc(rng: np.random.Generator, n: int = 80) -> list[str]:
    return [f"w{int(i)}" for i in rng.integers(0, 50_000, size=n)]


def test_near_duplicate_cluster_keeps_its_highest_scored_member():
    rng = np.random.default_rng(3)
    base = words_doc(rng)
    copy1, copy2 = list(base), list(base)
    copy1[10] = "edited"
    copy2[40] = "changed"
    far = list(base)
    for position in range(0, 80, 4):  # many edits: jaccard well below 0.8
        far[position] = f"x{position}"
    rows = [
        {"id": "first", "response": " ".join(base), "judge_score": 5.0, "consistency": 0.9},
        {"id": "best", "response": " ".join(copy1), "judge_score": 8.0, "consistency": 0.2},
        {"id": "tie", "response": " ".join(copy2), "judge_score": 8.0, "consistency": 0.1},
        {"id": "far", "response": " ".join(far), "judge_score": 1.0, "consistency": 1.0},
    ]
    rows += [{"id": f"n{k}", "response": " ".join(words_doc(rng))} for k in range(40)]
    frame = records(rows)
    stage = MinHashDedup(MinHashDedupConfig(columns=["response"]), show_progress=False)
    out = stage.apply(frame)
    reasons = dropped(out)
    assert set(reasons) == {"first", "tie"}
    assert reasons["first"].startswith("near_duplicate: of best jaccard=0.9")
    assert reasons["tie"].startswith("near_duplicate: of best jaccard=")
    clusters = dict(out.select("id", "dup_cluster").iter_rows())
    assert clusters["first"] == clusters["best"] == clusters["tie"] == 0
    assert clusters["far"] is None and clusters["n0"] is None


def test_minhash_candidates_are_verified_by_true_jaccard():
    """Low-threshold banding proposes a 0.6-similar pair; verification at 0.8 rejects it."""
    rng = np.random.default_rng(5)
    base = words_doc(rng, 100)
    other = list(base)
    for position in range(0, 100, 12):
        other[position] = f"y{position}"
    texts = pl.Series([" ".join(base), " ".join(other)])
    sets = shingle(texts, "word", 3)
    true_jaccard = sets.jaccard(np.array([0]), np.array([1]))[0]
    a = {" ".join(base[i : i + 3]) for i in range(98)}
    b = {" ".join(other[i : i + 3]) for i in range(98)}
    assert true_jaccard == pytest.approx(len(a & b) / len(a | b))
    keys = band_keys(*gram_hashes(texts, "word", 3), bands=64, rows=2, seed=1)
    left, right = band_candidates(keys, np.array([0, 1]))
    assert (left.tolist(), right.tolist()) == ([0], [1])  # LSH says "maybe" ...
    frame = records([{"id": "a", "response": texts[0]}, {"id": "b", "response": texts[1]}])
    out = MinHashDedup(MinHashDedupConfig(columns=["response"], bands=64), show_progress=False).apply(frame)
    assert dropped(out) == {}  # ... the exact Jaccard says no
    assert 0.5 < true_jaccard < 0.8


def test_signature_collision_rate_estimates_jaccard():
    rng = np.random.default_rng(9)
    base = words_doc(rng, 200)
    other = base[:150] + words_doc(rng, 50)
    texts = pl.Series([" ".join(base), " ".join(other)])
    sets = shingle(texts, "word", 3)
    sigs = signatures(*gram_hashes(texts, "word", 3), 256, seed=2)
    estimate = float((sigs[0] == sigs[1]).mean())
    assert estimate == pytest.approx(sets.jaccard(np.array([0]), np.array([1]))[0], abs=0.08)


def test_char_shingles_and_short_documents():
    sets = shingle(pl.Series(["Hello, World", "hello world!", "hi", ""]), "char", 5)
    assert sets.of(0).tolist() == sets.of(1).tolist()  # normalisation: case and punctuation
    assert len(sets.of(2)) == 1 and len(sets.of(3)) == 0  # shorter than n: one shingle; empty: none
    assert lsh_shape(0.8, 128) == (21, 6)
    texts = pl.Series(["a b c d e", "", "x y", "a b c d e f"] * 5)
    whole, blocked = shingle(texts, "word", 3), shingle(texts, "word", 3, block=3)
    assert whole.hashes.tolist() == blocked.hashes.tolist() and whole.offsets.tolist() == blocked.offsets.tolist()


@pytest.mark.parametrize("kind, n", [("word", 3), ("word", 1), ("char", 5)])
def test_gram_hashes_are_the_shingle_sets_with_repeats(kind, n):
    """What the signatures see (unsorted grams, repeats kept) is exactly each document's shingle set,
    and a band key is the same for every multiset of the same set."""
    texts = pl.Series(["a b a b a b c", "Hello, World!", "x", "", None, "p q", "one two three four"])
    grams, offsets = gram_hashes(texts, kind, n)
    sets = shingle(texts, kind, n)
    for doc in range(len(texts)):
        assert np.unique(_fmix32(grams[offsets[doc] : offsets[doc + 1]])).tolist() == sets.of(doc).tolist()
    keys = band_keys(grams, offsets, bands=8, rows=4, seed=3)
    assert (
        keys[0]
        == band_keys(
            np.unique(grams[offsets[0] : offsets[1]]),
            np.array([0, len(np.unique(grams[offsets[0] : offsets[1]]))]),
            8,
            4,
            3,
        )[0]
    ).all()


def test_band_keys_agree_with_signatures():
    """Two documents share a band key exactly when their signatures agree on that band's rows."""
    rng = np.random.default_rng(11)
    base = words_doc(rng, 40)
    texts = pl.Series([" ".join(base), " ".join(base[:38] + ["x", "y"]), " ".join(words_doc(rng, 40))])
    grams, offsets = gram_hashes(texts, "word", 3)
    sigs, keys = signatures(grams, offsets, 32, seed=4), band_keys(grams, offsets, bands=16, rows=2, seed=4)
    same_rows = (sigs[0].reshape(16, 2) == sigs[1].reshape(16, 2)).all(axis=1)
    assert (keys[0] == keys[1]).tolist() == same_rows.tolist() and same_rows.any() and not same_rows.all()
    assert not (keys[0] == keys[2]).any()


# --- self-consistency --------------------------------------------------------------------------


def test_consistency_classification_final_answer_and_open():
    frame = records(
        [
            {
                "id": "label",
                "samples": [sample("positive"), sample("The sentiment is Positive."), sample("negative"), sample("?")],
            },
            {
                "id": "answer",
                "samples": [
                    sample("12 * 3 = 36. Final answer: 36"),
                    sample("The answer is $36.00."),
                    sample("Final answer: **35**"),
                ],
            },
            {"id": "open_same", "samples": [sample("the sky is blue"), sample("The sky is blue!")]},
            {"id": "open_diff", "samples": [sample("the sky is blue"), sample("grass grows fast")]},
            {"id": "single", "samples": [sample("alone")]},
        ]
    )
    labelled = Consistency(ConsistencyConfig(labels=["positive", "negative"], min_consistency=None)).apply(
        frame.filter(pl.col("id") == "label")
    )
    assert labelled["consistency"][0] == pytest.approx(0.5)  # 2 of 4 agree, the unparsable one counts against
    assert labelled["consistency_method"][0] == "label"

    config = ConsistencyConfig(min_consistency=0.5, similarity="jaccard", min_similarity=0.5)
    out = Consistency(config).apply(frame.filter(pl.col("id") != "label"))
    scores = dict(out.select("id", "consistency").iter_rows())
    methods = dict(out.select("id", "consistency_method").iter_rows())
    assert scores["answer"] == pytest.approx(2 / 3) and methods["answer"] == "final_answer"
    assert scores["open_same"] == pytest.approx(1.0) and methods["open_same"] == "similarity"
    assert scores["open_diff"] == pytest.approx(0.0)
    assert scores["single"] is None
    assert dropped(out) == {"open_diff": "low_consistency: similarity 0.0 < 0.5"}


def test_consistency_uses_frame_label_set_in_auto_mode():
    frame = records(
        [
            {"id": "a", "label": "spam", "samples": [sample("spam"), sample("Spam."), sample("spam")]},
            {"id": "b", "label": "not spam", "samples": [sample("not spam"), sample("spam"), sample("spam")]},
        ]
    )
    out = Consistency(ConsistencyConfig(min_consistency=0.7)).apply(frame)
    assert dict(out.select("id", "consistency").iter_rows()) == {"a": pytest.approx(1.0), "b": pytest.approx(2 / 3)}
    assert "b" in dropped(out)


def logprob_sample(text: str, mean_logprob: float, finish_reason: str = "stop") -> dict:
    return {**sample(text, finish_reason), "logprobs": [mean_logprob, mean_logprob]}


def test_consistency_keeps_a_sample_holding_the_majority_answer():
    """The issue's case: 3 samples answer 12, 2 answer 15, a '15' has the best logprob and was the
    response. The response becomes the best-logprob '12' sample and consistency is 0.6."""
    texts = [
        ("7 + 5 = 12. Final answer: 12", -0.9),
        ("Final answer: 15", -0.1),
        ("Adding gives 12.\nFinal answer: 12", -0.4),
        ("Final answer: 15", -0.2),
        ("Final answer: 12.0", -0.6),
    ]
    frame = records(
        [
            {
                "id": "sum",
                "response": "Final answer: 15",
                "chosen_sample": 1,
                "final_answer": "15",  # respond's chain-of-thought column follows the kept text
                "samples": [logprob_sample(text, lp) for text, lp in texts],
            }
        ]
    )
    out = Consistency(ConsistencyConfig(min_consistency=0.5)).apply(frame).row(0, named=True)
    assert out["consistency"] == pytest.approx(0.6) and out["consistency_method"] == "final_answer"
    assert out["chosen_sample"] == 2 and out["response"] == "Adding gives 12.\nFinal answer: 12"
    assert out["final_answer"] == "12" and out["drop_stage"] is None
    # the index is what later stages read
    assert chosen_samples(Consistency().apply(frame), ["text"])["text"][0] == out["response"]


def test_consistency_takes_the_last_final_answer_and_prefers_finished_samples():
    """The issue's case: all three end "Final answer: 12" but mention "final answer" earlier."""
    texts = [
        "Before the final answer, note that 5 + 7 = 12.\nFinal answer: 12",
        "My final answer: maybe 13? No: 5 + 7 is 12.\nFinal answer: 12",
        "The final answer is not 13.\nFinal answer: 12",
    ]
    frame = records(
        [
            {
                "id": "twelve",
                "response": texts[0],
                "chosen_sample": 0,
                "samples": [
                    logprob_sample(texts[0], -0.5),
                    logprob_sample(texts[1], -0.1, finish_reason="length"),  # cut off: ranks after finished ones
                    logprob_sample(texts[2], -0.3),
                ],
            }
        ]
    )
    out = Consistency(ConsistencyConfig(min_consistency=0.5)).apply(frame).row(0, named=True)
    assert out["consistency"] == pytest.approx(1.0) and out["drop_stage"] is None
    assert out["chosen_sample"] == 2 and out["response"] == texts[2]


def test_consistency_tie_goes_to_the_best_sample_and_dropped_rows_keep_their_response():
    tie = [logprob_sample("Final answer: 3", -0.8), logprob_sample("Final answer: 4", -0.2)] * 2
    frame = records(
        [
            {"id": "tie", "response": "Final answer: 3", "chosen_sample": 0, "samples": tie},
            {
                "id": "gone",
                "response": "Final answer: 4",
                "chosen_sample": 1,
                "samples": [logprob_sample("Final answer: 3", -0.1)] * 2 + [logprob_sample("Final answer: 4", -0.2)],
                "drop_stage": "heuristics",
                "drop_reason": "refusal",
            },
        ]
    )
    out = {row["id"]: row for row in Consistency().apply(frame).to_dicts()}
    assert out["tie"]["consistency"] == pytest.approx(0.5) and out["tie"]["chosen_sample"] == 1
    assert out["gone"]["chosen_sample"] == 1 and out["gone"]["response"] == "Final answer: 4"
    assert out["gone"]["drop_reason"] == "refusal"


def unit_vectors(table: dict[str, list[float]]):
    """A stand-in encoder with known embeddings (the real MiniLM one is tested on MRPC)."""

    def encode(texts: list[str]) -> np.ndarray:
        vectors = np.array([table[text] for text in texts], dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    return encode


def test_open_consistency_is_mean_pairwise_cosine_and_jaccard():
    encoder = unit_vectors({"a b": [1, 0], "a b c": [1, 0], "d e": [0, 1], "x": [1, 1], "y": [1, -1]})
    frame = records(
        [
            {"id": "three", "samples": [sample("a b"), sample("a b c"), sample("d e")]},
            {"id": "pair", "samples": [sample("x"), sample("y")]},
        ]
    )

    def scores(similarity: str, **limits) -> pl.DataFrame:
        config = ConsistencyConfig(mode="open", similarity=similarity, **limits)
        return Consistency(config, encoder).apply(frame)

    cosine = dict(scores("embedding", min_similarity=None).select("id", "consistency").iter_rows())
    assert cosine == {"three": pytest.approx(1 / 3), "pair": pytest.approx(0.0, abs=1e-9)}  # pairs 1, 0, 0 / orthogonal
    jaccard = dict(scores("jaccard", min_similarity=None).select("id", "consistency").iter_rows())
    assert jaccard == {"three": pytest.approx((2 / 3 + 0 + 0) / 3), "pair": pytest.approx(0.0)}
    out = scores("embedding_jaccard")
    both = dict(out.select("id", "consistency").iter_rows())
    assert both == {"three": pytest.approx((1 / 3 + 2 / 9) / 2), "pair": pytest.approx(0.0, abs=1e-9)}
    # the default threshold is the measure's own; min_consistency (for majority shares) does not apply
    assert ConsistencyConfig().min_similarity == DEFAULT_MIN_SIMILARITY["embedding_jaccard"]
    assert ConsistencyConfig(similarity="jaccard").min_similarity == DEFAULT_MIN_SIMILARITY["jaccard"]
    limit = DEFAULT_MIN_SIMILARITY["embedding_jaccard"]
    assert dropped(out) == {
        "three": f"low_consistency: similarity {round((1 / 3 + 2 / 9) / 2, 2)} < {limit}",
        "pair": f"low_consistency: similarity 0.0 < {limit}",
    }
    assert out["response"].to_list() == [None, None]  # open mode chooses no sample


# --- entropy -----------------------------------------------------------------------------------


def test_entropy_packs_the_residual_into_tokens_no_likelier_than_the_last_top_k():
    log = math.log
    tops = [[log(0.5), log(0.3)], [log(0.4), log(0.1)], [log(0.5), log(0.2)]]
    frame = records(
        [
            {"id": "gen", "response": "chosen", "samples": [sample("other"), sample("chosen", top_logprobs=tops)]},
            {"id": "cls", "label": "b", "label_probs": [0.25, 0.75]},
            {"id": "flat", "response": "f", "samples": [sample("f", top_logprobs=[[log(0.25)] * 4])]},
        ]
    )
    out = Entropy(EntropyConfig(max_entropy=1.35)).apply(frame)
    got = dict(out.select("id", "mean_entropy").iter_rows())
    # residual 0.2 < p_min 0.3: one tail token of 0.2
    first = -(0.5 * log(0.5) + 0.3 * log(0.3) + 0.2 * log(0.2))
    # residual 0.5, p_min 0.1: five tail tokens of 0.1
    second = -(0.4 * log(0.4) + 6 * 0.1 * log(0.1))
    # residual 0.3, p_min 0.2: one tail token of 0.2 and the remaining 0.1
    third = -(0.5 * log(0.5) + 2 * 0.2 * log(0.2) + 0.1 * log(0.1))
    assert got["gen"] == pytest.approx((first + second + third) / 3, rel=1e-5)
    assert got["cls"] == pytest.approx(-(0.25 * log(0.25) + 0.75 * log(0.75)), rel=1e-5)
    assert got["flat"] == pytest.approx(log(4), rel=1e-5)  # nothing left over
    assert dropped(out) == {"flat": f"high_entropy: {round(log(4), 3)} > 1.35"}


def zipf(exponent: float, vocab: int = 32_000) -> np.ndarray:
    probs = np.arange(1, vocab + 1, dtype=np.float64) ** -exponent
    return probs / probs.sum()


def test_entropy_estimate_rises_with_the_true_entropy_of_zipf_teachers():
    """The issue's case: Zipf 2.0 / 1.2 / 0.6 over 32k tokens, top-5 stored. The residual-as-one-outcome
    estimate gave 1.23 / 1.23 / 0.12 (falling); the bound must rise, stay below the truth, and the cut
    must drop the most uncertain teacher."""
    exponents = [2.0, 1.2, 0.6]
    true = [float(-(p * np.log(p)).sum()) for p in map(zipf, exponents)]
    assert true == pytest.approx([1.637, 5.295, 9.860], abs=1e-3)
    rows = [
        {"id": f"zipf{s}", "response": "r", "samples": [sample("r", top_logprobs=[np.log(zipf(s)[:5]).tolist()] * 3)]}
        for s in exponents
    ]
    out = Entropy(EntropyConfig(max_quantile=0.6)).apply(records(rows))
    estimate = out["mean_entropy"].to_list()
    assert estimate[0] < estimate[1] < estimate[2]
    assert all(e < t for e, t in zip(estimate, true))  # a lower bound
    # by hand for exponent 2: top-5 mass 0.8898, p_min = p5 = 0.02432, residual 0.1102 = 4 tokens of p5 + 0.0129
    top = zipf(2.0)[:5]
    residual, p_min = 1 - top.sum(), top[-1]
    assert (residual, p_min) == pytest.approx((0.11021, 0.024318), rel=1e-4)
    remainder = residual - 4 * p_min
    by_hand = -(top * np.log(top)).sum() - 4 * p_min * np.log(p_min) - remainder * np.log(remainder)
    assert estimate[0] == pytest.approx(by_hand, rel=1e-5)
    assert estimate == pytest.approx([1.403, 3.014, 6.010], abs=2e-3)
    assert set(dropped(out)) == {"zipf0.6"}


def test_entropy_quantile_cut_uses_rows_still_kept():
    rows = [{"id": f"r{k}", "label": "a", "label_probs": [1 - p, p]} for k, p in enumerate(np.linspace(0.01, 0.5, 10))]
    out = Entropy(EntropyConfig(max_quantile=0.8)).apply(records(rows))
    assert set(dropped(out)) == {"r8", "r9"}
    assert dropped(out)["r9"].startswith("high_entropy: 0.693 > q0.8=")


# --- config, errors, pipeline --------------------------------------------------------------------


def test_missing_column_names_stage_and_column():
    frame = pl.DataFrame({"id": ["a"], "instruction": ["x"]})
    with pytest.raises(StageInputError, match="stage 'minhash_dedup' needs column 'input'"):
        MinHashDedup(show_progress=False).apply(frame)
    with pytest.raises(StillhouseError, match="stage 'heuristics' needs column 'response'"):
        Heuristics().apply(frame)
    with pytest.raises(StillhouseError, match="stage 'consistency' needs column 'samples'"):
        Consistency().apply(frame)
    with pytest.raises(StillhouseError, match="stage 'entropy' needs column 'samples'"):
        Entropy().apply(frame)


def test_stage_configs_validate_and_build():
    adapter = TypeAdapter(list[StageConfig])
    configs = adapter.validate_python(
        [
            {"stage": "heuristics", "max_chars": 500},
            {"stage": "minhash_dedup", "threshold": 0.7, "shingle": "char", "ngram": 5},
            {"stage": "entropy", "max_quantile": 0.9},
        ]
    )
    stages = [build_stage(c) for c in configs]
    assert [s.name for s in stages] == ["heuristics", "minhash_dedup", "entropy"]
    for bad in (
        {"stage": "heuristics", "max_chars": -1},
        {"stage": "entropy", "max_quantile": 1.0},
        {"stage": "minhash_dedup", "treshold": 0.8},
        {"stage": "heuristics", "min_chars": 10, "max_chars": 5},
        {"stage": "nope"},
    ):
        with pytest.raises(ValidationError):
            adapter.validate_python([bad])
    with pytest.raises(ConfigError, match="judge"):
        build_stage(adapter.validate_python([{"stage": "judge"}])[0])


def test_run_stages_on_real_alpaca_prints_and_returns_the_funnel():
    frame = load_json_rows(shared_data("alpaca", "alpaca_plus_validation_unseen_1000_alpaca.json"))
    # plant: an exact copy (reformatted) and a near copy (one word changed) of real rows
    planted = frame.head(2).with_columns(
        pl.Series("id", ["copy", "near"]),
        pl.Series("instruction", [frame[0, "instruction"].upper() + "  ", frame[1, "instruction"]]),
        pl.Series("response", [frame[0, "response"], frame[1, "response"].replace("fraction", "ratio", 1)]),
    )
    frame = pl.concat([frame, planted])
    console = Console(file=io.StringIO(), width=160)
    stages = [Heuristics(), ExactDedup(), MinHashDedup(MinHashDedupConfig(threshold=0.7), show_progress=False)]
    out, funnel = run_stages(frame, stages, console=console)
    assert out.height == frame.height
    assert [step["stage"] for step in funnel] == ["heuristics", "exact_dedup", "minhash_dedup"]
    assert funnel[0]["rows_in"] == 1002 and funnel[-1]["rows_out"] == out["drop_stage"].is_null().sum()
    reasons = dropped(out)
    assert {reasons.get("r0", ""), reasons.get("copy", "")} & {"exact_duplicate: of copy", "exact_duplicate: of r0"}
    near = reasons.get("near", reasons.get("r1", ""))
    assert near.startswith("near_duplicate: of ")
    assert funnel[1]["dropped"] == {"exact_duplicate": 1}
    assert funnel[0]["rows_out"] > 990  # real, mostly clean data survives the heuristics
    printed = console.file.getvalue()
    assert "Curation funnel" in printed and "exact_duplicate 1" in printed


def test_heuristics_on_real_self_instruct_rows():
    frame = load_json_rows(shared_data("self_instruct", "alpaca_plus_validation_seen_1000_self_instruct.json"))
    out = Heuristics().apply(frame)
    reasons = out.filter(pl.col("drop_stage").is_not_null())
    codes = set(reasons["drop_reason"].str.split(":").list.first().to_list())
    assert codes <= {"repetitive", "non_text", "not_english"}
    assert 0 < reasons.height < 20
    russian = out.filter(pl.col("response").str.contains("[а-я]"))
    assert russian["drop_reason"].str.starts_with("not_english").all()
