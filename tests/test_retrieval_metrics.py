"""Metric code on stub scorers whose right answers are known (docs/protocol.md)."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.baselines import BM25Scorer, TfidfScorer, bm25_tokens
from retrieval.evaluate import RetrievalEvaluator
from retrieval.examples import Example, draw_candidates
from retrieval.metrics import mrr, rank_metrics, ranks


def test_ties_count_against_the_system():
    s = np.array([[1.0, 1.0, 0.0, 0.0],    # one tie -> rank 2
                  [0.0, 0.0, 0.0, 0.0],    # all equal -> rank n
                  [2.0, 1.0, 1.0, 1.0],    # strictly best -> rank 1
                  [0.0, 1.0, 2.0, -1.0]])  # two above -> rank 3
    assert ranks(s).tolist() == [2, 4, 1, 3]


def test_all_zero_scorer_gets_rank_n_and_known_mrr():
    m = rank_metrics(np.zeros((7, 100)))
    assert m["R10@1"] == m["R10@5"] == m["R100@10"] == 0.0
    assert m["MRR"] == pytest.approx(0.1)  # rank 10 of 10 everywhere


def test_perfect_scorer_and_mrr_values():
    s = np.zeros((3, 100))
    s[:, 0] = 1.0
    m = rank_metrics(s)
    assert all(m[k] == 1.0 for k in ("R10@1", "R10@2", "R10@5", "R100@1", "R100@10", "MRR"))
    assert mrr(np.array([1, 2, 4])) == pytest.approx((1 + 0.5 + 0.25) / 3)


def test_r10_uses_the_first_ten_nested_candidates():
    s = np.zeros((1, 100))
    s[0, 0], s[0, 50] = 1.0, 2.0  # beaten only by a candidate outside the first 10
    m = rank_metrics(s)
    assert m["R10@1"] == 1.0 and m["R100@1"] == 0.0 and m["R100@10"] == 1.0


def test_negatives_exclude_the_true_text_and_are_seeded():
    responses = [f"r{i % 150}" for i in range(300)]  # every text appears twice
    a, b = draw_candidates(responses, n=100), draw_candidates(responses, n=100)
    assert a.texts == b.texts
    for true, cands in zip(responses, a.texts):
        assert cands[0] == true and true not in cands[1:]
        assert len(cands) == 100 and len(set(cands)) == 100
    with pytest.raises(ValueError, match="distinct test responses"):
        draw_candidates(["a", "b", "c"], n=10)


class LookupScorer:
    """Scores 1 for the response paired with the context's key, 0 otherwise."""
    name = "lookup"

    def __init__(self, answers):
        self.answers = answers

    def score(self, contexts, candidates):
        return np.array([[float(c == self.answers[ctx[-1][1]]) for c in cands]
                         for ctx, cands in zip(contexts, candidates)])


def test_evaluator_with_stub_encoder():
    exs = [Example([("S1", f"q{i}")], f"a{i}") for i in range(120)]
    ev = RetrievalEvaluator(exs)
    right = ev(LookupScorer({f"q{i}": f"a{i}" for i in range(120)}))
    assert right["R10@1"] == right["R100@1"] == right["MRR"] == 1.0
    # half the contexts point to a text that is never a candidate: all-zero rows rank last
    half = ev(LookupScorer({f"q{i}": (f"a{i}" if i % 2 == 0 else "nothing") for i in range(120)}))
    assert half["R10@1"] == pytest.approx(0.5) and half["MRR"] == pytest.approx(0.5 + 0.5 * 0.1)


def test_baselines_on_a_toy_corpus():
    train = ["the weather is sunny today", "I love pizza with cheese", "my cat sleeps all day",
             "we went hiking in the mountains", "오늘 날씨가 좋네요", "피자 먹고 싶다"]
    contexts = [[("S1", "how is the weather today?")], [("S1", "피자 좋아해?")]]
    cands = [["the weather is sunny today", "my cat sleeps all day", "I love pizza with cheese"],
             ["피자 먹고 싶다", "오늘 날씨가 좋네요", "my cat sleeps all day"]]
    for sc in (BM25Scorer().fit(train), TfidfScorer().fit(train)):
        s = sc.score(contexts, cands)
        assert s.shape == (2, 3)
        assert ranks(s).tolist() == [1, 1], sc.name
    assert "#피자" in bm25_tokens("피자 좋아") and "피자" in bm25_tokens("피자 좋아")
    # no overlap at all: BM25 gives 0 everywhere, which ranks last under the tie rule
    z = BM25Scorer().fit(train).score([[("S1", "xyz")]], [["qqq", "www"]])
    assert ranks(z).tolist() == [2]


def test_memo_encoder_encodes_each_distinct_input_once_and_answers_as_the_encoder():
    from retrieval.evaluate import EncoderScorer, MemoEncoder

    class Counting:
        dim, path = 3, "somewhere"

        def __init__(self):
            self.contexts, self.responses = [], []

        def _vec(self, s):
            v = np.array([len(s), s.count("a") + 1, s.count("b")], np.float32)
            return v / np.linalg.norm(v)

        def encode_contexts(self, contexts, **kw):
            self.contexts += contexts
            return np.stack([self._vec(" ".join(t for _, t in c)) for c in contexts])

        def encode_responses(self, texts, speaker="R", **kw):
            self.responses += [(speaker, t) for t in texts]
            return np.stack([self._vec(t) for t in texts])

    inner = Counting()
    enc = MemoEncoder(inner)
    ctx = [[("A", "ab"), ("B", "aab")], [("A", "b")], [("A", "ab"), ("B", "aab")]]
    cands = [["a", "bb"], ["bb", "ab"], ["a", "ab"]]
    direct = EncoderScorer(Counting()).score(ctx, cands)
    assert np.allclose(EncoderScorer(enc).score(ctx, cands), direct)
    assert np.allclose(EncoderScorer(enc).score(ctx, cands), direct)  # the second time from the memo
    assert len(inner.contexts) == 2 and sorted(t for _, t in inner.responses) == ["a", "ab", "bb"]
    assert np.allclose(enc.encode_responses(["a"], speaker="S"), inner._vec("a")[None])
    assert inner.responses[-1] == ("S", "a")  # another speaker is another input
    assert enc.encode_contexts([]).shape == (0, 3) and enc.path == "somewhere"  # the rest is the encoder's
    # a keyword that may change the vectors is not answered from another keyword's memo
    n = len(inner.contexts)
    enc.encode_contexts(ctx[:1], max_length=8)
    assert len(inner.contexts) == n + 1
    enc.encode_contexts(ctx[:1], batch_size=1)  # a batch size changes nothing: from the memo
    assert len(inner.contexts) == n + 1
    import copy
    assert copy.copy(enc).path == "somewhere"  # copying does not recurse through __getattr__
