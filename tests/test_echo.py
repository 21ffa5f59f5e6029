"""The ``echo`` ranker feature and the copy negatives the ranker is fitted with: a reply that
repeats the user's words is refused even when the dual encoder likes it best."""
from __future__ import annotations

import numpy as np

from retrieval.examples import Example
from retrieval.features import BY_NAME, FEATURES
from retrieval.features.base import Batch
from retrieval.features.echo import Echo, bigrams, echo
from retrieval.ranking.fitting import fit_ranker, with_copies


def test_echo_is_zero_for_shared_words_and_one_for_a_copy():
    turns = [bigrams("오늘 날씨 진짜 좋다"), bigrams("뭐해?")]
    assert echo("오늘 날씨 진짜 좋다", turns) == 1.0
    assert echo("오늘 날씨 진짜 좋다!!", turns) == 1.0 and echo("뭐해", turns) == 1.0   # punctuation aside
    assert echo("날씨 좋네요", turns) == 0.0 and echo("응 좋아", turns) == 0.0       # shared words: no echo
    assert 0.0 < echo("오늘 날씨 진짜 좋다 ㅋㅋ", turns) < 1.0                      # a near-copy: partly
    assert echo("I AM FINE", [bigrams("i am fine.")]) == 1.0 and echo("", turns) == 0.0
    assert "echo" in FEATURES and BY_NAME["echo"] is Echo
    ctx = [[("S1", "밥 먹었어?"), ("S2", "아직 안 먹었어")], [("S1", "hello there")]]
    batch = Batch(ctx, [["아직 안 먹었어", "밥 먹었어", "같이 먹을래?"], ["hello there!", "hi"]],
                  C=np.zeros((2, 1)), cand_vecs=np.zeros((2, 3, 1)), hits={})
    got = Echo().score(batch)
    assert got.shape == (2, 3) and got[0, 0] == 1.0 and got[0, 1] == 1.0 and got[0, 2] == 0.0
    assert got[1, 0] == 1.0 and got[1, 1] == 0.0 and got[1, 2] == 0.0   # the padding column


def test_copies_replace_the_last_wrong_candidate():
    cands = [["true", "a", "b"], ["true", "c", "d"], ["x", "y", "z"]]
    ctxs = [[("S1", "hello")], [("S1", "c")], []]
    out, n = with_copies(cands, ctxs)
    assert out == [["true", "a", "hello"], ["true", "c", "d"], ["x", "y", "z"]] and n == 1
    assert cands[0] == ["true", "a", "b"]   # the input is left as it was


class CopyLovingScorer:
    """A dual encoder that ranks a copy of the user's turn first and the true reply second."""

    def __init__(self):
        self.available, self.reranker = ["dual", "echo"], None

    def features(self, contexts, candidates, names=None, **kw):
        rng = np.random.default_rng(0)
        dual = np.array([[(2.0 if c == ctx[-1][1] else 1.0 if j == 0 else 0.0) for j, c in enumerate(cs)]
                         for ctx, cs in zip(contexts, candidates)]) + 0.1 * rng.normal(size=(len(candidates), 10))
        batch = Batch(contexts, candidates, C=None, cand_vecs=None, hits={})
        return {"dual": dual, "echo": Echo().score(batch)}


def test_fitted_with_copies_the_ranker_refuses_the_echo(monkeypatch):
    import retrieval.examples as ex_mod
    exs = [Example([("S1", f"질문 번호 {i} 입니다")], f"대답 {i}", conv_id=f"c{i}") for i in range(200)]
    pool = [f"다른 대답 {k}" for k in range(50)]
    monkeypatch.setattr(ex_mod, "draw_candidates", lambda responses, n=10, seed=1: ex_mod.CandidateSets(
        [[r] + pool[i % 40:i % 40 + n - 1] for i, r in enumerate(responses)], n))
    plain = fit_ranker(CopyLovingScorer(), exs, exclude_own=False, method="logit")
    assert "echo" not in plain.weights                       # no copies among the candidates: nothing to learn
    r = fit_ranker(CopyLovingScorer(), exs, exclude_own=False, method="logit", copy_negatives=True)
    assert r.fitted_on["copy_negatives"] == 200 and abs(r.fitted_on["dual_only"] - 0.5) < 0.05  # R10@1 0, MRR 0.5
    assert r.weights["echo"] < 0 < r.weights["dual"] and r.fitted_on["fitted"] > 1.9   # R10@1 + MRR near 2: the copy refused
