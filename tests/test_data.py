"""The pretraining stream: encoding, negatives, masking, determinism, resuming, sharding, bucketing."""
from __future__ import annotations

import itertools
import re

import pytest
import torch

from dialogbert.data import (DataConfig, PretrainStream, eval_batches, mlm_collator, padding_efficiency,
                             sequential_batches)
from dialogbert.features import encode_dialog
from dialogbert.tokenizer import never_mask_ids, train_tokenizer
from preprocess.schema import PLACEHOLDERS, Conversation, Turn, read_shards, split_of, write_shard


@pytest.fixture(scope="module")
def tok(tiny_shards, tmp_path_factory):
    return train_tokenizer(tiny_shards, tmp_path_factory.mktemp("tok"), vocab_size=2000)


# ---- a synthetic corpus whose turns say who they are: "대화 C 차례 T" --------------------------
def _synthetic(n: int = 80) -> list[Conversation]:
    convs = []
    for c in range(n):
        n_turns = 2 + c % 7
        speakers = ["S1", "S2", "S3"] if c % 5 == 0 else ["S1", "S2"]
        turns = [Turn(speakers[t % len(speakers)], f"대화 {c} 차례 {t}") for t in range(n_turns)]
        if c % 3 == 0:
            turns[-1] = Turn(turns[-1].speaker, f"대화 {c} 차례 {n_turns - 1} [NAME] [PHONE]")
        convs.append(Conversation(f"synthetic-{c}", "xpersona", "ko", turns))
    return convs


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    convs = _synthetic()
    write_shard(d / "shard-00000.jsonl", convs[:40])
    write_shard(d / "shard-00001.jsonl", convs[40:])
    tok = train_tokenizer(d, d / "tok", vocab_size=300, min_frequency=1)
    return d, tok, {c.id: c for c in convs}


def _turns_of(tok, ids, turn_ids) -> dict[int, tuple[int, int]]:
    """turn id -> (conversation, turn) parsed back from the text of that turn."""
    out = {}
    for tid in sorted(set(turn_ids.tolist()) - {0}):
        text = tok.decode(ids[turn_ids == tid], skip_special_tokens=True)
        m = re.search(r"대화 (\d+) 차례 (\d+)", text)
        out[tid] = (int(m.group(1)), int(m.group(2)))
    return out


# ---- encode_dialog -------------------------------------------------------------------------------
def test_encode_dialog_element_by_element(tok):
    turns = [("A", "안녕"), ("B", "뭐해?"), ("C", "밥 먹어"), ("A", "나도")]
    pieces = [tok(t, add_special_tokens=False)["input_ids"] for _, t in turns]
    f = encode_dialog(tok, turns, max_length=128, max_turns=8, num_speakers=4)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    exp_ids, exp_turn, exp_spk = [cls], [0], [0]
    for p, turn_id, spk in zip(pieces, [4, 3, 2, 1], [1, 3, 2, 1]):  # A newest -> 1, C -> 2, B -> 3
        exp_ids += p + [sep]
        exp_turn += [turn_id] * (len(p) + 1)
        exp_spk += [spk] * (len(p) + 1)
    assert f["input_ids"] == exp_ids
    assert f["turn_ids"] == exp_turn
    assert f["token_type_ids"] == exp_spk
    assert f["attention_mask"] == [1] * len(exp_ids)
    assert (f["turn_ids"][0], f["token_type_ids"][0]) == (0, 0)

    # speakers are capped at num_speakers - 1
    capped = encode_dialog(tok, turns, num_speakers=3)
    assert max(capped["token_type_ids"]) == 2
    # max_turns keeps the newest turns
    two = encode_dialog(tok, turns, max_turns=2)
    assert two["input_ids"] == [cls] + pieces[2] + [sep] + pieces[3] + [sep]
    assert two["turn_ids"] == [0] + [2] * (len(pieces[2]) + 1) + [1] * (len(pieces[3]) + 1)
    assert two["token_type_ids"] == [0] + [2] * (len(pieces[2]) + 1) + [1] * (len(pieces[3]) + 1)
    # max_length drops the oldest turns first; the newest is always kept (cut if it must be)
    short = encode_dialog(tok, turns, max_length=1 + len(pieces[3]) + 1 + len(pieces[2]) + 1)
    assert short["input_ids"] == two["input_ids"]
    long_turn = [("A", "안녕 " * 50)]
    cut = encode_dialog(tok, long_turn, max_length=16, max_turn_tokens=64)
    assert len(cut["input_ids"]) == 16 and cut["input_ids"][-1] == sep and cut["turn_ids"][1:] == [1] * 15


# ---- negatives -----------------------------------------------------------------------------------
def test_candidates_labels_and_negatives(synth):
    d, tok, convs = synth
    cfg = DataConfig(max_turns=8, shuffle_buffer=64, same_conv_negative_share=0.5, mlm=False)
    labels, same, other, n_with_later_neg = [], 0, 0, 0
    for epoch in range(3):
        stream = PretrainStream(d, tok, cfg, split=None, seed=epoch)
        for f, label in stream.examples(0):
            ids, tids, types = (torch.tensor(f[k]) for k in ("input_ids", "turn_ids", "token_type_ids"))
            turns = _turns_of(tok, ids, tids)
            c, prev = turns[2]  # the newest context turn is turn t-1 of conversation c
            t = prev + 1
            conv = convs[f"synthetic-{c}"]
            assert all(turns[k] == (c, t - k + 1) for k in turns if k >= 2)  # context: previous turns, in order
            cand = turns[1]
            # the candidate keeps the true turn's speaker, so speaker ids follow the true speakers
            true_spk = conv.turns[t].speaker
            assert int(types[tids == 1][0]) == 1
            assert int(types[tids == 2][0]) == (1 if conv.turns[t - 1].speaker == true_spk else 2)
            labels.append(label)
            if label == 0:
                assert cand == (c, t)
            else:
                assert cand != (c, t)  # never the true turn
                if cand[0] == c:
                    assert cand[1] >= t + 2  # same conversation: later and non-adjacent
                    same += 1
                else:
                    other += 1
                if len(conv.turns) > t + 2:
                    n_with_later_neg += 1
    share_pos = labels.count(0) / len(labels)
    assert 0.42 < share_pos < 0.58
    assert same > 0 and other > 0
    assert 0.3 < same / n_with_later_neg < 0.7  # ~same_conv_negative_share where a later turn exists


def test_negatives_by_source_keeps_other_conversations_negatives_in_their_corpus(synth, tmp_path):
    _, tok, _ = synth
    convs = _synthetic()
    for c in convs:
        c.source = "corpus-a" if int(c.id.split("-")[1]) % 2 == 0 else "corpus-b"
    write_shard(tmp_path / "shard-00000.jsonl", convs)
    source_of = {int(c.id.split("-")[1]): c.source for c in convs}

    def cross_share(by_source: bool) -> float:
        cfg = DataConfig(max_turns=8, shuffle_buffer=64, same_conv_negative_share=0.0, mlm=False,
                         negatives_by_source=by_source)
        cross = other = 0
        for f, label in PretrainStream(tmp_path, tok, cfg, split=None, seed=0).examples(0):
            if label != 1:
                continue
            ids, tids = torch.tensor(f["input_ids"]), torch.tensor(f["turn_ids"])
            turns = _turns_of(tok, ids, tids)
            ctx_conv, cand_conv = turns[2][0], turns[1][0]
            if cand_conv != ctx_conv:
                other += 1
                cross += source_of[ctx_conv] != source_of[cand_conv]
        assert other > 50
        return cross / other

    assert cross_share(False) > 0.25  # the two corpora interleave: about half the negatives cross
    assert cross_share(True) < 0.02   # only a source's very first conversations borrow another's turns


def test_label_balance_on_tiny_shards(tok, tiny_shards):
    stream = PretrainStream(tiny_shards, tok, DataConfig(mlm=False), seed=3)
    labels = [label for _, label in stream.examples(0)]
    assert len(labels) > 1000
    assert 0.46 < sum(labels) / len(labels) < 0.54


def test_next_turn_off_gives_contexts_ending_at_each_turn(synth):
    d, tok, convs = synth
    stream = PretrainStream(d, tok, DataConfig(next_turn=False, mlm=False, max_turns=3), split=None)
    n = 0
    for f, label in stream.examples(0):
        assert label is None
        turns = _turns_of(tok, torch.tensor(f["input_ids"]), torch.tensor(f["turn_ids"]))
        c, t = turns[1]
        assert t >= 1 and all(turns[k] == (c, t - k + 1) for k in turns) and len(turns) == min(3, t + 1)
        n += 1
    assert n == sum(len(c.turns) - 1 for c in convs.values())
    batch = next(iter(stream))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "turn_ids"}


# ---- masking -------------------------------------------------------------------------------------
def test_masking_statistics(tok, tiny_shards):
    cfg = DataConfig(batch_size=64, shuffle_buffer=512)
    masked_stream = PretrainStream(tiny_shards, tok, cfg, seed=5)
    plain_stream = PretrainStream(tiny_shards, tok, DataConfig(batch_size=64, shuffle_buffer=512, mlm=False), seed=5)
    never = torch.tensor(never_mask_ids(tok))
    mask_id = tok.mask_token_id
    n_maskable = n_masked = n_mask = n_kept = n_random = 0
    for b, p in itertools.islice(zip(masked_stream, plain_stream), 40):
        assert set(b) == {"input_ids", "attention_mask", "token_type_ids", "turn_ids", "labels", "next_turn_label"}
        assert all(v.dtype == torch.int64 for v in b.values())
        for k in ("attention_mask", "token_type_ids", "turn_ids", "next_turn_label"):
            assert torch.equal(b[k], p[k])
        orig = p["input_ids"]
        maskable = b["attention_mask"].bool() & ~torch.isin(orig, never)
        m = b["labels"].ne(-100)
        assert not (m & ~maskable).any()  # never [CLS]/[SEP]/[PAD]/placeholders
        assert torch.equal(b["labels"][m], orig[m])
        assert torch.equal(b["input_ids"][~m], orig[~m])
        assert not torch.isin(b["input_ids"][m & b["input_ids"].ne(mask_id)], never).any()
        n_maskable += int(maskable.sum())
        n_masked += int(m.sum())
        n_mask += int((m & b["input_ids"].eq(mask_id)).sum())
        n_kept += int((m & b["input_ids"].eq(orig)).sum())
        n_random += int((m & b["input_ids"].ne(mask_id) & b["input_ids"].ne(orig)).sum())
    assert n_masked > 5000
    assert abs(n_masked / n_maskable - 0.15) < 0.01
    assert abs(n_mask / n_masked - 0.8) < 0.02
    assert abs(n_kept / n_masked - 0.1) < 0.02
    assert abs(n_random / n_masked - 0.1) < 0.02


def test_placeholders_never_masked(synth):
    d, tok, _ = synth
    collate = mlm_collator(tok, DataConfig(mlm_probability=0.9))
    ph = torch.tensor([tok.convert_tokens_to_ids(p) for p in PLACEHOLDERS])
    f = encode_dialog(tok, [("S1", "대화 1 차례 1 [NAME] [PHONE] [EMAIL] " * 4)])
    for seed in range(20):
        b = collate([f], generator=torch.Generator().manual_seed(seed))
        orig = torch.tensor([f["input_ids"] + [tok.pad_token_id] * (b["input_ids"].shape[1] - len(f["input_ids"]))])
        at = torch.isin(orig, ph)
        assert at.sum() == 12 and torch.equal(b["input_ids"][at], orig[at])
        assert (b["labels"][at] == -100).all()
        assert not torch.isin(b["input_ids"][~at], ph).any()


# ---- determinism, resuming, sharding -------------------------------------------------------------
def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_deterministic_given_seed(synth):
    d, tok, _ = synth
    cfg = DataConfig(batch_size=8, shuffle_buffer=32)
    a = list(itertools.islice(PretrainStream(d, tok, cfg, split=None, seed=1), 10))
    b = list(itertools.islice(PretrainStream(d, tok, cfg, split=None, seed=1), 10))
    c = list(itertools.islice(PretrainStream(d, tok, cfg, split=None, seed=2), 10))
    assert all(_equal(x, y) for x, y in zip(a, b))
    assert not all(_equal(x, y) for x, y in zip(a, c))


def test_dialog_ids_off_zeroes_speakers_and_turns_only(synth):
    d, tok, _ = synth
    on = list(itertools.islice(PretrainStream(d, tok, DataConfig(batch_size=8, shuffle_buffer=32), split=None), 5))
    off = list(itertools.islice(PretrainStream(d, tok, DataConfig(batch_size=8, shuffle_buffer=32, dialog_ids=False),
                                               split=None), 5))
    assert all(int(b["turn_ids"].max()) >= 2 and int(b["token_type_ids"].max()) >= 2 for b in on)
    for a, b in zip(on, off):  # the same examples, masks and labels; only the ids are gone
        assert int(b["turn_ids"].abs().sum()) == 0 and int(b["token_type_ids"].abs().sum()) == 0
        assert all(torch.equal(a[k], b[k]) for k in ("input_ids", "labels", "next_turn_label", "attention_mask"))


@pytest.mark.parametrize("k", [7, 45])  # within the first epoch, and past an epoch boundary
def test_resume_yields_the_same_next_batches(synth, k):
    d, tok, _ = synth
    cfg = DataConfig(batch_size=8, shuffle_buffer=32)
    full = list(itertools.islice(PretrainStream(d, tok, cfg, split=None, seed=4), k + 6))
    first = PretrainStream(d, tok, cfg, split=None, seed=4)
    got = list(itertools.islice(first, k))
    assert all(_equal(x, y) for x, y in zip(got, full[:k]))
    state = first.state_dict()
    if k == 45:
        assert state["epoch"] >= 1  # 80 conversations -> ~35 batches an epoch
    resumed = PretrainStream(d, tok, cfg, split=None, seed=4)
    resumed.load_state_dict(state)
    nxt = list(itertools.islice(resumed, 6))
    assert all(_equal(x, y) for x, y in zip(nxt, full[k:]))
    with pytest.raises(ValueError, match="does not match"):
        PretrainStream(d, tok, cfg, split=None, seed=5).load_state_dict(state)
    # a state saved before a data key existed ran with its default: it resumes, unless the key is changed now
    old = {**state, "config": {a: b for a, b in state["config"].items() if a != "negatives_by_source"}}
    PretrainStream(d, tok, cfg, split=None, seed=4).load_state_dict(old)
    with pytest.raises(ValueError, match="does not match"):
        changed = DataConfig(batch_size=8, shuffle_buffer=32, negatives_by_source=True)
        PretrainStream(d, tok, changed, split=None, seed=4).load_state_dict(old)


def test_rank_sharding_is_disjoint_and_complete(tiny_shards, tok):
    cfg = DataConfig()
    ranks = [PretrainStream(tiny_shards, tok, cfg, rank=r, world_size=3) for r in range(3)]
    for epoch in (0, 1):
        ids = [[c.id for c in s.conversations(epoch)] for s in ranks]
        sets = [set(x) for x in ids]
        assert all(len(x) == len(s) > 0 for x, s in zip(ids, sets))
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
        assert set().union(*sets) == {c.id for c in read_shards(tiny_shards, split="train")}
        assert max(map(len, sets)) - min(map(len, sets)) <= 1


def test_train_split_only(tiny_shards, tok):
    stream = PretrainStream(tiny_shards, tok, DataConfig())
    assert all(split_of(c) == "train" for c in stream.conversations(0))
    ev = eval_batches(tiny_shards, tok, DataConfig(batch_size=16), max_examples=100)
    ev2 = eval_batches(tiny_shards, tok, DataConfig(batch_size=16), max_examples=100)
    assert sum(len(b["input_ids"]) for b in ev) == 100
    assert all(_equal(a, b) for a, b in zip(ev, ev2))
    assert set(ev[0]) == {"input_ids", "attention_mask", "token_type_ids", "turn_ids", "labels", "next_turn_label"}


# ---- batching ------------------------------------------------------------------------------------
def test_length_bucketing_beats_sequential_batching(tiny_shards, tok):
    stream = PretrainStream(tiny_shards, tok, DataConfig(batch_size=32, mlm=False))
    bucketed = [stream.collate(b, 0, i) for i, b in enumerate(stream.raw_batches(0))]
    seq = sequential_batches(stream, len(bucketed))
    assert sum(int(b["attention_mask"].sum()) for b in bucketed) == sum(int(b["attention_mask"].sum()) for b in seq)
    eff, eff_seq = padding_efficiency(bucketed), padding_efficiency(seq)
    assert eff > 0.9 and eff > eff_seq + 0.1, (eff, eff_seq)


def test_max_batch_tokens_caps_padded_tokens(tiny_shards, tok):
    cfg = DataConfig(batch_size=128, max_batch_tokens=2048, mlm=False)
    batches = list(itertools.islice(PretrainStream(tiny_shards, tok, cfg), 60))
    assert all(b["input_ids"].numel() <= 2048 or len(b["input_ids"]) == 1 for b in batches)
    assert max(len(b["input_ids"]) for b in batches) > 32  # short sequences fill bigger batches


# ---- mixing: shards are written one corpus after another; batches and the eval set must mix them
SOURCES = ("가나", "다라", "마바")


@pytest.fixture(scope="module")
def in_source_order(tmp_path_factory):
    """One shard holding three 'corpora' back to back (as the preprocessor writes them), each
    turn saying its corpus and conversation: "<corpus> 대화 C 차례 T"."""
    d = tmp_path_factory.mktemp("ordered")
    convs = []
    for c in range(240):
        src = SOURCES[c // 80]
        turns = [Turn(["S1", "S2"][t % 2], f"{src} 대화 {c} 차례 {t}") for t in range(2 + c % 4)]
        convs.append(Conversation(f"ordered-{c}", "xpersona", "ko", turns))
    write_shard(d / "shard-00000.jsonl", convs)
    return d, train_tokenizer(d, d / "tok", vocab_size=400, min_frequency=1)


def _sources_of(tok, batch) -> list[str]:
    """The corpus of each row of a batch (read back from the text)."""
    out = []
    for ids in batch["input_ids"]:
        text = tok.decode(ids, skip_special_tokens=True)
        out.append(next(s for s in SOURCES if s in text.replace(" ", "")))
    return out


def test_batches_mix_sources_from_the_start(in_source_order):
    d, tok = in_source_order
    cfg = DataConfig(batch_size=16, shuffle_buffer=64, mlm=False)
    stream = PretrainStream(d, tok, cfg, split=None, seed=0)
    convs = [c.turns[0].text.split()[0] for c in stream.conversations(0)]
    assert sorted(convs) == sorted(s for s in SOURCES for _ in range(80))  # each conversation once
    for part in (convs[:40], convs[100:140], convs[-40:]):  # every stretch samples every corpus
        assert set(part) == set(SOURCES), part
    first = list(itertools.islice(stream, 4))
    assert all(len(set(_sources_of(tok, b))) >= 2 for b in first)
    assert set().union(*map(set, map(lambda b: _sources_of(tok, b), first))) == set(SOURCES)


def test_eval_set_spans_the_whole_split(in_source_order):
    d, tok = in_source_order
    cfg = DataConfig(batch_size=16)
    ev = eval_batches(d, tok, cfg, split=None, max_examples=48)
    assert sum(len(b["input_ids"]) for b in ev) == 48
    seen = [s for b in ev for s in _sources_of(tok, b)]
    assert all(seen.count(s) >= 8 for s in SOURCES), seen  # not just the first corpus
    again = eval_batches(d, tok, cfg, split=None, max_examples=48)
    assert all(_equal(a, b) for a, b in zip(ev, again))


def test_copy_negatives_repeat_a_context_turn(synth):
    """copy_negative_share=1: every negative is a context turn, itself or with one token dropped or
    repeated (what a bot ranking by overlap with the context would pick)."""
    import random

    from dialogbert.data import near_copy
    d, tok, convs = synth
    cfg = DataConfig(max_turns=8, shuffle_buffer=64, copy_negative_share=1.0, mlm=False)
    exact = near = 0
    for f, label in PretrainStream(d, tok, cfg, split=None, seed=0).examples(0):
        if label != 1:
            continue
        ids, tids = torch.tensor(f["input_ids"]), torch.tensor(f["turn_ids"])
        cand = ids[tids == 1][:-1].tolist()  # the candidate's tokens, less its [SEP]
        context = [ids[tids == k][:-1].tolist() for k in sorted(set(tids.tolist()) - {0, 1})]
        if cand in context:
            exact += 1
        else:
            assert any(abs(len(cand) - len(c)) == 1 and (cand in near_copies(c)) for c in context), cand
            near += 1
    assert exact > 20 and near > 20
    rng = random.Random(0)
    assert near_copy(rng, [5]) == [5]
    assert {len(near_copy(rng, [1, 2, 3, 4])) for _ in range(50)} == {3, 4, 5}
    with pytest.raises(ValueError, match="copy_negative_share"):
        DataConfig(copy_negative_share=1.5)


def near_copies(ids: list[int]) -> list[list[int]]:
    return ([ids[:i] + ids[i + 1:] for i in range(len(ids))]
            + [ids[:i + 1] + ids[i:] for i in range(len(ids))])


def test_encode_dialog_prefix_follows_cls_and_is_never_cut(tok):
    turns = [("A", "안녕 오늘 뭐해"), ("B", "밥 먹어")]
    prefix = tok("query:", add_special_tokens=False)["input_ids"]
    plain = encode_dialog(tok, turns, max_length=128)
    f = encode_dialog(tok, turns, max_length=128, prefix_ids=prefix)
    n = len(prefix)
    assert f["input_ids"] == [tok.cls_token_id, *prefix, *plain["input_ids"][1:]]
    assert f["turn_ids"][:1 + n] == [0] * (1 + n) and f["token_type_ids"][:1 + n] == [0] * (1 + n)
    assert f["turn_ids"][1 + n:] == plain["turn_ids"][1:]
    short = encode_dialog(tok, turns, max_length=n + 4, prefix_ids=prefix)  # room for 3 tokens of turns
    assert len(short["input_ids"]) <= n + 4 and short["input_ids"][1:1 + n] == prefix
