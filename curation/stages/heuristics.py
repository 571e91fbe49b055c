"""Cheap text checks, all polars expressions: each has its own reason code and can be turned off.

Checks run in a fixed order and a row gets the reason of the first one it fails:
empty, too_short, too_long, too_few_tokens, too_many_tokens, truncated, refusal,
non_text, repetitive, not_english.
"""

from __future__ import annotations

import polars as pl

from curation.config import HeuristicsConfig
from curation.stages.base import Scope, Stage, chosen_samples

# Openers and phrases of a teacher declining or apologising instead of answering.
REFUSAL_PATTERNS = [
    r"\bas an ai(?: language)? model\b",
    r"^\s*(?:i['’]m|i am) (?:so |very |truly )?sorry\b",
    r"^\s*(?:i )?apologi[sz]e\b",
    r"^\s*sorry\b",
    r"\bi (?:cannot|can['’]t|can not|am unable to|['’]m unable to|am not able to|won['’]t) "
    r"(?:help|assist|provide|comply|fulfil|answer|do that|complete|generate|create)\b",
    r"\bi['’]m not able to (?:help|assist|provide|comply|answer)\b",
]

# Common English function words: real English prose is full of them, other languages and noise are not.
STOPWORDS = sorted(
    set(
        "a an the and or but if then than so of to in on at by for with from into onto about as is are was were be "
        "been being am do does did have has had it its it's this that these those there here i you he she we they "
        "me him her us them my your his our their what which who whom whose when where why how not no yes can "
        "could will would should may might must shall all any each some many most more such only also just very "
        "up down out over under again further once both few other own same too one two first new use used using "
        "make like get well way because while after before between through during without within".split()
    )
)

TEXT_CHARS = r"[\p{L}\p{N}\s.,;:!?'\"()\-/’“”]"


class Heuristics(Stage):
    scope = Scope.ROW

    def __init__(self, config: HeuristicsConfig | None = None) -> None:
        super().__init__()
        self.config = config or HeuristicsConfig()
        self.name = self.config.name or "heuristics"

    @property
    def required_columns(self) -> tuple[str, ...]:
        return (self.config.column, "samples") if self.config.truncated else (self.config.column,)

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        c = self.config
        text = pl.col("_text")
        stripped = text.str.strip_chars()
        chars = stripped.str.len_chars()
        tokens = stripped.str.count_matches(r"\S+")
        work = frame.select(pl.col(c.column).cast(pl.String).fill_null("").alias("_text"))
        if c.truncated:
            work = work.with_columns(chosen_samples(frame, ["finish_reason"])["finish_reason"].alias("_finish"))
        work = work.with_columns(self._word_stats(work))

        def check(enabled: bool, failed: pl.Expr, reason: pl.Expr) -> pl.Expr | None:
            return pl.when(failed).then(reason) if enabled else None

        checks = [
            check(c.empty, chars == 0, pl.lit("empty")),
            check(
                c.min_chars is not None,
                chars < (c.min_chars or 0),
                pl.format("too_short: {} chars < {}", chars, pl.lit(c.min_chars)),
            ),
            check(
                c.max_chars is not None,
                chars > (c.max_chars or 0),
                pl.format("too_long: {} chars > {}", chars, pl.lit(c.max_chars)),
            ),
            check(
                c.min_tokens is not None,
                tokens < (c.min_tokens or 0),
                pl.format("too_few_tokens: {} < {}", tokens, pl.lit(c.min_tokens)),
            ),
            check(
                c.max_tokens is not None,
                tokens > (c.max_tokens or 0),
                pl.format("too_many_tokens: {} > {}", tokens, pl.lit(c.max_tokens)),
            ),
            check(c.truncated, pl.col("_finish") == "length", pl.lit("truncated: finish_reason length")),
            check(
                c.refusals,
                text.str.contains("(?i)(?:" + "|".join(c.refusal_patterns or REFUSAL_PATTERNS) + ")"),
                pl.lit("refusal"),
            ),
            check(
                c.min_text_share is not None,
                (chars > 0) & (pl.col("_text_share") < (c.min_text_share or 0)),
                pl.format("non_text: text share {}", pl.col("_text_share").round(2)),
            ),
            check(
                c.max_repeated_ngram_share is not None,
                pl.col("_repeated_share") > (c.max_repeated_ngram_share or 0),
                pl.format(
                    "repetitive: {} of {}-grams repeat", pl.col("_repeated_share").round(2), pl.lit(c.repeated_ngram)
                ),
            ),
            check(
                c.language is not None,
                (pl.col("_words") >= c.language_min_words)
                & (
                    (pl.col("_stopword_share") < (c.min_stopword_share or 0.0))
                    | (pl.col("_ascii_letter_share") < c.min_ascii_letter_share)
                ),
                pl.format(
                    "not_english: stop words {}, ascii letters {}",
                    pl.col("_stopword_share").round(2),
                    pl.col("_ascii_letter_share").round(2),
                ),
            ),
        ]
        enabled = [expr for expr in checks if expr is not None]
        if not enabled:
            return frame
        reasons = work.select(pl.coalesce(enabled).alias("reason"))["reason"]
        return self.drop(frame, reasons.is_not_null(), reasons)

    def _word_stats(self, work: pl.DataFrame) -> list[pl.Series]:
        """Per-row text share, repeated n-gram share, stop-word share and ASCII letter share."""
        n = self.config.repeated_ngram
        text = pl.col("_text")
        letters = text.str.count_matches(r"\p{L}")
        per_row = work.select(
            (text.str.count_matches(TEXT_CHARS) / text.str.len_chars()).fill_nan(1.0).alias("_text_share"),
            (text.str.count_matches(r"[A-Za-z]") / letters).fill_nan(1.0).alias("_ascii_letter_share"),
        )
        words = (
            work.select(
                pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"),
                text.str.to_lowercase().str.extract_all(r"[\w'’]+").alias("w"),
            )
            .explode("w")
            .drop_nulls("w")
        )
        gram = pl.concat_str([pl.col("w").shift(-k).over("_row") for k in range(n)], separator=" ")
        stats = (
            words.with_columns(gram.alias("gram"))
            .group_by("_row")
            .agg(
                pl.len().alias("_words"),
                pl.col("w").is_in(STOPWORDS).mean().alias("_stopword_share"),
                pl.col("gram").drop_nulls().len().alias("_grams"),
                pl.col("gram").drop_nulls().n_unique().alias("_unique_grams"),
            )
        )
        rows = pl.DataFrame({"_row": pl.int_range(work.height, dtype=pl.Int64, eager=True)})
        stats = rows.join(stats, on="_row", how="left").sort("_row")
        # short texts cannot be repetitive in any meaningful way: need at least 2n n-grams
        repeated = (
            stats.select(
                pl.when(pl.col("_grams") >= 2 * n)
                .then(1.0 - pl.col("_unique_grams") / pl.col("_grams"))
                .otherwise(0.0)
                .alias("_repeated_share")
            )
        )["_repeated_share"]
        return [
            per_row["_text_share"],
            per_row["_ascii_letter_share"],
            repeated,
            stats["_words"].fill_null(0).alias("_words"),
            stats["_stopword_share"].fill_null(1.0).alias("_stopword_share"),
        ]
