"""retrieval.losses, the one in-batch loss (against values worked out by hand, with duplicate
replies masked), and retrieval.examples.read_examples, the one reader of (context, reply) pairs
that evaluation, fine-tuning and the ranker's own encoders share (its known output on a tiny shard)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from preprocess.schema import Conversation, Turn, split_of, write_shard
from retrieval.losses import duplicate_mask, in_batch_loss

L = [[2.0, 0.0, 1.0],
     [0.0, 1.0, 0.0],
     [1.0, 1.0, 3.0]]


def _ce(row: list[float], label: int) -> float:
    return -row[label] + math.log(sum(math.exp(x) for x in row))


def test_the_loss_of_a_3x3_batch_is_the_hand_computed_value():
    logits = torch.tensor(L)
    # rows: context i against every reply, its own at i
    forward = (_ce([2, 0, 1], 0) + _ce([0, 1, 0], 1) + _ce([1, 1, 3], 2)) / 3
    # columns: reply j against every context
    backward = (_ce([2, 0, 1], 0) + _ce([0, 1, 1], 1) + _ce([1, 0, 3], 2)) / 3
    assert in_batch_loss(logits, symmetric=False).item() == pytest.approx(forward, rel=1e-6)
    assert in_batch_loss(logits).item() == pytest.approx((forward + backward) / 2, rel=1e-6)
    # the same sums worked out on paper: (0.40761 + 0.55144 + 0.23954) / 3 and (0.40761 + 0.86199 + 0.16985) / 3
    assert (forward, backward) == pytest.approx((0.39953, 0.47982), abs=1e-5)


def test_a_repeated_reply_is_no_negative_and_the_diagonal_is_never_masked():
    same = duplicate_mask(["a", "b", "a"])  # pairs 0 and 2 have the same reply text
    assert same.tolist() == [[False, False, True], [False, False, False], [True, False, False]]
    logits = torch.tensor(L, requires_grad=True)
    loss = in_batch_loss(logits, same)
    forward = (_ce([2, 0], 0) + _ce([0, 1, 0], 1) + _ce([1, 3], 1)) / 3  # (0, 2) and (2, 0) left out
    backward = (_ce([2, 0], 0) + _ce([0, 1, 1], 1) + _ce([0, 3], 1)) / 3
    assert loss.item() == pytest.approx((forward + backward) / 2, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 2] == 0 and logits.grad[2, 0] == 0  # a masked entry does not train
    # a masked entry's value does not matter, however large
    bigger = torch.tensor(L)
    bigger[0, 2] = bigger[2, 0] = 50.0
    assert in_batch_loss(bigger, same).item() == pytest.approx(loss.item(), rel=1e-6)
    # every reply the same: only the diagonals are left, the loss is 0 (and finite)
    assert in_batch_loss(torch.tensor(L), duplicate_mask(["x"] * 3)).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="own positive"):
        in_batch_loss(torch.tensor(L), torch.eye(3, dtype=torch.bool))


def test_extra_negative_columns_and_heads():
    # fine-tuning's hard or copy negatives: columns after the batch's own replies
    same = duplicate_mask(["a", "b"], ["a", "b", "b", "c"])
    assert same.tolist() == [[False, False, False, False], [False, False, True, False]]
    logits = torch.tensor([[1.0, 0.0, 2.0, 0.5], [0.0, 1.0, 9.0, 1.0]])
    forward = (_ce([1, 0, 2, 0.5], 0) + _ce([0, 1, 1], 1)) / 2
    backward = (_ce([1, 0], 0) + _ce([0, 1], 1)) / 2  # the reply->context direction: the 2x2 block
    assert in_batch_loss(logits, same).item() == pytest.approx((forward + backward) / 2, rel=1e-6)
    # heads: the mean of each head's own loss; the towers' wrapper (reply ids) is the same loss
    from retrieval.towers import in_batch_loss as towers_loss
    torch.manual_seed(0)
    a, r = torch.nn.functional.normalize(torch.randn(4, 3, 8), dim=-1), torch.nn.functional.normalize(torch.randn(4, 3, 8), dim=-1)
    rid = np.array([0, 1, 0, 2])
    per_head = [in_batch_loss(10.0 * a[:, h] @ r[:, h].T, duplicate_mask(rid)) for h in range(3)]
    assert towers_loss(a, r, 10.0, rid).item() == pytest.approx(float(sum(per_head) / 3), rel=1e-5)


def _ids(split: str, n: int) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        if split_of(f"c{i}", fraction=0.1) == split:
            out.append(f"c{i}")
        i += 1
    return out


def _shard(tmp_path):
    (a, c), (b,) = _ids("train", 2), _ids("test", 1)
    t = lambda who, text: Turn(who, text, [text])  # noqa: E731
    convs = [Conversation(a, "chat", "ko", [t("S1", "안녕"), t("S2", "반가워"), t("S1", "뭐 해?")]),
             Conversation(b, "chat", "ko", [t("S1", "배고파"), t("S2", "밥 먹자")]),
             Conversation(c, "qa", "ko", [t("S1", "비 와?"), t("S2", "우산 챙기세요")])]
    write_shard(tmp_path / "shard-00000.jsonl", convs)
    return tmp_path, a, b, c


def test_the_pair_reader_gives_the_known_pairs_of_a_tiny_shard(tmp_path, monkeypatch):
    from preprocess import schema
    monkeypatch.setattr(schema, "test_fraction", lambda source="": 0.1)
    from retrieval.examples import load_examples, read_examples, train_examples
    from retrieval.finetune import training_pairs
    from retrieval.ngram import training_texts
    shards, a, b, c = _shard(tmp_path)

    def rows(exs):
        return [(e.context, e.response, e.speaker, e.conv_id, e.source, e.turn) for e in exs]
    assert rows(read_examples(shards)) == [
        ([("S1", "안녕")], "반가워", "S2", a, "chat", 1),
        ([("S1", "안녕"), ("S2", "반가워")], "뭐 해?", "S1", a, "chat", 2),
        ([("S1", "비 와?")], "우산 챙기세요", "S2", c, "qa", 1)]
    assert rows(read_examples(shards, context_turns=1))[1][0] == [("S2", "반가워")]
    assert rows(load_examples(shards, "test")) == [([("S1", "배고파")], "밥 먹자", "S2", b, "chat", 1)]
    assert [e.conv_id for e in read_examples(shards, None)] == [a, a, b, c]
    assert [e.conv_id for e in read_examples(shards, sources=["qa"])] == [c]
    assert len(load_examples(shards, None, max_examples=2)) == 2
    # fine-tuning and the ranker's encoders read the same pairs
    pairs = training_pairs(shards)
    assert [(p["context"], p["response"], p["turn"]) for p in pairs] == [r[:2] + (r[5],) for r in rows(read_examples(shards))]
    assert pairs[1]["conv_turns"] == ("안녕", "반가워", "뭐 해?") and pairs[2]["conv_turns"] == ("비 와?", "우산 챙기세요")
    assert training_texts(shards, 0.0) == [("안녕", "반가워"), ("반가워", "뭐 해?"), ("비 와?", "우산 챙기세요")]
    # the validation carve-out splits the train split's conversations, never their turns
    valid, rest = list(train_examples(shards, 0.5, True)), list(train_examples(shards, 0.5, False))
    assert sorted(rows(valid) + rows(rest), key=lambda r: (r[3], r[5])) == sorted(rows(read_examples(shards)), key=lambda r: (r[3], r[5]))
    assert not {e.conv_id for e in valid} & {e.conv_id for e in rest}


def test_the_rerankers_copy_negative_is_the_newest_context_turn_and_groups_keep_their_size():
    import random

    from retrieval.finetune import FtTrain, _cross_loss

    class Recorder:  # what _cross_loss asks of a CrossEncoder, scores all equal
        def pair_features(self, contexts, candidates):
            self.contexts, self.candidates = contexts, candidates
            return candidates

        def pad(self, rows):
            return rows

        def forward(self, rows):
            return torch.zeros(len(rows), requires_grad=True)

    batch = [{"context": [("S1", "밥 먹었어?"), ("S2", "아직이요")], "response": "빨리 먹어", "conv_turns": [], "turn": 2},
             {"context": [("S1", "안녕")], "response": "안녕", "conv_turns": [], "turn": 1}]  # a reply that repeats the turn
    pool = ["우산 챙겨", "푹 쉬어", "맛있는 거 드세요", "안녕", "빨리 먹어"]
    rec = Recorder()
    loss = _cross_loss(rec, batch, pool, FtTrain(group_size=4, copy_negatives=True), random.Random(0))
    first, second = rec.candidates[:4], rec.candidates[4:]
    assert first[:2] == ["빨리 먹어", "아직이요"] and "빨리 먹어" not in first[2:]
    assert second[0] == "안녕" and "안녕" not in second[1:] and len(second) == 4  # no copy of the true reply
    assert rec.contexts == [batch[0]["context"]] * 4 + [batch[1]["context"]] * 4
    assert math.isclose(loss.item(), math.log(4), rel_tol=1e-6)
    _cross_loss(rec, batch, pool, FtTrain(group_size=4), random.Random(0))
    assert "아직이요" not in rec.candidates[:4]  # off: random negatives only


def test_contrast_negatives_add_a_negated_or_tense_shifted_copy_of_each_true_reply():
    import random

    from retrieval.adversarial import negate, shift_tense
    from retrieval.finetune import FtTrain, dual_loss

    class Recorder:  # what dual_loss asks of an Encoder; every vector the same
        def context_features(self, items):
            return items

        def response_features(self, texts):
            self.replies = list(texts)
            return texts

        def pad(self, rows):
            return rows

        def forward(self, rows):
            return torch.ones(len(rows), 4, requires_grad=True)

    batch = [{"context": [("S1", "밥은?")], "response": "밥 먹었어요", "conv_turns": [], "turn": 1},
             {"context": [("S1", "what food?")], "response": "I like pizza", "conv_turns": [], "turn": 1},
             {"context": [("S1", "어디 가?")], "response": "응", "conv_turns": [], "turn": 1}]  # nothing to turn
    rec = Recorder()
    dual_loss(rec, batch, None, FtTrain(contrast_negatives=True), random.Random(0))
    assert rec.replies[:3] == ["밥 먹었어요", "I like pizza", "응"] and len(rec.replies) == 5
    assert rec.replies[3] in (negate("밥 먹었어요"), shift_tense("밥 먹었어요"))
    assert rec.replies[4] in (negate("I like pizza"), shift_tense("I like pizza"))
    dual_loss(rec, batch, None, FtTrain(), random.Random(0))
    assert len(rec.replies) == 3  # off: the batch's own replies only
    # contrast_share: a share of the pairs, drawn at random, gets one
    many = [{"context": [("S1", f"밥은 {i}?")], "response": f"밥 먹었어요 {i}", "conv_turns": [], "turn": 1}
            for i in range(200)]
    dual_loss(rec, many, None, FtTrain(contrast_negatives=True, contrast_share=0.0), random.Random(0))
    assert len(rec.replies) == 200
    dual_loss(rec, many, None, FtTrain(contrast_negatives=True, contrast_share=0.25), random.Random(0))
    turned = rec.replies[200:]
    assert 30 <= len(turned) <= 70  # about a quarter of 200
    assert all(t not in rec.replies[:200] and t.split()[-1].isdigit() for t in turned)
    assert len({t.split()[-1] for t in turned}) == len(turned)  # at most one for a pair
    from retrieval.finetune import load_config
    with pytest.raises(ValueError, match="contrast_share"):
        load_config(None, ["train.contrast_share=1.5"])


def test_a_batch_run_in_length_sorted_chunks_gives_the_vectors_and_gradients_of_one_padded_batch(tmp_path):
    """Encoder.forward_sorted (fine-tuning's ``train.length_chunk``): each chunk padded to its own
    longest row, the rows back in input order; the same vectors and the same gradients as one
    padded batch (dropout off to compare them)."""
    from conftest import save_random_dialogbert
    from retrieval.encoder import Encoder
    from retrieval.finetune import set_dropout

    enc = Encoder.load(save_random_dialogbert(tmp_path / "m", pretraining=False), strict_kind=False)
    turns = [[("S1", "안녕 " * n), ("S2", "오늘 뭐 해")][: 1 + n % 2] for n in (1, 9, 3, 14, 2, 6, 11)]
    feats = enc.context_features(turns) + enc.response_features(["응", "밥 먹었어 " * 5, "좋아"])
    lengths = [len(f["input_ids"]) for f in feats]
    assert len(set(lengths)) > 4  # rows of many lengths, so the chunks pad differently
    enc.model.train()
    set_dropout(enc.model, 0.0)

    def run(chunk):
        enc.model.zero_grad()
        v = enc.forward_sorted(feats, chunk)
        (v * torch.arange(v.numel(), dtype=v.dtype).reshape(v.shape)).sum().backward()
        return v.detach(), enc.model.get_input_embeddings().weight.grad.clone()

    whole, grad = run(0)
    for chunk in (1, 3, 4):
        v, g = run(chunk)
        assert v.shape == whole.shape
        assert torch.allclose(v, whole, atol=1e-5), chunk  # row i is still row i
        assert torch.allclose(g, grad, atol=1e-4), chunk
    assert not torch.allclose(whole[0], whole[1], atol=1e-3)  # distinct rows: an order mix-up would show


def test_model_dropout_sets_every_dropout_of_the_model(tmp_path):
    """model.dropout=0: a training-mode forward is then deterministic and equals the eval-mode one
    (hidden and attention dropout both off); at the checkpoint's 0.1 two forwards differ."""
    from conftest import save_random_dialogbert
    from retrieval.encoder import Encoder
    from retrieval.finetune import load_config, set_dropout

    enc = Encoder.load(save_random_dialogbert(tmp_path / "m", pretraining=False), strict_kind=False)
    feats = enc.pad(enc.context_features([[("S1", "안녕 오늘 뭐 해"), ("S2", "밥 먹었어")]] * 3))
    enc.model.train()
    with torch.no_grad():
        assert not torch.equal(enc.forward(feats), enc.forward(feats))  # dropout on
        assert set_dropout(enc.model, 0.0) >= 1 + 2 * enc.model.config.num_hidden_layers
        train = enc.forward(feats)
        enc.model.eval()
        assert torch.equal(train, enc.forward(feats))
    assert load_config(None, ["model.dropout=0"]).model.dropout == 0.0
    with pytest.raises(ValueError, match="model.dropout"):
        load_config(None, ["model.dropout=1.5"])


def test_word_lr_mult_moves_the_used_word_rows_that_many_times_further(tmp_path):
    """train.word_lr_mult (dialogbert.engine.param_groups): the word-embedding matrix in its own
    AdamW group (no decay) at that multiple of the rate; every other trainable parameter stays in
    exactly one group. AdamW's first
    step moves each touched element by about the group's rate, so the used rows move ~mult times
    as far as a layer's weights, and rows no input used do not move."""
    from conftest import save_random_dialogbert
    from dialogbert.engine import param_groups
    from retrieval.encoder import Encoder
    from retrieval.finetune import freeze_bottom

    enc = Encoder.load(save_random_dialogbert(tmp_path / "m", pretraining=False), strict_kind=False)
    model = enc.model
    words = model.get_input_embeddings().weight
    groups = param_groups(model, 0.01, word_lr_mult=25.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters() if p.requires_grad)  # each once
    (own,) = [g for g in groups if any(p is words for p in g["params"])]
    assert own["params"] == [words] and own["lr_mult"] == 25.0 and own["weight_decay"] == 0.0

    lr = 1e-4
    opt = torch.optim.AdamW(groups, lr=lr)
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    feats = enc.pad(enc.context_features([[("S1", "안녕 오늘 뭐 해")]]) + enc.response_features(["밥 먹었어"]))
    v = enc.forward(feats)
    (v * torch.linspace(-1, 1, v.numel()).reshape(v.shape)).sum().backward()  # (unit vectors: not their norm)
    opt.step()
    used = sorted(set(feats["input_ids"].flatten().tolist()))
    moved = (words.detach() - before["bert.embeddings.word_embeddings.weight"]).abs()
    assert moved[used].max().item() == pytest.approx(25 * lr, rel=0.05)
    unused = torch.ones(len(words), dtype=torch.bool)
    unused[used] = False
    assert moved[unused].max().item() == 0.0  # no decay on the word group: untouched rows stay
    name = "bert.encoder.layer.0.attention.self.query.weight"
    layer = (dict(model.named_parameters())[name].detach() - before[name]).abs().max().item()
    assert layer == pytest.approx(lr, rel=0.05)
    from retrieval.finetune import load_config
    with pytest.raises(ValueError, match="word_lr_mult"):
        load_config(None, ["train.word_lr_mult=0"])
    # frozen embeddings: no word group; under pretraining's encoder ratio the two multiply
    freeze_bottom(model, 1)
    assert [g["lr_mult"] for g in param_groups(model, 0.01, word_lr_mult=25.0)] == [1.0, 1.0]
    for p in model.parameters():
        p.requires_grad_(True)
    assert param_groups(model, 0.01, 0.1, word_lr_mult=25.0)[-1] == {
        "params": [words], "weight_decay": 0.0, "lr_mult": pytest.approx(2.5)}


def test_source_weights_repeat_or_thin_a_corpus_each_epoch_and_leave_the_unweighted_order_alone():
    from retrieval.finetune import load_config, source_weights
    from retrieval.losses import batch_order
    corpus = ["twice"] * 300 + ["half"] * 300 + ["once"] * 300
    weights = [2.0] * 300 + [0.5] * 300 + [1.0] * 300
    halves = []
    for epoch in range(3):
        rows = [i for b in batch_order(900, 1, seed=0, epoch=epoch, weights=weights) for i in b]
        count = np.bincount(rows, minlength=900)
        assert (count[:300] == 2).all() and (count[600:] == 1).all()
        assert set(count[300:600]) <= {0, 1} and 110 < count[300:600].sum() < 190
        halves.append(frozenset(np.flatnonzero(count[300:600])))
    assert len(set(halves)) == 3  # a different half each epoch
    assert batch_order(900, 1, 0, 0, weights=weights) == batch_order(900, 1, 0, 0, weights=weights)  # resumable
    lengths = [i % 37 for i in range(900)]
    assert batch_order(900, 32, 0, 1, lengths, 20, corpus, [1.0] * 900) == batch_order(900, 32, 0, 1, lengths, 20, corpus)
    assert source_weights(["chitchat:0.5", "chatbotdata:2"]) == {"chitchat": 0.5, "chatbotdata": 2.0}
    assert load_config(None, ["data.source_weights=chitchat:0.5"]).data.source_weights == ["chitchat:0.5"]
    for bad in ("chitchat", "chitchat:0", "chitchat:-1", ":2", "chitchat:x", "chitchat:nan"):
        with pytest.raises(ValueError, match="CORPUS:WEIGHT"):
            load_config(None, [f"data.source_weights={bad}"])


def test_topic_batches_cut_each_batch_from_one_cluster_of_similar_contexts_of_one_corpus():
    from retrieval.losses import batch_order
    from retrieval.topics import topic_labels
    food = [f"pizza and pasta for dinner tonight {i}" for i in range(40)] + [f"배고파 피자 먹고 싶다 {i}" for i in range(40)]
    sport = [f"the soccer match goal was great {i}" for i in range(40)] + [f"축구 경기 골 대박이었어 {i}" for i in range(40)]
    texts = food[:40] + sport[:40] + food[40:] + sport[40:] + ["hello there"] * 10
    sources = ["en"] * 80 + ["ko"] * 80 + ["tiny"] * 10
    labels = topic_labels(texts, sources, per_cluster=40)
    assert labels == topic_labels(texts, sources, per_cluster=40)  # seeded: a resumed run cuts the same batches
    for lo in (0, 40, 80, 120):  # each topic of each corpus one cluster ...
        assert len(set(labels[lo:lo + 40])) == 1
    assert labels[0] != labels[40] and labels[80] != labels[120]  # ... the two topics apart
    assert {labels[0], labels[40]}.isdisjoint({labels[80], labels[120]})  # no cluster spans two corpora
    assert set(labels[160:]) == {"tiny"}  # too few rows for two clusters: one label
    for b in batch_order(len(texts), 20, 0, 0, groups=labels):
        assert len({labels[i] for i in b}) == 1
    with pytest.raises(ValueError, match="topic_batches"):
        topic_labels(texts, sources, per_cluster=1)
    assert topic_labels(["가", "나", "다", "라"], ["odd"] * 4, per_cluster=2) == ["odd"] * 4  # no shared n-gram
