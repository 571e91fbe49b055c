"""ROUGE-L novelty against a growing pool of instructions (the Self-Instruct filter).

Scores are exactly rouge_score's rougeL F-measure (its tokenizer, no stemming, its
LCS), as in the paper's code. Comparing every candidate with every pool entry is
quadratic, so candidates are first bounded from above with bag-of-words overlap
(an LCS can never be longer than the multiset overlap): only the pool entries whose
bound could beat the best score so far are scored exactly.
"""

from __future__ import annotations

import numpy as np
from rouge_score import rouge_scorer, tokenizers
from scipy import sparse

_TOKENIZER = tokenizers.DefaultTokenizer(use_stemmer=False)


def rouge_tokens(text: str) -> list[str]:
    return _TOKENIZER.tokenize(text)


def rouge_l(a: str | list[str], b: str | list[str]) -> float:
    """rouge_score's rougeL F-measure between two texts (or token lists)."""
    a_tokens = rouge_tokens(a) if isinstance(a, str) else a
    b_tokens = rouge_tokens(b) if isinstance(b, str) else b
    return rouge_scorer._score_lcs(a_tokens, b_tokens).fmeasure


class RougeLPool:
    """Instructions seen so far; `max_similarity` finds the most similar one."""

    def __init__(self, texts: list[str] | None = None) -> None:
        self.texts: list[str] = []
        self.tokens: list[list[str]] = []
        self.vocabulary: dict[str, int] = {}
        self._rows: list[dict[int, int]] = []  # token id -> count, per pool entry
        self._matrix: sparse.csr_matrix | None = None  # counts of the first `_indexed` entries
        self._lengths = np.zeros(0)
        self._indexed = 0
        for text in texts or []:
            self.add(text)

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, text: str) -> None:
        tokens = rouge_tokens(text)
        counts: dict[int, int] = {}
        for token in tokens:
            token_id = self.vocabulary.setdefault(token, len(self.vocabulary))
            counts[token_id] = counts.get(token_id, 0) + 1
        self.texts.append(text)
        self.tokens.append(tokens)
        self._rows.append(counts)

    def _index(self) -> None:
        """Rebuild the count matrix once enough entries were added since the last build."""
        if self._matrix is not None and len(self.texts) - self._indexed < 256:
            return
        rows, cols, values = [], [], []
        for row, counts in enumerate(self._rows):
            rows.extend([row] * len(counts))
            cols.extend(counts.keys())
            values.extend(counts.values())
        shape = (len(self._rows), max(len(self.vocabulary), 1))
        self._matrix = sparse.csr_matrix((values, (rows, cols)), shape=shape, dtype=np.float32)
        self._lengths = np.asarray(self._matrix.sum(axis=1)).ravel()
        self._indexed = len(self._rows)

    def _upper_bounds(self, tokens: list[str]) -> np.ndarray:
        """Per indexed entry, an upper bound of the rougeL F-measure with `tokens`."""
        assert self._matrix is not None
        query: dict[int, int] = {}
        indexed_vocabulary = self._matrix.shape[1]  # tokens first seen later occur in no indexed entry
        for token in tokens:
            token_id = self.vocabulary.get(token, indexed_vocabulary)
            if token_id < indexed_vocabulary:
                query[token_id] = query.get(token_id, 0) + 1
        if not query:
            return np.zeros(self._indexed)
        ids = np.fromiter(query.keys(), dtype=np.int64)
        counts = np.fromiter(query.values(), dtype=np.float32)
        columns = self._matrix[:, ids]
        # overlap = sum_t min(q_t, c_t) <= both sum_t [c_t > 0] q_t and sum_t c_t [q_t > 0]
        present = columns.copy()
        present.data[:] = 1.0
        overlap = np.minimum(present @ counts, np.asarray(columns.sum(axis=1)).ravel())
        total = self._lengths + len(tokens)
        return np.where(total > 0, 2.0 * overlap / np.maximum(total, 1), 0.0)

    def max_similarity(self, text: str, exclude: int | None = None) -> tuple[float, int | None]:
        """(highest rougeL F against the pool, index of that entry); (0.0, None) for an empty pool.

        `exclude` skips one pool entry (scoring an entry against all the others).
        """
        if not self.texts:
            return 0.0, None
        tokens = rouge_tokens(text)
        self._index()
        best, best_index = 0.0, None
        bounds = self._upper_bounds(tokens)
        for index in np.argsort(-bounds, kind="stable"):
            if bounds[index] <= best:
                break
            if index == exclude:
                continue
            score = rouge_l(tokens, self.tokens[index])
            if score > best:
                best, best_index = score, int(index)
        for index in range(self._indexed, len(self.texts)):  # added since the last build
            if index == exclude:
                continue
            score = rouge_l(tokens, self.tokens[index])
            if score > best:
                best, best_index = score, index
        return best, best_index


def is_too_similar(score: float, threshold: float) -> bool:
    """score > threshold, where float noise around an exact ratio (7/10 as 0.70000001) is not "more"."""
    return score > threshold + 1e-9
