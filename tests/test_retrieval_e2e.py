"""tiny_shards -> tokenizer -> a tiny random DialogBert -> fine-tune -> index -> evaluate.

The fine-tuned encoder must beat random clearly (MRR and R10@1) on the tiny test split, and
the saved encoder must load with AutoModel, serve through ResponseIndex and resume training.
"""
from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny_model(tiny_shards, tmp_path_factory):
    from conftest import save_random_dialogbert
    return save_random_dialogbert(tmp_path_factory.mktemp("tiny-dialogbert"))


@pytest.fixture(scope="module")
def finetuned(tiny_model, tiny_shards, tmp_path_factory):
    import torch

    from retrieval.finetune import finetune

    out = tmp_path_factory.mktemp("encoder")
    threads = torch.get_num_threads()
    # one thread: on a shared 2-core box two OpenMP threads run many times slower
    finetune(tiny_model, tiny_shards, out, overrides=[
        "train.max_steps=60", "train.batch_size=32", "train.lr=1e-3", "train.warmup_steps=5",
        "train.save_every=30", "train.log_every=30", "data.max_length=96", "train.hard_negatives=true",
        "train.threads=1"], progress=False)
    yield out
    torch.set_num_threads(threads)


def test_finetune_index_evaluate_beats_random(finetuned, tiny_shards, tmp_path):
    from transformers import AutoModel

    from retrieval.evaluate import evaluate
    from retrieval.index import ResponseIndex, build_index

    assert type(AutoModel.from_pretrained(finetuned)).__name__ == "DialogBertModel"
    idx_dir = build_index(finetuned, tiny_shards, tmp_path / "index")
    rep = evaluate(finetuned, tiny_shards, tmp_path / "report", index_dir=idx_dir)
    sys_ = rep["systems"]["encoder"]
    rand = rep["systems"]["random"]
    assert rep["sizes"]["test_examples"] >= 200
    assert sys_["MRR"] > rand["MRR"] + 0.1, sys_
    assert sys_["R10@1"] > 0.15, sys_  # random: 0.10 (+-0.02 at this size)
    # index_R@k and served_R@k against an exhaustive ranking: each test context scored against
    # every stored reply and every test reply (scores within 1e-6 count either way: texts that
    # tokenize alike, and batching's float noise, ~5e-8); served_R@k ranks the stored replies
    # alone, so a test reply that no training reply has is never served
    from retrieval.encoder import Encoder
    from retrieval.examples import load_examples
    exs, enc = load_examples(tiny_shards, "test"), Encoder.load(finetuned)
    stored = set(ResponseIndex.load(idx_dir, finetuned).texts)
    texts = sorted(stored | {e.response for e in exs})
    S = enc.encode_contexts([e.context for e in exs]) @ enc.encode_responses(texts).T
    true = S[np.arange(len(exs)), [texts.index(e.response) for e in exs]][:, None]
    everything, in_store = np.ones(len(texts), bool), np.array([t in stored for t in texts])
    reachable = np.array([e.response in stored for e in exs])
    assert 0 < reachable.mean() < 1
    for prefix, cols, found in (("index_", everything, np.ones(len(exs), bool)), ("served_", in_store, reachable)):
        above = (S[:, cols] > true + 1e-6).sum(1)           # surely ranked above the true reply
        tied = (S[:, cols] >= true - 1e-6).sum(1) - found   # maybe above it (the true reply left out)
        for k in (1, 10):
            low, high = np.mean(found & (tied < k)), np.mean(found & (above < k))
            assert low <= sys_[f"{prefix}R@{k}"] <= high <= low + 2 / len(exs), (prefix, k, low, high, sys_)
    for name in ("report.json", "report.md", "report.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert json.loads((tmp_path / "report" / "report.json").read_text())["systems"].keys() >= {
        "random", "BM25 words + char bigrams", "TF-IDF char 1-3"}
    served = ResponseIndex.load(idx_dir, finetuned)
    (hits,) = served.search([[("S1", "안녕하세요 반가워요")]], k=3)
    assert len(hits) == 3 and all(isinstance(h[1]["text"], str) for h in hits)


def test_the_index_command_loads_the_dialog_model_once_for_the_index_and_the_ranker(finetuned, tiny_shards,
                                                                                     tmp_path, monkeypatch):
    """`dialogbert index` encodes the replies and fits the ranker with one load of the model."""
    from dialogbert.cli import main
    from retrieval.encoder import Encoder
    from retrieval.ranking.weights import RANKER_FILE
    real, loads = Encoder.load.__func__, []

    def counted(cls, *a, **k):
        loads.append(a[0] if a else k.get("path"))
        return real(cls, *a, **k)
    monkeypatch.setattr(Encoder, "load", classmethod(counted))
    out = tmp_path / "index"
    assert main(["index", "--model", str(finetuned), "--shards", str(tiny_shards), "--out", str(out),
                 "--no-ngram", "--no-use", "ranker.max_examples=200"]) == 0
    assert loads == [str(finetuned)]
    fitted = json.loads((out / RANKER_FILE).read_text())
    assert "dual" in fitted["weights"] and fitted["fitted_on"]["count"] == json.loads(
        (out / "index_info.json").read_text())["count"]


def test_finetune_resumes_from_its_checkpoint(finetuned, tiny_model, tiny_shards):
    from retrieval.finetune import finetune

    state = json.loads((finetuned / "checkpoints" / "step-60" / "trainer_state.json").read_text())
    assert state["step"] == 60
    # the same command with a higher max_steps continues at step 60 instead of starting over
    finetune(tiny_model, tiny_shards, finetuned, overrides=[
        "train.max_steps=62", "train.batch_size=32", "train.lr=1e-3", "train.warmup_steps=5",
        "data.max_length=96", "train.save_every=30", "train.threads=1"], progress=False)
    assert json.loads((finetuned / "finetune.json").read_text())["steps"] == 62
    assert (finetuned / "checkpoints" / "step-62").is_dir()


def test_the_time_budget_counts_the_runs_a_resumed_one_continues(tiny_model, tiny_shards, tmp_path, monkeypatch):
    """train.max_minutes is the training time of all runs into one output: a run killed and
    resumed does not get a second full budget (a fake clock: 1 s a call)."""
    import retrieval.finetune as ft
    clock = iter(range(10**6))
    monkeypatch.setattr(ft.time, "time", lambda: float(next(clock)))
    ov = ["train.max_steps=1000", "train.batch_size=16", "train.lr=1e-3", "train.warmup_steps=1",
          "train.save_every=1000", "train.max_minutes=0.2", "data.max_length=64", "train.threads=1",
          "data.valid_fraction=0"]
    out = ft.finetune(tiny_model, tiny_shards, tmp_path / "ft", overrides=ov, progress=False)
    first = json.loads((out / "finetune.json").read_text())
    state = json.loads(next((out / "checkpoints").iterdir()).joinpath("trainer_state.json").read_text())
    assert 0 < first["steps"] < 1000 and state["seconds"] > 12  # stopped by the clock, its time kept
    ft.finetune(tiny_model, tiny_shards, out, overrides=ov, progress=False)  # resumed: the budget is spent
    assert json.loads((out / "finetune.json").read_text())["steps"] == first["steps"] + 1


def test_a_killed_finetune_resumes_exactly_where_it_was(tiny_model, tiny_shards, tmp_path):
    """Killed after step 2 and resumed: the same weights as the run that was never stopped (the
    hard-negative sampler's state travels in the checkpoint, not just the step)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from retrieval.finetune import finetune

    threads = torch.get_num_threads()
    ov = ["train.max_steps=4", "train.batch_size=16", "train.lr=1e-3", "train.warmup_steps=1", "train.save_every=2",
          "train.keep_checkpoints=3", "data.max_length=64", "train.hard_negatives=true", "train.threads=1",
          "data.valid_fraction=0"]
    whole = finetune(tiny_model, tiny_shards, tmp_path / "whole", overrides=ov, progress=False)
    (tmp_path / "killed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(whole / "checkpoints" / "step-2", tmp_path / "killed" / "checkpoints" / "step-2")
    resumed = finetune(tiny_model, tiny_shards, tmp_path / "killed", overrides=ov, progress=False)
    torch.set_num_threads(threads)
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_frozen_bottom_layers_and_bf16_train_only_the_top(tiny_model, tiny_shards, tmp_path):
    """train.freeze_layers=1 with bf16 autocast: the embeddings (word, position, speaker, turn) and
    layer 0 come out bit for bit as they went in, the top layer moves, and the loss falls."""
    import torch
    from safetensors.torch import load_file

    from retrieval.finetune import finetune, load_config

    threads = torch.get_num_threads()
    ov = ["train.max_steps=30", "train.batch_size=16", "train.lr=1e-3", "train.warmup_steps=1",
          "train.save_every=1000", "train.log_every=10", "data.max_length=64", "train.threads=1",
          "data.valid_fraction=0", "train.freeze_layers=1", "train.precision=bf16"]
    out = finetune(tiny_model, tiny_shards, tmp_path / "ft", overrides=ov, progress=False)
    torch.set_num_threads(threads)
    before, after = load_file(tiny_model / "model.safetensors"), load_file(out / "model.safetensors")
    key = {k.removeprefix("bert."): k for k in before}
    moved = {k for k in after if not torch.equal(after[k], before[key[k.removeprefix("bert.")]])}
    assert moved and all(".layer.1." in k for k in moved), sorted(moved)
    assert any("attention" in k for k in moved) and any("output.dense" in k for k in moved)
    losses = [loss for _, loss in json.loads((out / "finetune.json").read_text())["losses"]]
    assert losses[-1] < losses[0] - 0.2, losses
    with pytest.raises(ValueError, match="2 layers"):
        finetune(tiny_model, tiny_shards, tmp_path / "all", overrides=ov[:-2] + ["train.freeze_layers=2"],
                 progress=False)
    with pytest.raises(ValueError, match="precision"):
        load_config(None, ["train.precision=fp8"])


def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    """precision "auto": bf16 on a CPU with avx512_bf16 or AMX tiles, fp32 on one without either
    (emulated bf16 is slower there); explicit values pass through."""
    import torch

    from retrieval.encoder import resolve_precision
    for avx, amx, want in ((True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert resolve_precision("auto") == want, (avx, amx)
        assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"


def test_bf16_encoding_ranks_as_fp32_and_is_scoped(finetuned, tiny_shards, tmp_path):
    """Encoding at bf16 (the index's ``precision``) gives vectors within bf16 rounding of the fp32
    ones, the block restores the encoder's own precision, and the index records what it used."""
    from retrieval.encoder import Encoder, resolve_precision
    from retrieval.index import build_index

    enc = Encoder.load(finetuned)
    texts = ["안녕하세요 반가워요", "오늘 날씨 어때요?", "I had a terrible day at work", "ㅋㅋㅋ 진짜?"] * 4
    full = enc.encode_responses(texts)
    with enc.at_precision("bf16"):
        assert enc.precision == "bf16"
        half = enc.encode_responses(texts)
    assert enc.precision == "fp32"
    cos = (full * half).sum(1)
    assert cos.min() > 0.99 and not np.array_equal(full, half), cos
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16")
    info = json.loads((build_index(finetuned, tiny_shards, tmp_path / "ix", precision="bf16", memory=False)
                       / "index_info.json").read_text())
    assert info["precision"] == "bf16"


def test_an_encoder_for_inference_holds_bf16_weights_and_ranks_as_fp32(finetuned, monkeypatch):
    """``for_inference("bf16")`` casts the weights once (what the chat service and eval run): the
    vectors stay float32 and within bf16 rounding of the fp32 ones; "fp32" leaves the weights;
    "auto" follows the hardware."""
    import torch

    from retrieval.encoder import Encoder
    ctxs = [[("S1", "안녕"), ("S2", "뭐 해?")], [("S1", "밥 먹었어?")], [("S1", "I had a terrible day at work")]]
    full = Encoder.load(finetuned)
    assert full.for_inference("fp32") is full and full.weights_precision == "fp32"
    v32 = full.encode_contexts(ctxs)
    half = Encoder.load(finetuned).for_inference("bf16")
    assert half.weights_precision == "bf16" and next(half.model.parameters()).dtype == torch.bfloat16
    v16 = half.encode_contexts(ctxs)
    cos = (v32 * v16).sum(1)
    assert v16.dtype == np.float32 and cos.min() > 0.99 and not np.array_equal(v32, v16), cos
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert Encoder.load(finetuned).for_inference("auto").weights_precision == "fp32"


def test_encoder_contract(finetuned):
    import numpy as np

    from retrieval.encoder import Encoder

    enc = Encoder.load(finetuned)
    ctxs = [[("S1", "안녕"), ("S2", "뭐 해?")], [("S1", "밥 먹었어?")], [("S1", "x " * 300)]]
    v = enc.encode_contexts(ctxs, batch_size=2)
    assert v.dtype == np.float32 and v.shape == (3, enc.dim)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # order restored after the length sort; same input, same vector, regardless of the batch
    assert np.allclose(enc.encode_contexts(ctxs[1:2]), v[1], atol=1e-5)
    f = enc.featurize([ctxs[0]])[0]
    assert max(f["turn_ids"]) == 2 and max(f["token_type_ids"]) == 2
    enc.settings.zero_dialog_ids = True
    f = enc.featurize([ctxs[0]])[0]
    assert max(f["turn_ids"]) == 0 and max(f["token_type_ids"]) == 0


def test_config_is_typed_and_checked(tmp_path):
    from retrieval.finetune import load_config

    with pytest.raises(ValueError, match="unknown config key 'train.max_stepz'"):
        load_config(None, ["train.max_stepz=3"])
    cfg = load_config(None, ["train.symmetric=false", "data.sources=chatbotdata,xpersona"])
    assert cfg.train.symmetric is False and cfg.data.sources == ["chatbotdata", "xpersona"]
    with pytest.raises(ValueError, match="model.kind='triple'"):
        load_config(None, ["model.kind=triple"])
    with pytest.raises(ValueError, match="train.lr: expected a number"):
        load_config(None, ["train.lr=fast"])
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\nsources = "chatbotdata"\n')
    with pytest.raises(ValueError, match="bad.toml.*data.sources: expected a list of strings"):
        load_config(bad)


@pytest.fixture(scope="module")
def qa_shards(tmp_path_factory):
    """24 question/answer conversations of the train split: small enough to learn by heart."""
    from preprocess.schema import Conversation, Turn, split_of, write_shard

    out = tmp_path_factory.mktemp("qa")
    words = ["사과", "바다", "기차", "음악", "겨울", "고양이", "커피", "축구", "영화", "우산", "편지", "시계"]
    convs, i = [], 0
    while len(convs) < 24:
        cid = f"qa{i}"
        i += 1
        if split_of(cid, fraction=0.2, source="chatbotdata") != "train":
            continue
        w, v = words[len(convs) % 12], words[(len(convs) * 5 + 1) % 12]
        convs.append(Conversation(cid, "chatbotdata", "ko", [Turn("S1", f"{w} 좋아해?"), Turn("S2", f"{v} 이야기 해줘")]))
    write_shard(out / "shard-00000.jsonl", convs)
    return out


def test_reranker_learns_its_pairs_saves_loads_and_resumes(tiny_model, qa_shards, tmp_path):
    import numpy as np
    import torch

    from retrieval.encoder import Encoder
    from retrieval.finetune import finetune, training_pairs
    from retrieval.rerank import CrossEncoder

    threads = torch.get_num_threads()
    ov = ["model.kind=cross", "train.batch_size=8", "train.group_size=4", "train.lr=1e-3", "train.warmup_steps=5",
          "train.save_every=100", "train.log_every=20", "train.threads=1", "data.max_length=32"]
    out = finetune(tiny_model, qa_shards, tmp_path / "rr", overrides=ov + ["train.max_steps=400"], progress=False)
    torch.set_num_threads(threads)
    info = json.loads((out / "finetune.json").read_text())
    assert info["kind"] == "cross" and info["steps"] == 400
    # the mean of the last three logged losses, not one batch
    first, last = info["losses"][0][1], sum(v for _, v in info["losses"][-3:]) / 3
    assert first > 1.0 and last < 0.6 * first, info["losses"]  # ln 4 = 1.39 at chance
    rr = CrossEncoder.load(out)
    pairs = training_pairs(qa_shards, 1)
    answers = sorted({p["response"] for p in pairs})
    s = rr.score([p["context"] for p in pairs], [[p["response"]] + [a for a in answers if a != p["response"]][:5]
                                                 for p in pairs])
    acc = float(np.mean(np.argmax(s, axis=1) == 0))
    print(f"re-ranker: losses {info['losses']}, accuracy on its 24 pairs {acc:.3f}")
    assert s.shape == (24, 6) and acc >= 0.5, (acc, info["losses"])  # chance: 1/6
    with pytest.raises(ValueError, match="re-ranker"):
        Encoder.load(out)  # a cross-encoder folder is no dual encoder
    finetune(tiny_model, qa_shards, out, overrides=ov + ["train.max_steps=402"], progress=False)
    torch.set_num_threads(threads)
    assert json.loads((out / "finetune.json").read_text())["steps"] == 402


def test_validation_carve_out_is_disjoint_from_training_and_from_test(tiny_shards):
    from preprocess.schema import read_shards
    from retrieval.examples import load_examples, validation_examples
    from retrieval.finetune import training_pairs

    valid = validation_examples(tiny_shards, 0.2)
    train = training_pairs(tiny_shards, valid_fraction=0.2)
    everything = training_pairs(tiny_shards)
    assert valid and len(valid) + len(train) == len(everything)
    from retrieval.ngram import training_texts  # the ranker's n-gram encoder trains on the same pairs
    assert training_texts(tiny_shards, 0.2) == [(p["context"][-1][1], p["response"]) for p in train]
    valid_convs = {e.conv_id for e in valid}
    test_convs = {e.conv_id for e in load_examples(tiny_shards, "test")}
    train_convs = {c.id for c in read_shards(tiny_shards, split="train")}
    assert valid_convs <= train_convs and not valid_convs & test_convs
    # no validation conversation gives a training pair (each pair carries its conversation's turns)
    valid_turns = {tuple(t.text for t in c.turns) for c in read_shards(tiny_shards, split="train") if c.id in valid_convs}
    assert not any(tuple(p["conv_turns"]) in valid_turns for p in train)
    # a capped carve-out is a fixed uniform sample in shard order, not the first N
    keyed = [(e.conv_id, e.response) for e in valid]
    n = len(valid) // 3
    sample = [(e.conv_id, e.response) for e in validation_examples(tiny_shards, 0.2, max_examples=n)]
    assert len(sample) == n and sample == [(e.conv_id, e.response) for e in validation_examples(tiny_shards, 0.2, n)]
    assert set(sample) <= set(keyed) and sample != keyed[:n]
    assert [keyed.index(k) for k in sample] == sorted(keyed.index(k) for k in sample)


def test_balanced_sample_gives_each_source_an_equal_share():
    """The ranker's fitting examples of a mixed index: each group an equal share of k, a small
    group all of its items and the rest split among the others, every share a fixed uniform
    sample in the items' order; one group gives exactly uniform_sample's sample."""
    from collections import Counter

    from retrieval.examples import balanced_sample, uniform_sample
    items = [("big", i) for i in range(600)] + [("small", i) for i in range(7)] + [("mid", i) for i in range(90)]
    items = [items[i] for i in sorted(range(len(items)), key=lambda i: (i * 7919) % len(items))]  # interleaved
    got = balanced_sample(items, 100, lambda x: x[0])
    assert Counter(g for g, _ in got) == {"small": 7, "mid": 46, "big": 47}
    assert got == balanced_sample(items, 100, lambda x: x[0])  # the same sample every time
    assert [items.index(x) for x in got] == sorted(items.index(x) for x in got)  # in the items' order
    assert len(set(got)) == len(got) and set(got) <= set(items)
    assert {x for x in items if x[0] == "small"} <= set(got)
    big = [x for x in got if x[0] == "big"]
    assert big != [x for x in items if x[0] == "big"][:47]  # a sample, not the first ones
    assert Counter(g for g, _ in balanced_sample(items, 1000, lambda x: x[0])) == {"big": 600, "mid": 90, "small": 7}
    assert balanced_sample(items, None, lambda x: x[0]) == items
    one = [("only", i) for i in range(500)]
    assert balanced_sample(one, 60, lambda x: x[0]) == uniform_sample(one, 60)


def test_validation_examples_by_source_balance_a_mixed_folder(tiny_shards):
    from collections import Counter

    from retrieval.examples import validation_examples
    every = Counter(e.source for e in validation_examples(tiny_shards, 0.2))
    assert len(every) == 2 and every["xpersona"] > 5 * every["chatbotdata"]  # multi-turn against pairs
    k = 2 * min(every.values()) - 2
    plain = Counter(e.source for e in validation_examples(tiny_shards, 0.2, k))
    even = Counter(e.source for e in validation_examples(tiny_shards, 0.2, k, by_source=True))
    assert even == {"chatbotdata": k // 2, "xpersona": k // 2} != plain


def test_minilm_is_offered_as_a_starting_point_with_its_own_vocabulary():
    """`--init-from minilm` resolves to the pip package's folder; its uncased tokenizer is adopted
    with a warning (Korean would turn into jamo), keeps every original id, and gains the
    placeholders as single tokens."""
    from transformers import AutoTokenizer

    from dialogbert.peers import peer_model_path, resolve_model
    from dialogbert.tokenizer import adopt_tokenizer
    from preprocess.schema import PLACEHOLDERS

    path = peer_model_path()
    assert resolve_model("minilm") == resolve_model("all-MiniLM-L6-v2") == str(path)
    assert resolve_model("runs/x/encoder") == "runs/x/encoder"
    original = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    with pytest.warns(UserWarning, match="lowercases"):
        tok = adopt_tokenizer(path)
    assert len(tok) == len(original) + len(PLACEHOLDERS)
    text = "call me at [PHONE] tomorrow, [NAME]"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert [i for i in ids if i >= len(original)] == [tok.convert_tokens_to_ids("[PHONE]"),
                                                      tok.convert_tokens_to_ids("[NAME]")]
    assert tok("see you tomorrow")["input_ids"] == original("see you tomorrow")["input_ids"]


def test_peer_encoder_loads_from_its_pip_package_offline():
    import numpy as np

    from retrieval.encoder import Encoder
    from dialogbert.peers import peer_model_path

    enc = Encoder.load(peer_model_path(), context_turns=3)
    assert not enc.is_dialog and enc.dim == 384 and enc.settings.context_turns == 3
    f = enc.featurize([[("A", "hi"), ("B", "hello"), ("A", "how are you?"), ("B", "fine")]])[0]
    assert set(f["token_type_ids"]) == {0} and set(f["turn_ids"]) == {0}  # a plain BERT: no dialog ids
    c = enc.encode_contexts([[("A", "Do you want to grab dinner tonight?")]])
    r = enc.encode_responses(["Sure, how about pizza at seven?", "The quarterly tax report is attached."])
    assert np.allclose(np.linalg.norm(r, axis=1), 1.0, atol=1e-5)
    s = (c @ r.T)[0]
    assert s[0] > s[1] + 0.1, s


def test_length_window_batches_cover_every_pair_once_and_pad_less():
    import random

    from retrieval.finetune import batch_order
    rng = random.Random(3)
    lengths = [rng.randrange(5, 400) for _ in range(3200)]
    plain = batch_order(len(lengths), 32, seed=0, epoch=1)
    bucketed = batch_order(len(lengths), 32, seed=0, epoch=1, lengths=lengths, window=20)
    assert sorted(i for b in bucketed for i in b) == list(range(3200))
    assert all(len(b) == 32 for b in bucketed)
    padded = lambda batches: sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded(bucketed) < 0.7 * padded(plain)
    assert bucketed == batch_order(len(lengths), 32, seed=0, epoch=1, lengths=lengths, window=20)  # resumable
    assert bucketed != batch_order(len(lengths), 32, seed=0, epoch=2, lengths=lengths, window=20)


def test_the_fine_tuning_benchmark_times_every_arm(tiny_model, tiny_shards, capsys):
    """bench/finetune.py on the tiny model: six arms on the same batches, the reference at 1.00x."""
    import importlib.util
    from pathlib import Path

    import torch

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_finetune", root / "bench" / "finetune.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    assert bench.main(["--base", str(tiny_model), "--shards", str(tiny_shards), "--steps", "3",
                       "--batch-size", "8", "--threads", "1", "--freeze", "1", "--chunk", "4", "--no-write"]) == 0
    torch.set_num_threads(threads)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "x |" in line]
    assert len(rows) == 6 and rows[0].endswith("| 1.00x |") and "bottom 1 layers frozen" in rows[5]
    assert "4 at a time by length" in rows[2]  # the 16 texts of a step run in chunks of 4
    assert "SDPA" in rows[2] and "plain attention matmuls (the demo's recipe)" in rows[3]
    assert bench.main(["--base", str(tiny_model / "nope"), "--no-write"]) == 2


def test_batches_by_source_keep_each_corpus_apart():
    """data.batch_by_source: every full batch of a corpus holds that corpus's rows only; the
    corpora's remainders (here 10 + 20 rows) fill mixed batches; nothing but the last short
    batch's rows is dropped, and the same seed gives the same batches."""
    import random

    from retrieval.losses import batch_order
    rng = random.Random(5)
    groups = ["ko"] * 650 + ["en"] * 340 + ["mix"] * 10
    lengths = [rng.randrange(5, 200) for _ in groups]
    batches = batch_order(len(groups), 32, seed=0, epoch=0, lengths=lengths, window=4, groups=groups)
    kinds = [{groups[i] for i in b} for b in batches]
    assert all(len(b) == 32 for b in batches)
    assert sum(k == {"ko"} for k in kinds) == 650 // 32 and sum(k == {"en"} for k in kinds) == 340 // 32
    assert sum(len(k) > 1 for k in kinds) == 1  # 10 + 20 + 10 remainder rows: one mixed batch, 8 rows left
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen)) == 1000 - 8
    assert batches == batch_order(len(groups), 32, seed=0, epoch=0, lengths=lengths, window=4, groups=groups)
    assert [b[0] for b in batches] != [b[0] for b in batch_order(len(groups), 32, 0, 1, lengths, 4, groups)]


def test_context_and_reply_prefixes_make_an_echo_another_input(tiny_model):
    from retrieval.encoder import Encoder
    enc = Encoder.load(tiny_model, context_prefix="query:", response_prefix="passage:")
    (ctx,) = enc.context_features([[("A", "오늘 뭐 먹었어?")]])
    (rep,) = enc.response_features(["오늘 뭐 먹었어?"])
    q = enc.tokenizer("query:", add_special_tokens=False)["input_ids"]
    p = enc.tokenizer("passage:", add_special_tokens=False)["input_ids"]
    assert ctx["input_ids"][1:1 + len(q)] == q and rep["input_ids"][1:1 + len(p)] == p
    assert ctx["input_ids"][1 + len(q):] == rep["input_ids"][1 + len(p):]  # the same words after the marks
    v = enc.encode_contexts([[("A", "오늘 뭐 먹었어?")]])
    w = enc.encode_responses(["오늘 뭐 먹었어?"])
    assert float((v @ w.T)[0, 0]) < 0.9999  # no longer the same input, so no longer the same vector


def test_word_lr_hangul_only_moves_the_hangul_rows_at_the_word_rate_and_the_rest_at_the_base_rate(
        tiny_model, tiny_shards, tmp_path):
    """train.word_lr_mult=25 with train.word_lr_hangul_only: after one fine-tuning step (AdamW's
    first step moves each touched element by about its rate) the rows of pieces with a Hangul
    letter moved up to 25x the rate, every other row (the special tokens, punctuation, digits)
    up to the base rate; without the option those other rows moved 25x too."""
    import unicodedata

    import torch

    from retrieval.encoder import Encoder
    from retrieval.finetune import finetune
    from retrieval.word_rows import rows_without_hangul

    lr = 1e-4
    threads = torch.get_num_threads()
    ov = ["train.max_steps=1", "train.batch_size=16", f"train.lr={lr}", "train.warmup_steps=1",
          "train.save_every=0", "data.max_length=64", "train.threads=1", "data.valid_fraction=0",
          "train.word_lr_mult=25"]
    start = Encoder.load(tiny_model, strict_kind=False)
    before = start.model.get_input_embeddings().weight.detach()
    moved = {}
    for arm, extra in (("all", []), ("hangul", ["train.word_lr_hangul_only=true"])):
        out = finetune(tiny_model, tiny_shards, tmp_path / arm, overrides=ov + extra, progress=False)
        moved[arm] = (Encoder.load(out).model.get_input_embeddings().weight.detach() - before).abs()
    torch.set_num_threads(threads)
    tok = start.tokenizer
    other = rows_without_hangul(tok, len(before))
    hangul = sorted(set(range(len(before))) - set(other))
    # the split checked against Unicode's character names, not the module's own pattern
    by_name = {i for i in range(len(before))
               if any(unicodedata.name(c, "").startswith("HANGUL") for c in tok.convert_ids_to_tokens(i))}
    assert set(hangul) == by_name and len(hangul) > 100 and tok.cls_token_id in other
    used_other = [i for i in other if moved["all"][i].max() > 0]
    assert tok.cls_token_id in used_other and len(used_other) >= 5  # specials, punctuation, digits in the batch
    assert moved["all"][used_other].max().item() == pytest.approx(25 * lr, rel=0.05)
    assert moved["hangul"][used_other].max().item() == pytest.approx(lr, rel=0.05)
    assert moved["hangul"][hangul].max().item() == pytest.approx(25 * lr, rel=0.05)


def test_source_weights_naming_a_corpus_without_pairs_is_an_error_that_lists_the_corpora(tiny_model, tiny_shards, tmp_path, capsys):
    from collections import Counter

    from retrieval.finetune import finetune, training_pairs
    counts = Counter(p["source"] for p in training_pairs(tiny_shards))
    corpora = sorted(counts)
    with pytest.raises(ValueError, match=r"source_weights names \['chitchta'\].*" + corpora[0]):
        finetune(tiny_model, tiny_shards, tmp_path / "ft", overrides=["data.source_weights=chitchta:0.5"], progress=False)
    assert not list((tmp_path / "ft").glob("checkpoints/*"))
    # a corpus named rightly: the epoch's pairs per corpus are reported, the weighted one doubled
    finetune(tiny_model, tiny_shards, tmp_path / "ok", overrides=[
        f"data.source_weights={corpora[0]}:2", "train.max_steps=1", "train.batch_size=4", "train.threads=1",
        "train.save_every=0"], progress=False)
    said = [line for line in capsys.readouterr().out.splitlines() if "pairs an epoch" in line]
    assert said == ["finetune: pairs an epoch " + ", ".join(
        f"{c} {counts[c] * (2 if c == corpora[0] else 1)}" for c in corpora)]
