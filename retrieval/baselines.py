"""Lexical baselines fitted on the training responses (docs/protocol.md).

* BM25 over words plus character bigrams (Lucene BM25 as bm25s computes it: its idf and
  term-frequency functions, k1=1.5, b=0.75), document statistics from the training responses;
* TF-IDF over character 1-3 grams (``char_wb``), cosine similarity.

Both score a context (its turns joined, newest last) against arbitrary candidate texts, so
they run on exactly the candidate sets the encoders see.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import numpy as np

from retrieval.examples import distinct

_WORD = re.compile(r"\w+", re.UNICODE)


def context_text(context: Sequence[tuple[str, str]], turns: int | None = None) -> str:
    ctx = context if turns is None else context[-turns:]
    return " ".join(t.replace("\n", " ") for _, t in ctx)


def bm25_tokens(text: str, words: bool = True, bigrams: bool = True) -> list[str]:
    """Lower-cased words plus the character bigrams of the lower-cased text (spaces and
    punctuation included, so bigrams also span word boundaries). Korean needs the bigrams:
    particles glue onto words, so whole words rarely match. This tokenization reproduces the
    protocol's ChatbotData BM25 row (0.30 / 0.40 / 0.16 / 0.40)."""
    t = text.lower()
    toks: list[str] = _WORD.findall(t) if words else []
    if bigrams:
        toks.extend("#" + t[i:i + 2] for i in range(len(t) - 1))
    return toks


class BM25Scorer:
    name = "BM25 words + char bigrams"

    def __init__(self, k1: float = 1.5, b: float = 0.75, words: bool = True, bigrams: bool = True):
        self.k1, self.b, self.words, self.bigrams = k1, b, words, bigrams
        try:  # bm25s's own Lucene formulas, so the numbers match a bm25s index
            from bm25s.scoring import _score_idf_lucene, _score_tfc_lucene
            self._idf_fn, self._tfc_fn = _score_idf_lucene, _score_tfc_lucene
        except ImportError:  # pragma: no cover - same formulas
            self._idf_fn = lambda df, N: math.log(1 + (N - df + 0.5) / (df + 0.5))
            self._tfc_fn = lambda tf, l_d, l_avg, k1, b, delta=None: tf / (k1 * ((1 - b) + b * l_d / l_avg) + tf)
        if not bigrams:
            self.name = "BM25 words"

    def _tok(self, text: str) -> list[str]:
        return bm25_tokens(text, self.words, self.bigrams)

    def fit(self, responses: Sequence[str]) -> "BM25Scorer":
        df: Counter = Counter()
        total = 0
        for r in responses:
            toks = self._tok(r)
            total += len(toks)
            df.update(set(toks))
        self.n_docs = max(1, len(responses))
        self.avgdl = max(1e-9, total / self.n_docs)
        self.idf = {t: float(self._idf_fn(c, N=self.n_docs)) for t, c in df.items()}
        self.unseen_idf = float(self._idf_fn(0, N=self.n_docs))
        return self

    def score_one(self, query: str, doc_tf: Counter, doc_len: int) -> float:
        s = 0.0
        for t in set(self._tok(query)):
            tf = doc_tf.get(t, 0)
            if tf:
                s += self.idf.get(t, self.unseen_idf) * float(
                    self._tfc_fn(np.float64(tf), doc_len, self.avgdl, self.k1, self.b))
        return s

    def score(self, contexts: Sequence[Sequence[tuple[str, str]]], candidates: Sequence[Sequence[str]]) -> np.ndarray:
        cache: dict[str, tuple[Counter, int]] = {}
        out = np.zeros((len(contexts), len(candidates[0]) if candidates else 0), dtype=np.float64)
        for i, (ctx, cands) in enumerate(zip(contexts, candidates)):
            q = context_text(ctx)
            for j, c in enumerate(cands):
                if c not in cache:
                    toks = self._tok(c)
                    cache[c] = (Counter(toks), len(toks))
                out[i, j] = self.score_one(q, *cache[c])
        return out


class _NoBlankGrams:
    """An analyzer that drops the n-grams made of word padding alone (" "): every text has them,
    so two texts sharing nothing else would match. A class, not a lambda, so it pickles."""

    def __init__(self, base):
        self.base = base

    def __call__(self, doc: str) -> list[str]:
        return [g for g in self.base(doc) if g.strip()]


class TfidfScorer:
    name = "TF-IDF char 1-3"

    def __init__(self, analyzer: str = "char_wb", ngram_range: tuple[int, int] = (1, 3), drop_space: bool = False):
        """``drop_space``: leave out the blank n-grams (see _NoBlankGrams), in one fitting pass."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        self.vec = TfidfVectorizer(analyzer=analyzer, ngram_range=ngram_range, sublinear_tf=True)
        if drop_space:  # the same analyzer, filtered (ngram_range then lives inside it)
            self.vec = TfidfVectorizer(analyzer=_NoBlankGrams(self.vec.build_analyzer()), sublinear_tf=True)

    def fit(self, responses: Sequence[str]) -> "TfidfScorer":
        """Fit the vocabulary and idf on ``responses``."""
        self.vec.fit(list(responses))
        return self

    def candidate_rows(self, candidates: Sequence[Sequence[str]]):
        """The (m * n, V) TF-IDF rows of the candidates, row-major; each distinct text transformed once."""
        return candidate_rows(self.vec, candidates)

    def score(self, contexts, candidates, rows=None) -> np.ndarray:
        """Cosine of each context's text and its candidates (rows are L2-normalised). ``rows``:
        the candidates' TF-IDF rows (:meth:`candidate_rows`, row-major) when already known."""
        m, n = len(candidates), len(candidates[0]) if candidates else 0
        if rows is None:
            rows = self.candidate_rows(candidates)
        Q = self.vec.transform([context_text(ctx) for ctx in contexts])
        return np.asarray(rows.multiply(Q[np.repeat(np.arange(m), n)]).sum(1), dtype=np.float64).reshape(m, n)


def candidate_rows(vec, candidates: Sequence[Sequence[str]]):
    """``vec``'s (m * n, V) TF-IDF rows of the candidates, row-major; each distinct text transformed once."""
    uniq, idx = distinct(candidates)
    return vec.transform(uniq)[idx.ravel()]
