"""The bag-of-n-grams dual encoder (retrieval.ngram) and its place in the ranker: it learns pairs
that share no character, keeps matching n-grams it never saw, survives a save/load, and
`fit_for_index` trains it into the index folder."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from conftest import DISJOINT_TOPICS as TOPICS, topic_pairs as _pairs, topic_question as _question
from retrieval.metrics import ranks
from retrieval.ngram import NgramEncoder, NgramSettings, grams

def _small(**kw) -> NgramSettings:
    return NgramSettings(**{"buckets": 1 << 14, "dim": 64, "epochs": 20, "batch_size": 16, "lr": 1e-2, **kw})


def _r_at_1(enc: NgramEncoder, pairs) -> float:
    """R@1 of the topic replies (the true one in column 0, as the protocol's candidate sets)."""
    replies = [r for _, r in TOPICS]
    S = enc.encode([c for c, _ in pairs]) @ enc.encode(replies).T
    order = [[replies.index(r)] + [j for j in range(len(replies)) if replies[j] != r] for _, r in pairs]
    return float(np.mean(ranks(np.take_along_axis(S, np.array(order), 1)) <= 1))


def test_grams_frame_the_text_and_add_its_words():
    g = grams("비 와", orders=(1, 2))
    assert g[:5] == ["^", "비", "_", "와", "$"]
    assert "^비" in g and "비_" in g and "와$" in g
    assert g[-2:] == ["w:비", "w:와"]
    assert grams("", orders=(1, 2)) == ["^", "$", "^$"]  # an empty text still has features
    assert grams("  a   b ") == grams("a b")


def test_training_learns_pairs_that_share_no_character():
    enc = NgramEncoder(_small())
    train, held = _pairs(240, seed=0), _pairs(60, seed=1)
    # untrained, only the table's random rows: near the chance of 1 in 10
    enc.set_rows(np.arange(enc.settings.buckets))
    before = _r_at_1(enc, held)
    info = enc.fit(train, show_progress=False)
    after = _r_at_1(enc, held)
    print(f"n-gram encoder: R@1 of 10 {before:.2f} -> {after:.2f}, {info}")
    assert before < 0.5
    assert after > 0.9
    assert info["steps"] == 20 * (240 // 16) and info["rows"] == len(enc.rows)


def test_unseen_ngrams_still_match_and_a_save_load_round_trip_is_exact(tmp_path):
    enc = NgramEncoder(_small(epochs=2))
    enc.fit(_pairs(64, seed=0), show_progress=False)
    # 'Zyx' is in no training pair: its n-grams get fixed random vectors, so a context and a reply
    # that share it still match, and better than a reply that does not
    ctx, same, other = enc.encode(["Zyxwv 어때?", "Zyxwv 좋아", "qpqpq 좋아"])
    assert float(ctx @ same) > float(ctx @ other) + 0.2
    texts = ["비 와 우산", "Zyxwv", "", "처음 보는 말"]
    enc.save(tmp_path)
    back = NgramEncoder.load(tmp_path)
    assert np.array_equal(back.encode(texts), enc.encode(texts))  # float16 rounding happened before fitting ended
    assert json.loads((tmp_path / "ngram" / "settings.json").read_text())["trained"]["steps"] == 2 * 4
    assert NgramEncoder.load(tmp_path / "elsewhere") is None
    np.save(tmp_path / "ngram" / "vectors.npy", np.zeros((3, 64), np.float16))
    with pytest.raises(ValueError, match="ngram.*do not match settings.json.*dialogbert index"):
        NgramEncoder.load(tmp_path)
    (tmp_path / "ngram" / "rows.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="ngram is damaged.*dialogbert index"):
        NgramEncoder.load(tmp_path)


def test_heads_serve_the_mean_of_their_cosines_and_survive_a_save_load(tmp_path):
    enc = NgramEncoder(_small(heads=3, epochs=2))
    enc.fit(_pairs(64, seed=0), show_progress=False)
    texts = ["비 와 우산", "챙겨 나가요", "Zyxwv 좋아", ""]
    V = enc.encode(texts)
    assert V.shape == (4, 3 * 64) and enc.dim == 3 * 64
    assert np.allclose(np.linalg.norm(V, axis=1), 1, atol=1e-5)
    H = V.reshape(4, 3, 64) * np.sqrt(3)  # each head a unit vector of its own
    assert np.allclose(np.linalg.norm(H, axis=2), 1, atol=1e-5)
    assert np.allclose(V @ V.T, np.einsum("ahd,bhd->ab", H, H) / 3, atol=1e-5)
    assert not np.allclose(H[:, 0], H[:, 1])  # independent initialisations
    enc.save(tmp_path)
    back = NgramEncoder.load(tmp_path)
    assert back.settings.heads == 3 and np.array_equal(back.encode(texts), V)
    back.save(tmp_path)  # a loaded table (memory-mapped from that folder) saved over itself
    assert np.array_equal(NgramEncoder.load(tmp_path).encode(texts), V)
    # a folder saved before there were heads has none in its settings.json: one head
    one = NgramEncoder(_small(heads=1, epochs=1))
    one.fit(_pairs(32, seed=0), show_progress=False)
    one.save(tmp_path / "old")
    f = tmp_path / "old" / "ngram" / "settings.json"
    f.write_text(json.dumps({k: v for k, v in json.loads(f.read_text()).items() if k != "heads"}))
    old = NgramEncoder.load(tmp_path / "old")
    assert old.settings.heads == 1 and np.array_equal(old.encode(texts), one.encode(texts))
    with pytest.raises(ValueError, match="at least one head"):
        _small(heads=0)


def test_the_heads_loss_is_the_mean_of_each_heads_own_loss():
    import torch

    from retrieval.towers import in_batch_loss
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 3, 8, generator=g), dim=-1).requires_grad_()
    r = torch.nn.functional.normalize(torch.randn(6, 3, 8, generator=g), dim=-1)
    rid = np.array([0, 1, 2, 2, 3, 4])  # pairs 2 and 3 share a reply: no negatives of each other
    loss = in_batch_loss(a, r, 10.0, rid)
    each = [in_batch_loss(a[:, h], r[:, h], 10.0, rid) for h in range(3)]
    assert torch.allclose(loss, sum(each) / 3)
    loss.backward()
    only0 = a.detach().clone().requires_grad_()
    in_batch_loss(only0[:, 0], r[:, 0], 10.0, rid).backward()
    assert torch.allclose(a.grad[:, 0], only0.grad[:, 0] / 3)  # a head's gradient is its own loss's


def test_row_adam_updates_as_sparse_adam_does():
    import torch

    from retrieval.ngram import RowAdam, _packed
    F = torch.nn.functional
    g = torch.Generator().manual_seed(0)
    start = torch.randn(40, 6, generator=g)
    target = torch.randn(5, 6, generator=g)
    rng = np.random.default_rng(0)
    batches = [[rng.integers(0, 30, size=rng.integers(1, 6)) for _ in range(5)] for _ in range(8)]
    ref = torch.nn.Parameter(start.clone())
    opt = torch.optim.SparseAdam([ref], lr=0.05)
    mine = RowAdam(start.clone(), lr=0.05)
    for bags in batches:
        flat, offsets = _packed(bags)
        loss = ((F.embedding_bag(flat, ref, offsets, mode="sum", sparse=True) - target) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rows, local = np.unique(flat.numpy(), return_inverse=True)
        leaf = mine.gather(rows)
        ((F.embedding_bag(torch.from_numpy(local.reshape(-1)), leaf, offsets, mode="sum") - target) ** 2).sum().backward()
        mine.step()
    assert torch.allclose(mine.table, ref.detach(), atol=1e-5)
    assert not torch.allclose(mine.table, start)
    touched = np.unique(np.concatenate([b for bags in batches for b in bags]))
    untouched = np.setdiff1d(np.arange(40), touched)
    assert len(untouched) >= 10
    assert torch.equal(mine.table[untouched], start[untouched])  # rows no batch used stay as they were


def test_stored_reply_vectors_score_as_hashing_does_and_follow_the_store(tmp_path, capsys):
    enc = NgramEncoder(_small(epochs=2))
    enc.fit(_pairs(64, seed=0), show_progress=False)
    enc.save(tmp_path)
    texts = [r for _, r in TOPICS] + ["Zyxwv 처음 보는 말", ""]
    contexts = [[("A", c)] for c, _ in _pairs(12, seed=3)]
    rows = np.array([[(i + j) % len(texts) for j in range(5)] for i in range(len(contexts))])
    cands = [[texts[j] for j in r] for r in rows]
    hashed = enc.score(contexts, cands)
    enc.attach_replies(tmp_path, texts)
    d = tmp_path / "ngram"
    assert np.load(d / "replies.npy").shape == (len(texts), enc.dim)
    assert json.loads((d / "replies.json").read_text())["count"] == len(texts)
    assert np.abs(enc.score(contexts, cands, rows=rows) - hashed).max() < 2e-3  # float16 rows
    assert np.array_equal(enc.score(contexts, cands), hashed)  # texts without rows are still hashed
    # a later load reads them (memory-mapped), encoding nothing
    back = NgramEncoder.load(tmp_path)
    capsys.readouterr()
    back.attach_replies(tmp_path, texts)
    assert isinstance(back.replies, np.memmap) and capsys.readouterr().out == ""
    # an --add appends replies: their vectors are added, the old rows kept as they were
    before = np.array(np.load(d / "replies.npy"))
    grown = texts + ["새로 추가된 답", "또 하나"]
    back.attach_replies(tmp_path, grown)
    out = capsys.readouterr().out
    assert "vectors of 2 stored replies" in out and f"({len(texts)} kept)" in out
    now = np.load(d / "replies.npy")
    assert now.shape == (len(grown), enc.dim) and np.array_equal(now[:len(texts)], before)
    assert np.allclose(now[len(texts):], enc.encode(grown[len(texts):]), atol=2e-3)
    # other texts in the same rows: recomputed, not trusted
    changed = ["다른 답"] + grown[1:]
    back.attach_replies(tmp_path, changed)
    assert np.allclose(np.load(d / "replies.npy")[0], enc.encode(["다른 답"])[0], atol=2e-3)
    # a damaged key or file: recomputed
    (d / "replies.json").write_text("{not json")
    back.attach_replies(tmp_path, changed)
    assert json.loads((d / "replies.json").read_text())["count"] == len(changed)
    np.save(d / "replies.npy", np.zeros((3, enc.dim), np.float16))  # truncated under a valid key
    back.attach_replies(tmp_path, changed)
    assert np.load(d / "replies.npy").shape == (len(changed), enc.dim)
    # rows the store does not have, or a shape that is not the candidates': hashed, not misread
    bad = rows.copy()
    bad[0, 0] = -1
    bad[1, 1] = len(changed) + 5
    cands2 = [[changed[j] if 0 <= j < len(changed) else "어디에도 없는 답" for j in r] for r in bad]
    assert np.array_equal(back.score(contexts, cands2, rows=bad), back.score(contexts, cands2))
    assert np.array_equal(back.score(contexts, cands2, rows=bad[:, :2]), back.score(contexts, cands2))
    # a retrained table saved over the folder drops the old table's reply vectors
    other = NgramEncoder(_small(epochs=2, seed=7))
    other.fit(_pairs(64, seed=5), show_progress=False)
    other.save(tmp_path)
    assert not (d / "replies.npy").exists() and not (d / "replies.json").exists()
    other.attach_replies(tmp_path, changed)
    assert np.allclose(np.load(d / "replies.npy"), other.encode(changed), atol=2e-3)
    assert not list(d.glob(".*tmp*"))  # no temporary file left behind
    assert (d / "replies.npy").stat().st_mode & 0o777 == (d / "rows.npy").stat().st_mode & 0o777


def test_reply_vectors_stay_in_ram_where_the_folder_cannot_take_them(tmp_path, monkeypatch, capsys):
    enc = NgramEncoder(_small(epochs=1))
    enc.fit(_pairs(32, seed=0), show_progress=False)
    enc.save(tmp_path)

    def refuse(*a, **k):
        raise PermissionError("read-only file system")
    monkeypatch.setattr(np.lib.format, "open_memmap", refuse)
    texts = [r for _, r in TOPICS]
    enc.attach_replies(tmp_path, texts)
    assert "kept in RAM" in capsys.readouterr().out and not (tmp_path / "ngram" / "replies.npy").exists()
    assert np.allclose(enc.replies, enc.encode(texts), atol=2e-3)


def test_fit_for_index_trains_it_on_the_training_pairs_and_the_ranker_scores_with_it(tmp_path, capsys):
    from conftest import stub_index as _stub_index
    from retrieval.examples import draw_candidates, validation_examples
    from retrieval.index import ResponseFilter, ResponseIndex, build_index
    from retrieval.ranker import FeatureScorer, fit_for_index, update_for_index
    rng = random.Random(0)
    qa = [(_question(rng, TOPICS[i % len(TOPICS)][0]), TOPICS[i % len(TOPICS)][1]) for i in range(400)]
    index = _stub_index(tmp_path, "t", qa)  # one train-split conversation per pair, a stub encoder
    folder, shards, enc = tmp_path / "idx", tmp_path / "shards", index.encoder
    ranker = fit_for_index(folder, shards, fraction=0.3, index=index, use=False)  # USE: test_retrieval_use
    trained = json.loads((folder / "ngram" / "settings.json").read_text())["trained"]
    val = validation_examples(shards, 0.3)
    assert trained["pairs"] == len(qa) - len(val)  # the carve-out is left out of its training
    scorer = FeatureScorer.for_index(index)
    assert "ngram" in scorer.available and ranker.fitted_on["examples"] == len(val)
    assert ranker.fitted_on["sources"] == {val[0].source: len(val)}  # ranker.json says whose examples
    assert ranker.weights.get("ngram") and (folder / "ngram" / "replies.npy").exists()  # for the chat service
    assert scorer.ngram.replies.shape == (len(index.texts), scorer.ngram.dim)
    cands = draw_candidates([e.response for e in val], n=len(TOPICS), seed=1).texts
    feats = scorer.features([e.context for e in val], cands, names=["dual", "ngram"])
    assert np.mean(ranks(feats["ngram"]) <= 1) > 0.9  # the stub's character overlap cannot do this
    assert np.mean(ranks(feats["dual"]) <= 1) < 0.5
    # the chat service and eval only read: without the stored vectors they encode them in RAM
    for name in ("replies.npy", "replies.json"):
        (folder / "ngram" / name).unlink()
    read = FeatureScorer.for_ranker(index, ranker)
    assert not (folder / "ngram" / "replies.npy").exists() and not (folder / "ngram" / "replies.json").exists()
    np.testing.assert_array_equal(np.asarray(read.ngram.replies), np.asarray(scorer.ngram.replies))
    # an --add gives the new replies their vectors at once, so the chat service starts without it
    from preprocess.schema import Conversation, Turn, write_shard
    more = tmp_path / "more"
    more.mkdir()
    write_shard(more / "shard-00000.jsonl", [Conversation("new-0", "test", "ko", [Turn("S1", "새 질문"), Turn("S2", "새로 들어온 답")])])
    build_index(enc.path, more, folder, add=True, encoder=enc, filt=ResponseFilter(pii_check=lambda t: False))
    update_for_index(folder, encoder=enc)  # what `dialogbert index --add` runs after the index (which knows no ranker)
    grown = ResponseIndex.load(folder, encoder=enc)
    assert grown.texts[-1] == "새로 들어온 답"
    assert json.loads((folder / "ngram" / "replies.json").read_text())["count"] == len(grown.texts)
    served = FeatureScorer.for_index(grown).ngram
    assert np.allclose(served.replies[-1], served.encode(["새로 들어온 답"])[0], atol=2e-3)
    # a refit without it removes it
    fit_for_index(folder, shards, fraction=0.3, index=grown, ngram=False, use=False)
    assert not (folder / "ngram").exists() and "ngram" not in FeatureScorer.for_index(grown).available
    # it depends on the training pairs, not on the index: a rebuild (another factory) keeps it, and
    # the refit after it keeps it too (the same pairs and settings), where other pairs retrain it
    fit_for_index(folder, shards, fraction=0.3, index=grown, use=False)
    trained = (folder / "ngram" / "vectors.npy").stat().st_mtime_ns
    build_index(enc.path, shards, folder, factory="HNSW32", encoder=enc, filt=ResponseFilter(pii_check=lambda t: False))
    assert (folder / "ngram" / "settings.json").exists()
    rebuilt = ResponseIndex.load(folder, encoder=enc)
    capsys.readouterr()
    fit_for_index(folder, shards, fraction=0.3, index=rebuilt, use=False)
    assert "n-gram encoder kept" in capsys.readouterr().out
    assert (folder / "ngram" / "vectors.npy").stat().st_mtime_ns == trained
    fit_for_index(folder, shards, fraction=0.2, index=rebuilt, use=False)
    assert "n-gram encoder trained" in capsys.readouterr().out
