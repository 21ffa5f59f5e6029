"""The ranker: the context memory's neighbour vote, weight fitting on held-out data, the
re-ranked top, and the hybrid retriever the chat service uses. Stub encoders with known
similarities, so every expected answer is worked out by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import stub_index as _stub_index, train_ids as _train_ids
from preprocess.schema import Conversation, Turn
from retrieval.examples import Example
from retrieval.index import ResponseFilter, ResponseIndex, build_index
from retrieval.ranker import LANGUAGE_MIN_EXAMPLES, FeatureScorer, HybridRetriever, Ranker, RankerScorer, fit_ranker

# Each topic: paraphrased questions (contexts) and the one reply they all got. A topic's questions
# and its reply share no character, so the lexical stub encoder cannot match them directly: only the
# memory ("what was answered to questions like this?") can.
TOPICS = {
    "weather": (["비 와요 오늘", "오늘 비 와요?", "비 와요 지금"], "우산 챙겨"),
    "food": (["배고파 죽겠다", "배고파 뭐 먹지", "진짜 배고파"], "맛있는 거 드세요"),
    "sleep": (["졸려 너무", "너무 졸려요", "졸려 죽겠네"], "푹 쉬어"),
}


@pytest.fixture()
def memory_index(tmp_path):
    qa = [(q, a) for qs, a in TOPICS.values() for q in qs]
    return _stub_index(tmp_path, "m", qa), [Conversation(cid, "test", "ko", [Turn("S1", q), Turn("S2", a)])
                                            for cid, (q, a) in zip(_train_ids("m", len(qa)), qa)]


def test_memory_holds_every_context_and_points_at_deduplicated_replies(memory_index):
    idx, convs = memory_index
    assert len(idx) == 3 and idx.memory.ntotal == 9 == idx.info["memory"]
    # the three weather questions all point at the one stored weather reply
    weather = idx.texts.index("우산 챙겨")
    assert sorted(idx.memory_convs[j] for j in np.flatnonzero(idx.memory_rows == weather)) == \
        sorted(c.id for c in convs[:3])


def test_neighbour_vote_finds_the_reply_the_dual_score_cannot(memory_index):
    idx, _ = memory_index
    fs = FeatureScorer(idx.encoder, idx)
    ctx = [[("U", "비 와요 또")]]          # a new paraphrase of the weather questions
    cands = [["우산 챙겨", "맛있는 거 드세요", "푹 쉬어"]]
    f = fs.features(ctx, cands, names=["dual", "neighbour"], neighbours=3, temperatures=(0.1,))
    assert np.allclose(f["dual"][0, 0], 0.0)                 # no shared character with the reply
    assert np.argmax(f["neighbour"][0]) == 0                 # ... but its neighbours got that reply
    assert f["neighbour"][0, 0] > 0.9 and f["neighbour"][0, 1:].max() < 0.1


def test_lexical_neighbours_vote_by_the_words_of_the_memory(memory_index):
    idx, convs = memory_index
    assert idx.memory_texts[0] == convs[0].turns[0].text  # the memory keeps its contexts' text
    fs = FeatureScorer.for_index(idx)
    assert "lexical_neighbour" in fs.available
    cands = [["우산 챙겨", "맛있는 거 드세요", "푹 쉬어"]]
    f = fs.features([[("U", "진짜 배고파 또")]], cands, names=["lexical_neighbour"], neighbours=3)
    assert np.argmax(f["lexical_neighbour"][0]) == 1  # its words are the food questions'
    sims, rows = fs.lexical_memory.search(["하하 호호"], k=3)
    assert not np.isfinite(sims).any()  # sharing nothing makes no neighbour


def test_leaving_out_the_own_conversation(memory_index):
    idx, convs = memory_index
    fs = FeatureScorer.for_index(idx)
    ctx = [[("S1", convs[0].turns[0].text)]]
    C = fs.encoder.encode_contexts(ctx)
    own = fs.neighbour_hits(ctx, C, ["neighbour", "lexical_neighbour"], k=1)
    left_out = fs.neighbour_hits(ctx, C, ["neighbour", "lexical_neighbour"], k=1, exclude_convs=[convs[0].id])
    for f in ("neighbour", "lexical_neighbour"):
        assert own[f][0][0, 0] == pytest.approx(1.0, abs=1e-5)  # its own entry is the nearest
        sim, row = left_out[f][0][0, 0], left_out[f][1][0, 0]   # skipped: a weather paraphrase instead
        assert sim < 0.999 and idx.texts[row] == "우산 챙겨"


class StubFeatures:
    """A FeatureScorer stand-in whose features are given arrays."""

    def __init__(self, feats, reranker=None):
        self.feats, self.reranker = feats, reranker
        self.available = list(feats)

    def features(self, contexts, candidates, names=None, temperatures=(0.1,), **kw):
        return {k: ({t: v for t in temperatures} if k == "neighbour" else v)
                for k, v in self.feats.items() if k in (names or self.available)}


def test_fit_gives_weight_to_the_informative_feature_only(monkeypatch):
    rng = np.random.default_rng(0)
    m, n = 400, 10
    exs = [Example([("S1", f"q{i}")], f"a{i}", conv_id=f"c{i}") for i in range(m)]
    signal = rng.normal(size=(m, n))
    signal[:, 0] += 2.0                         # the true candidate (column 0) scores higher
    feats = {"dual": rng.normal(size=(m, n)) + np.where(np.arange(n) == 0, 0.5, 0.0),
             "lexical": rng.normal(size=(m, n)), "neighbour": signal}
    # fit_ranker draws its own candidates; make them column-aligned with the stub's features
    import retrieval.examples as ex_mod
    monkeypatch.setattr(ex_mod, "draw_candidates",
                        lambda responses, n=10, seed=1: ex_mod.CandidateSets([[r] * n for r in responses], n))
    r = fit_ranker(StubFeatures(feats), exs, exclude_own=False, method="grid")
    assert r.weights.get("neighbour", 0) >= 2.0 and r.weights.get("lexical", 0) <= 0.25
    assert r.fitted_on["fitted"] > r.fitted_on["dual_only"] + 0.3
    assert set(r.scales) == set(r.weights)
    # the conditional logit: the informative feature weighs most, the noise next to nothing
    r = fit_ranker(StubFeatures(feats), exs, exclude_own=False, method="logit")
    w = r.weights
    assert r.fitted_on["method"] == "logit" and "cross_validated" not in r.fitted_on
    assert w["neighbour"] > 2 * w["dual"] > 0 and abs(w.get("lexical", 0.0)) < 0.1 * w["neighbour"]
    assert r.fitted_on["fitted"] > r.fitted_on["dual_only"] + 0.3
    # what each feature adds: without the informative one the ranker falls to about the dual alone
    c = r.fitted_on["contributions"]
    assert c["ranker"] > c["dual alone"] + 0.2 and c["without neighbour"] < c["ranker"] - 0.2
    assert set(c) == {"dual alone", "ranker"} | {f"without {f}" for f in w if f != "dual"}
    assert set(r.scales) == set(r.weights)
    # the default: both cross-validated on two halves, the better one refitted on all
    r = fit_ranker(StubFeatures(feats), exs, exclude_own=False)
    cv = r.fitted_on["cross_validated"]
    assert set(cv) == {"logit", "grid"} and r.fitted_on["method"] == max(cv, key=cv.get)
    assert r.weights == fit_ranker(StubFeatures(feats), exs, exclude_own=False, method=r.fitted_on["method"]).weights
    with pytest.raises(ValueError, match="unknown ranker fitting method 'best'"):
        fit_ranker(StubFeatures(feats), exs, exclude_own=False, method="best")


def test_each_language_with_enough_examples_gets_its_own_weights(monkeypatch):
    """Korean rows where only ``lexical`` knows the answer, English rows where only ``neighbour``
    does: one shared set of weights must compromise, a set per language need not."""
    rng = np.random.default_rng(0)
    m, n = 300, 10
    exs = ([Example([("S1", f"질문 {i}")], f"a{i}", conv_id=f"k{i}") for i in range(m)]
           + [Example([("S1", f"question {i}")], f"b{i}", conv_id=f"e{i}") for i in range(m)])
    true = np.where(np.arange(n) == 0, 2.5, 0.0)
    noise = lambda: rng.normal(size=(m, n))
    feats = {"dual": rng.normal(size=(2 * m, n)),
             "lexical": np.concatenate([noise() + true, noise()]),
             "neighbour": np.concatenate([noise(), noise() + true])}
    import retrieval.examples as ex_mod
    monkeypatch.setattr(ex_mod, "draw_candidates",
                        lambda responses, n=10, seed=1: ex_mod.CandidateSets([[r] * n for r in responses], n))
    r = fit_ranker(StubFeatures(feats), exs, exclude_own=False, method="logit")
    assert set(r.languages) == {"ko", "en"}
    assert r.fitted_on["languages"]["en"]["examples"] == m
    for lang in ("ko", "en"):  # what they give held out is reported: here own weights must do better
        held = r.fitted_on["languages"][lang]
        assert held["held_out_own"] > held["held_out_shared"] + 0.1
    ko, en = r.languages["ko"], r.languages["en"]
    assert ko["lexical"] > 5 * abs(ko.get("neighbour", 0.0)) and en["neighbour"] > 5 * abs(en.get("lexical", 0.0))
    # the rows are combined with their own language's weights ...
    langs = ["ko"] * m + ["en"] * m
    own = r.combine(feats, languages=langs)
    shared = r.combine(feats)
    from retrieval.metrics import ranks
    assert np.mean(ranks(own) <= 1) > np.mean(ranks(shared) <= 1) + 0.1
    assert r.fitted_on["contributions"]["ranker"] == pytest.approx(np.mean(ranks(own) <= 1), abs=1e-3)
    # ... and what the scorer serves follows the language of each context's newest turn
    fs = FeatureScorer(None)
    fs.features = lambda contexts, candidates, **kw: feats  # one temperature: plain arrays
    ctxs = [e.context for e in exs]
    np.testing.assert_allclose(fs.score(r, ctxs, [[e.response] * n for e in exs]), own, rtol=1e-6)
    # a language with too few examples, or the only language there is, keeps the shared weights
    one = fit_ranker(StubFeatures({f: v[:m] for f, v in feats.items()}), exs[:m], exclude_own=False, method="logit")
    assert one.languages == {} and "languages" not in one.fitted_on
    few = m + LANGUAGE_MIN_EXAMPLES - 1  # all of Korean, too few English rows
    some = fit_ranker(StubFeatures({f: v[:few] for f, v in feats.items()}), exs[:few], exclude_own=False, method="logit")
    assert set(some.languages) == {"ko"} and set(some.fitted_on["languages"]) == {"ko"}


def test_language_weights_apply_row_by_row_and_round_trip(tmp_path):
    r = Ranker(weights={"dual": 1.0}, scales={"dual": 1.0, "lexical": 0.5}, languages={"en": {"lexical": 2.0}})
    assert r.active == ["dual", "lexical"]
    feats = {"dual": np.array([[1.0, 0.0], [1.0, 0.0]]), "lexical": np.array([[0.0, 1.0], [0.0, 1.0]])}
    np.testing.assert_allclose(r.combine(feats, languages=["ko", "en"]), [[1.0, 0.0], [0.0, 4.0]])
    np.testing.assert_allclose(r.combine(feats), [[1.0, 0.0], [1.0, 0.0]])  # no languages: shared weights
    r.save(tmp_path)
    assert Ranker.load(tmp_path) == r
    (tmp_path / "ranker.json").write_text('{"weights": {"dual": 1}, "languages": {"en": {"vibes": 3}}}')
    with pytest.raises(ValueError, match="unknown features.*vibes"):
        Ranker.load(tmp_path)


def test_ranker_round_trip_and_unknown_feature(tmp_path):
    r = Ranker(weights={"dual": 1.0, "neighbour": 2.0}, scales={"dual": 0.2, "neighbour": 0.1}, temperature=0.03)
    r.save(tmp_path)
    back = Ranker.load(tmp_path)
    assert back == r and back.active == ["dual", "neighbour"]
    (tmp_path / "ranker.json").write_text('{"weights": {"dual": 1, "vibes": 3}}')
    with pytest.raises(ValueError, match="unknown features.*vibes"):
        Ranker.load(tmp_path)
    assert Ranker.load(tmp_path / "nowhere") is None


class StubReranker:
    path = None

    def score_pairs(self, contexts, candidates, **kw):
        return np.array([1.0 if c.startswith("good") else 0.0 for c in candidates], np.float32)


def _stub_scorer(first, reranker=None):
    fs = FeatureScorer(None, reranker=reranker)
    fs.features = StubFeatures({"dual": first}).features
    return fs


def test_rerank_reorders_only_the_first_stage_top():
    first = np.array([[0.9, 0.8, 0.7, 0.1]])      # column 3 is outside the first stage's top 3
    r = Ranker(weights={"dual": 1.0, "rerank": 10.0}, rerank_top=3)
    ctx = [[("U", "x")]]
    cands = [["bad a", "good b", "bad c", "good d"]]
    s = _stub_scorer(first, StubReranker()).score(r, ctx, cands)[0]
    # the re-ranker lifts "good b" over "bad a"; "good d" stays below the re-ranked top
    assert [cands[0][j] for j in np.argsort(-s)] == ["good b", "bad a", "bad c", "good d"]
    with pytest.raises(ValueError, match="none is loaded"):
        _stub_scorer(first).score(r, ctx, cands)


def test_hybrid_retriever_answers_from_the_memory(memory_index):
    idx, _ = memory_index
    fs = FeatureScorer(idx.encoder, idx)
    ranker = Ranker(weights={"dual": 1.0, "neighbour": 4.0}, scales={"dual": 1.0, "neighbour": 1.0}, neighbours=3)
    (hits,) = HybridRetriever(fs, ranker).search([[("U", "배고파 또")]], k=2)
    assert hits[0][1]["text"] == "맛있는 거 드세요" and len(hits) == 2
    s = RankerScorer(fs, ranker).score([[("U", "졸려 또")]], [["푹 쉬어", "우산 챙겨"]])
    assert s[0, 0] > s[0, 1]


def test_contexts_searched_together_answer_as_each_alone(memory_index):
    """HybridRetriever.search scores contexts with as many candidates in one call of the features;
    with a pool of one stored reply the neighbours add 0-2 more, so the groups differ in size."""
    idx, _ = memory_index
    fs = FeatureScorer.for_index(idx)
    ranker = Ranker(weights={"dual": 1.0, "neighbour": 4.0, "lexical": 1.0},
                    scales={"dual": 1.0, "neighbour": 1.0, "lexical": 1.0}, neighbours=3)
    hr = HybridRetriever(fs, ranker, pool=1)
    contexts = [[("U", "배고파 또")], [("U", "비 와요 또")], [("U", "졸려 또")], [("U", "완전히 새로운 말")]]
    from retrieval.ranking.candidates import candidates
    sizes = {len(ids) for ids in candidates(fs, ranker, contexts, fs.encoder.encode_contexts(contexts), 1)[0]}
    assert len(sizes) > 1, sizes  # the case the grouping is for
    together = hr.search(contexts, k=3)
    for ctx, hits in zip(contexts, together):
        (alone,) = hr.search([ctx], k=3)
        assert [r["text"] for _, r in hits] == [r["text"] for _, r in alone]
        assert [sc for sc, _ in hits] == pytest.approx([sc for sc, _ in alone], abs=1e-6)


def test_lexical_features_follow_the_newest_turn(memory_index):
    idx, _ = memory_index
    fs = FeatureScorer.for_index(idx)
    ranker = Ranker(weights={"dual": 1.0, "lexical_neighbour": 8.0}, scales={"dual": 1.0, "lexical_neighbour": 1.0},
                    neighbours=3)
    # a chat that started on the weather (and the bot answered it) has moved on to food
    chat = [("U", "오늘 비 와요?"), ("B", "우산 챙겨"), ("U", "오늘 비 와요 지금"), ("B", "우산 챙겨"), ("U", "진짜 배고파")]
    (hits,) = HybridRetriever(fs, ranker).search([chat], k=1)
    assert hits[0][1]["text"] == "맛있는 거 드세요"


def test_memory_text_with_personal_data_is_not_kept(tmp_path):
    """A context turn the PII guard flags keeps its vector and reply in the memory, but not its text."""
    qa = [("비 와요 오늘", "우산 챙겨"), ("전화 010-1234-5678", "알겠어"), ("배고파", "밥 먹자")]
    idx = _stub_index(tmp_path, "p", qa, pii_check=lambda t: "010-" in t)
    out = tmp_path / "idx"
    assert sorted(idx.texts) == sorted(["우산 챙겨", "알겠어", "밥 먹자"])
    assert idx.memory.ntotal == 3 and sorted(idx.memory_texts) == ["", "배고파", "비 와요 오늘"]
    assert "010-" not in (out / "memory.jsonl").read_text("utf-8")
    assert "lexical_neighbour" in FeatureScorer.for_index(idx).available


def test_a_ranker_of_another_build_or_model_is_refused(memory_index, tmp_path):
    idx, _ = memory_index
    folder = tmp_path / "idx"
    Ranker(weights={"dual": 1.0, "neighbour": 2.0}, fitted_on={"model_sha256": "f" * 64}).save(folder)
    with pytest.raises(ValueError, match="fitted for model sha256 ffffffffffff.*refit"):
        Ranker.load(folder, idx.info)
    assert Ranker.load(folder) is not None  # without the index's info nothing is checked
    # the index never touches ranker.json; one fitted for the build before a rebuild is ignored
    build_index(idx.encoder.path, tmp_path / "shards", folder, encoder=idx.encoder,
                filt=ResponseFilter(pii_check=lambda t: False))
    info = ResponseIndex.load(folder, encoder=idx.encoder).info
    Ranker(weights={"dual": 1.0, "neighbour": 2.0}, fitted_on={"index_build": info["build"]}).save(folder)
    assert Ranker.load(folder, info).active == ["dual", "neighbour"]
    build_index(idx.encoder.path, tmp_path / "shards", folder, encoder=idx.encoder,
                filt=ResponseFilter(pii_check=lambda t: False))
    rebuilt = ResponseIndex.load(folder, encoder=idx.encoder).info
    assert (folder / "ranker.json").exists() and rebuilt["build"] != info["build"]
    assert Ranker.load(folder, rebuilt) is None


def test_served_recall_counts_what_the_bot_answers(memory_index):
    from retrieval.evaluate import index_recall, served_recall

    idx, _ = memory_index
    fs = FeatureScorer(idx.encoder, idx)
    ranker = Ranker(weights={"dual": 1.0, "neighbour": 4.0}, scales={"dual": 1.0, "neighbour": 1.0}, neighbours=3)
    exs = [Example([("U", "배고파 또")], "맛있는 거 드세요"), Example([("U", "졸려 또")], "푹 쉬어"),
           Example([("U", "졸려 또")], "a reply the store does not have")]
    got = served_recall(HybridRetriever(fs, ranker).search, exs)
    assert got == {"served_R@1": pytest.approx(2 / 3), "served_R@10": pytest.approx(2 / 3)}
    plain = served_recall(idx.search, exs)  # the dual score alone: no shared character with the replies
    assert plain["served_R@10"] == pytest.approx(2 / 3) and plain["served_R@1"] < 2 / 3
    # index_recall's store-only figures are the same search as ResponseIndex.search
    both = index_recall(idx.encoder, idx, exs)
    assert {k: both[k] for k in plain} == plain and both["index_R@10"] == pytest.approx(1.0)


def test_the_fitted_tfidf_is_cached_in_the_index_folder_and_refitted_when_stale(memory_index, tmp_path, monkeypatch):
    from retrieval.baselines import TfidfScorer

    idx, _ = memory_index
    folder = tmp_path / "idx" / "lexical"
    ctx, cands = [[("U", "진짜 배고파 또")]], [["우산 챙겨", "맛있는 거 드세요", "푹 쉬어"]]
    names = ["lexical", "lexical_neighbour"]
    first = FeatureScorer.for_index(idx).features(ctx, cands, names=names, neighbours=3)
    assert (folder / "key.json").exists() and (folder / "contexts.npz").exists() and (folder / "replies.npz").exists()

    def no_fit(self, texts):
        raise AssertionError("refitted")
    monkeypatch.setattr(TfidfScorer, "fit", no_fit)
    again = ResponseIndex.load(tmp_path / "idx", encoder=idx.encoder)
    cached = FeatureScorer.for_index(again).features(ctx, cands, names=names, neighbours=3)
    for f in names:  # read back, not refitted: the same features
        assert np.allclose(cached[f], first[f])
    again.texts = again.texts + ["새로 들어온 답"]  # other texts (an --add): the cache is not theirs
    with pytest.raises(AssertionError, match="refitted"):
        FeatureScorer.for_index(again)
    monkeypatch.undo()
    (folder / "vocabulary.json").write_text("{broken", "utf-8")  # damaged: refitted and rewritten
    fixed = FeatureScorer.for_index(ResponseIndex.load(tmp_path / "idx", encoder=idx.encoder))
    assert np.allclose(fixed.features(ctx, cands, names=names, neighbours=3)["lexical"], first["lexical"])
    assert json.loads((folder / "vocabulary.json").read_text("utf-8"))


def test_the_stored_replies_tfidf_rows_are_looked_up_not_transformed(memory_index, monkeypatch):
    """The chat service's candidates are stored replies: the lexical feature reads their TF-IDF rows
    (computed once at load) instead of transforming the texts at every request, with or without
    the memory's lexical neighbours, and gets the same scores."""
    import retrieval.baselines

    idx, _ = memory_index
    ranker = Ranker(weights={"dual": 1.0, "lexical": 0.5})
    fs = FeatureScorer.for_ranker(idx, ranker)
    assert "lexical_neighbour" not in fs.loaded          # not weighed: the memory's contexts are not loaded
    ctx, cands = [[("U", "맛있는 거 먹고 쉬어")]], [list(idx.texts)]
    transformed = fs.features(ctx, cands, names=["lexical"])["lexical"]
    monkeypatch.setattr(retrieval.baselines, "candidate_rows", lambda *a: pytest.fail("transformed at the request"))
    looked_up = fs.features(ctx, cands, names=["lexical"], cand_rows=np.arange(len(idx.texts))[None])["lexical"]
    assert transformed.max() > 0 and np.allclose(looked_up, transformed)


def test_the_readers_of_an_index_write_nothing_into_its_folder(memory_index, tmp_path):
    """The chat service and `eval` load the ranker's features with for_ranker: with no TF-IDF cache
    they fit one in memory and write nothing; the fitting (for_index) writes the cache they read."""
    idx, _ = memory_index
    folder = tmp_path / "idx"
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    ranker = Ranker(weights={"dual": 1.0, "lexical": 0.5, "lexical_neighbour": 0.5})
    ctx, cands = [[("U", "진짜 배고파 또")]], [["우산 챙겨", "맛있는 거 드세요", "푹 쉬어"]]
    read = FeatureScorer.for_ranker(idx, ranker).features(ctx, cands, names=ranker.active, neighbours=3)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    FeatureScorer.for_index(idx)  # the fitting's load writes the cache ...
    assert (folder / "lexical" / "key.json").exists()
    again = FeatureScorer.for_ranker(ResponseIndex.load(folder, encoder=idx.encoder), ranker)
    cached = again.features(ctx, cands, names=ranker.active, neighbours=3)
    for f in ("lexical", "lexical_neighbour"):  # ... and a reader gets the features it computed alone
        assert np.allclose(cached[f], read[f])


def test_an_add_refits_the_tfidf_cache_that_the_readers_then_read(memory_index, tmp_path, monkeypatch):
    from preprocess.schema import write_shard
    from retrieval.baselines import TfidfScorer
    from retrieval.ranker import update_for_index
    idx, _ = memory_index
    folder = tmp_path / "idx"
    ranker = Ranker(weights={"dual": 1.0, "lexical": 0.5})
    ranker.save(folder)
    old = FeatureScorer.for_index(idx).lexical.vec.vocabulary_  # the fitting wrote the cache of three replies
    more = tmp_path / "more"
    more.mkdir()
    write_shard(more / "shard-00000.jsonl", [Conversation("new-0", "test", "ko", [Turn("S1", "새 질문"), Turn("S2", "새로 들어온 답")])])
    build_index(idx.encoder.path, more, folder, add=True, encoder=idx.encoder, filt=ResponseFilter(pii_check=lambda t: False))
    update_for_index(folder)  # what `--add` runs after the index; no model loaded (the stub folder holds none)
    grown = ResponseIndex.load(folder, encoder=idx.encoder)
    assert grown.texts[-1] == "새로 들어온 답"

    def no_fit(self, texts):
        raise AssertionError("refitted")
    monkeypatch.setattr(TfidfScorer, "fit", no_fit)  # the chat service reads the refreshed cache
    served = FeatureScorer.for_ranker(grown, ranker).lexical
    assert "들어온" in served.vec.vocabulary_ and "들어온" not in old


def test_leaving_out_a_long_own_conversation_still_finds_k_neighbours():
    """The 60 nearest memory entries are the example's own conversation (a long chat): the search
    goes deeper until it has k entries of other conversations, in similarity order."""
    from retrieval.ranker import _top_excluding

    n, k = 100, 5
    convs = ["own"] * 60 + [f"c{j}" for j in range(40)]
    asked = []

    def search(ids, depth):  # entry j has similarity 1 - j/n to every query
        asked.append(depth)
        J = np.tile(np.arange(depth), (len(ids), 1))
        return 1.0 - J / n, J

    rows = np.arange(n) + 1000
    sims, got = _top_excluding(search, 2, k, n, rows, convs, ["own", "c0"])
    assert got[0].tolist() == list(range(1060, 1065))     # past the 60 own entries
    assert got[1].tolist() == [1000, 1001, 1002, 1003, 1004]  # another row's own conversation is fine
    assert np.isfinite(sims).all() and asked[0] == k + 32 and asked[-1] == n
    sims, got = _top_excluding(search, 1, k, 62, rows, convs, ["own"])  # the memory runs out
    assert got[0, :2].tolist() == [1060, 1061] and not np.isfinite(sims[0, 2:]).any()


def test_stored_candidates_reuse_the_memory_tfidf_rows(memory_index):
    """The chat service's candidates are stored replies: their TF-IDF rows are read from the
    lexical memory (the same features as transforming their texts), and only the context is
    transformed per request."""
    idx, _ = memory_index
    fs = FeatureScorer.for_index(idx)
    ctx, cands = [[("U", "진짜 배고파 또")]], [["우산 챙겨", "맛있는 거 드세요", "푹 쉬어"]]
    rows = [[idx.texts.index(c) for c in cands[0]]]
    names = ["lexical", "lexical_neighbour"]
    by_text = fs.features(ctx, cands, names=names, neighbours=3)
    by_row = fs.features(ctx, cands, names=names, neighbours=3, cand_rows=rows)
    for f in names:
        assert np.allclose(by_row[f], by_text[f]) and by_row[f].shape == (1, 3)
    assert np.argmax(by_row["lexical_neighbour"][0]) == 1
    sizes = []
    transform = fs.lexical.vec.transform
    fs.lexical.vec.transform = lambda texts: sizes.append(len(texts)) or transform(texts)
    ranker = Ranker(weights={"dual": 1.0, "lexical": 1.0, "lexical_neighbour": 8.0},
                    scales={"dual": 1.0, "lexical": 1.0, "lexical_neighbour": 1.0}, neighbours=3)
    (hits,) = HybridRetriever(fs, ranker).search(ctx, k=1)
    assert hits[0][1]["text"] == "맛있는 거 드세요" and sizes and max(sizes) == 1


def test_the_grid_search_scores_each_combination_as_the_protocol_ranks_it():
    import itertools

    from retrieval.ranker import WEIGHT_GRID, _grid_best, _objective
    rng = np.random.default_rng(0)
    z = {f: rng.normal(size=(60, 10)) for f in ("dual", "a", "b")}
    for f in z:
        z[f][:4] = 0.0  # rows where every candidate ties the true one: rank 10 (ties against the system)
    z["a"][:, 5] = z["a"][:, 0]
    z["b"][:, 5] = z["b"][:, 0]
    best = None
    for combo in itertools.product(WEIGHT_GRID, repeat=2):  # one combination at a time, the first of equals kept
        obj = _objective(z["dual"] + combo[0] * z["a"] + combo[1] * z["b"])
        if best is None or obj > best[0] + 1e-9:
            best = (obj, combo)
    got = _grid_best(z, ["a", "b"])
    assert got[1] == best[1] and abs(got[0] - best[0]) < 1e-6
    assert _grid_best(z, [])[0] == pytest.approx(_objective(z["dual"]))  # dual alone
