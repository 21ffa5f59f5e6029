"""The dual encoder's reply memory (retrieval.reply_memory): rows worked out by hand, the weight
chosen on validation, the files, and the fine-tuning -> encoder -> evaluation path."""
from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.reply_memory import MEMORY_FILE, ReplyMemory, build, choose_weight, text_key


class TableEncoder:
    """Contexts and replies from fixed tables: a context is keyed by its newest turn's text."""
    reply_memory = None

    def __init__(self, contexts: dict, replies: dict):
        self.contexts, self.replies = contexts, replies
        self.dim = len(next(iter(contexts.values())))

    def encode_contexts(self, contexts, **kw):
        return np.array([self.contexts[c[-1][1]] for c in contexts], np.float32)

    def encode_responses(self, texts, **kw):
        return np.array([self.replies[t] for t in texts], np.float32)


def test_rows_are_each_replys_mean_context_less_its_languages_mean():
    ctx = {"배고파": [1, 0, 0], "밥 먹자": [0, 1, 0], "졸려": [0, 0, 4], "hi there": [2, 2, 0], "hello": [0, 2, 2]}
    enc = TableEncoder(ctx, {})
    pairs = [("배고파", "밥 먹으러 가요"), ("밥 먹자", "밥 먹으러 가요"), ("졸려", "일찍 자요"),
             ("hi there", "hey"), ("hello", "hey")]
    mem = build(enc, [[("S1", c)] for c, _ in pairs], [r for _, r in pairs], vectors=False)
    assert mem.vectors is None and mem.fitting is None
    assert len(mem) == 3 and mem.info["pairs"] == 5 and mem.info["languages"] == {"en": 2, "ko": 3}
    ko_mean = np.array([1, 1, 4]) / 3
    rows, found = mem.lookup(["밥 먹으러 가요", "일찍 자요", "hey", "never said"])
    assert found.tolist() == [True, True, True, False]
    np.testing.assert_allclose(rows[0], (np.array([1, 0, 0]) + np.array([0, 1, 0])) / 2 - ko_mean, atol=2e-3)
    np.testing.assert_allclose(rows[1], np.array([0, 0, 4]) - ko_mean, atol=2e-3)
    np.testing.assert_allclose(rows[2], [0, 0, 0], atol=1e-6)  # both English contexts: their mean is the language's
    assert not rows[3].any()


def test_expand_moves_only_remembered_replies_and_keeps_vectors_unit_length():
    mem = ReplyMemory(np.array([text_key("a"), text_key("b")]), np.array([[0, 1], [1, 0]], np.float16), weight=1.0)
    v = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    out = mem.expand(["a", "unknown", "b"], v)
    np.testing.assert_allclose(out[0], [2 ** -0.5, 2 ** -0.5], atol=1e-6)
    np.testing.assert_array_equal(out[1], v[1])
    np.testing.assert_allclose(out[2], np.array([1.6, 0.8]) / np.linalg.norm([1.6, 0.8]), atol=1e-6)
    np.testing.assert_array_equal(mem.expand(["a", "b", "b"], v, weight=0.0), v)
    np.testing.assert_array_equal(v, np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32))  # not changed in place


def test_a_memory_round_trips_through_its_file_and_a_broken_file_names_itself(tmp_path):
    mem = ReplyMemory(np.array([text_key("x"), text_key("y")]), np.array([[1, 2], [3, 4]], np.float16), 0.5,
                      {"pairs": 7, "replies": 2})
    mem.save(tmp_path)
    back = ReplyMemory.load(tmp_path)
    assert back.weight == 0.5 and back.info == {"pairs": 7, "replies": 2}
    np.testing.assert_array_equal(back.lookup(["y"])[0], [[3, 4]])
    assert ReplyMemory.load(tmp_path / "nothing") is None
    (tmp_path / MEMORY_FILE).write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=MEMORY_FILE):
        ReplyMemory.load(tmp_path)
    with pytest.raises(ValueError, match="duplicate"):
        ReplyMemory(np.array([1, 1]), np.zeros((2, 2)))


def _examples(pairs):
    from retrieval.examples import Example
    return [Example([("S1", c)], r, "S2", f"c{i}", "test", 1, [c, r]) for i, (c, r) in enumerate(pairs)]


def test_the_weight_is_the_one_that_scores_best_on_validation_and_zero_when_none_helps():
    from retrieval.evaluate import RetrievalEvaluator

    rng = np.random.default_rng(0)
    n, d = 60, 32
    ctx_vecs = rng.normal(size=(n, d))
    ctx_vecs /= np.linalg.norm(ctx_vecs, axis=1, keepdims=True)
    pairs = [(f"질문 {i}", f"대답 {i}") for i in range(n)]
    ev = RetrievalEvaluator(_examples(pairs), n=10)
    # replies whose own vectors say nothing (random), remembered with the contexts they answered
    blind = TableEncoder({c: ctx_vecs[i] for i, (c, _) in enumerate(pairs)},
                         {r: rng.normal(size=d) / d ** 0.5 for _, r in pairs})
    mem = build(blind, [[("S1", c)] for c, _ in pairs], [r for _, r in pairs])
    table = choose_weight(blind, mem, ev)
    assert table["0.0"]["R10@1"] < 0.5 and mem.weight > 0
    assert table[str(mem.weight)]["R10@1"] > 0.9 and mem.info["validation"] == table
    # replies whose own vectors already find them: no weight can do better, and the tie keeps 0
    sighted = TableEncoder(blind.contexts, {r: ctx_vecs[i] for i, (_, r) in enumerate(pairs)})
    noise = ReplyMemory(mem.keys, rng.normal(size=mem.rows.shape).astype(np.float16))
    choose_weight(sighted, noise, ev)
    assert noise.weight == 0.0


@pytest.fixture(scope="module")
def remembering(tiny_shards, tmp_path_factory):
    import torch

    from conftest import save_random_dialogbert
    from retrieval.finetune import finetune

    model = save_random_dialogbert(tmp_path_factory.mktemp("m"), pretraining=False)
    out = tmp_path_factory.mktemp("enc")
    threads = torch.get_num_threads()
    finetune(model, tiny_shards, out, overrides=[
        "train.max_steps=20", "train.batch_size=16", "train.lr=1e-3", "train.warmup_steps=2", "train.save_every=0",
        "train.threads=1", "data.max_length=64", "data.valid_fraction=0.2", "train.reply_memory=true"], progress=False)
    yield model, out
    torch.set_num_threads(threads)


def test_finetune_writes_the_memory_of_its_training_pairs_and_the_encoder_applies_it(remembering, tiny_shards):
    from retrieval.encoder import Encoder, model_hash
    from retrieval.examples import train_examples
    from retrieval.finetune import training_pairs
    from preprocess.pipeline import file_sha256

    model, out = remembering
    info = json.loads((out / "finetune.json").read_text("utf-8"))["reply_memory"]
    pairs = training_pairs(tiny_shards, 2, (), 0.2)
    carve = list(train_examples(tiny_shards, 0.2, True, 2))
    fitted = sorted({p["response"] for p in pairs})
    replies = sorted(set(fitted) | {e.response for e in carve})
    assert len(carve) and len(replies) > len(fitted)  # the carve-out brings replies of its own
    assert info["pairs"] == len(pairs) + len(carve) and info["replies"] == len(replies)
    assert info["carve_out_pairs"] == len(carve)
    assert set(info["validation"]) == {"0.0", "0.5", "1.0", "1.5", "2.0", "0.5 borrowing", "1.0 borrowing",
                                       "1.5 borrowing", "2.0 borrowing"} and info["weight"] in (0.0, 0.5, 1.0, 1.5, 2.0)
    enc = Encoder.load(out)
    bare = Encoder.load(out, reply_memory=False)
    mem = enc.reply_memory
    assert mem is not None and len(mem) == len(replies) and bare.reply_memory is None
    assert len(mem.fitting) == len(fitted) and mem.fitting.lookup(replies)[1].sum() == len(fitted)
    assert (mem.weight, mem.borrow) == (info["weight"], info["borrow"])  # what finetune.json reports is what it saved
    assert (mem.fitting.weight, mem.fitting.borrow) == (mem.weight, mem.borrow)
    mem.weight, mem.borrow = 1.0, False
    unseen = "이 문장은 학습 데이터에 없어요 정말로"
    v, b = enc.encode_responses([replies[0], unseen]), bare.encode_responses([replies[0], unseen])
    np.testing.assert_allclose(v[1], b[1], atol=1e-6)          # a reply it never saw keeps its vector
    np.testing.assert_array_equal(enc.encode_responses([replies[0], unseen], reply_memory=False), b)  # asked without it
    assert abs(float(v[0] @ b[0])) < 0.9999                    # a training reply moved ...
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)  # ... and stays a unit vector
    assert model_hash(out) != file_sha256(out / "model.safetensors")  # an index built with it knows the memory


def test_the_encoder_reads_the_stored_plain_vectors_only_at_the_precision_they_were_computed(remembering, tiny_shards):
    from retrieval.encoder import Encoder
    from retrieval.finetune import training_pairs

    _, out = remembering
    reply = training_pairs(tiny_shards, 2, (), 0.2)[0]["response"]
    enc = Encoder.load(out)
    mem = enc.reply_memory
    assert mem.info["precision"] in ("fp32", "bf16")
    mem.weight = 0.0  # the plain vectors
    at, found = mem._find([reply])
    assert found[0]
    fresh = enc.encode_responses([reply], reply_memory=False)[0]
    stand_in = np.eye(enc.dim, dtype=np.float32)[0]
    mem.vectors[at[0]] = stand_in  # a vector only the stored copy can give
    mem.info["precision"] = enc.vector_precision
    np.testing.assert_array_equal(enc.encode_responses([reply])[0], stand_in)
    mem.info["precision"] = "bf16" if enc.vector_precision == "fp32" else "fp32"
    np.testing.assert_allclose(enc.encode_responses([reply])[0], fresh, atol=1e-6)  # computed again


def test_a_reply_the_memory_lacks_borrows_from_its_nearest_remembered_replies():
    from retrieval.reply_memory import BORROW_MIN, BORROW_SHARE

    near1 = np.array([1.0, 0.0, 0.0])
    near2 = np.array([0.96, 0.28, 0.0])              # cosine 0.96 to near1
    far = np.array([0.0, 0.0, 1.0])
    mem = ReplyMemory(np.array([text_key("a"), text_key("b"), text_key("c")]),
                      np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float16), weight=2.0,
                      vectors=np.stack([near1, near2, far]).astype(np.float16), borrow=True)
    new = np.array([[1.0, 0.0, 0.0], [0.0, 2 ** -0.5, 2 ** -0.5]], np.float32)  # like a and b; like none
    lent = mem.borrowed(new)
    s1, s2 = 1.0, float(np.float16(0.96))           # the cosines to a's and b's stored vectors
    np.testing.assert_allclose(lent[0], (s1 * np.array([0, 1, 0]) + s2 * np.array([0, 0, 1])) / (s1 + s2), atol=2e-3)
    assert BORROW_MIN > float(new[1] @ far) and not lent[1].any()   # nothing at least BORROW_MIN close
    out = mem.expand(["new", "b", "other"], np.vstack([new[0], near2, new[1]]))
    want = new[0] + 2.0 * BORROW_SHARE * lent[0]
    np.testing.assert_allclose(out[0], want / np.linalg.norm(want), atol=2e-3)
    own = near2 + 2.0 * np.array([0, 0, 1])                         # a remembered reply: its own row only
    np.testing.assert_allclose(out[1], own / np.linalg.norm(own), atol=2e-3)
    np.testing.assert_array_equal(out[2], new[1])
    np.testing.assert_array_equal(mem.expand(["new"], new[:1], borrow=False), new[:1])


def test_the_carve_outs_pairs_are_remembered_and_the_fitting_memory_leaves_them_out(tmp_path):
    ctx = {"배고파": [1, 0, 0], "밥 먹자": [0, 1, 0], "졸려": [0, 0, 4], "피곤해": [0, 2, 0]}
    enc = TableEncoder(ctx, {"밥 먹으러 가요": [1, 0, 0], "일찍 자요": [0, 0, 1]})
    pairs = [("배고파", "밥 먹으러 가요"), ("졸려", "일찍 자요"), ("밥 먹자", "밥 먹으러 가요"), ("피곤해", "일찍 자요")]
    mem = build(enc, [[("S1", c)] for c, _ in pairs], [r for _, r in pairs], carve_out=2)
    assert mem.info["pairs"] == 4 and mem.info["carve_out_pairs"] == 2 and len(mem.fitting) == 2
    all_mean, fit_mean = np.array([1, 3, 4]) / 4, np.array([1, 0, 4]) / 2
    np.testing.assert_allclose(mem.lookup(["밥 먹으러 가요"])[0][0], np.array([0.5, 0.5, 0]) - all_mean, atol=2e-3)
    np.testing.assert_allclose(mem.fitting.lookup(["밥 먹으러 가요"])[0][0], np.array([1, 0, 0]) - fit_mean, atol=2e-3)
    mem.weight, mem.borrow = 1.5, True
    mem.fitting.weight, mem.fitting.borrow = 1.5, True
    mem.save(tmp_path)
    back = ReplyMemory.load(tmp_path)
    assert (back.weight, back.borrow, back.fitting.weight, back.fitting.borrow) == (1.5, True, 1.5, True)
    np.testing.assert_array_equal(back.fitting.rows, mem.fitting.rows)
    np.testing.assert_array_equal(back.fitting.vectors, back.vectors[back._find(["밥 먹으러 가요", "일찍 자요"])[0]])
    np.testing.assert_array_equal(back.plain(["일찍 자요"], None)[0], [[0, 0, 1]])  # stored at the table's "precision"
    with pytest.raises(ValueError, match="carve-out"):
        build(enc, [[("S1", "배고파")]], ["밥 먹으러 가요"], carve_out=2)
    given = build(enc, None, [r for _, r in pairs], carve_out=2,  # contexts encoded by the caller: the same rows
                  context_vectors=enc.encode_contexts([[("S1", c)] for c, _ in pairs]))
    np.testing.assert_array_equal(given.rows, mem.rows)
    np.testing.assert_array_equal(given.fitting.rows, mem.fitting.rows)
    with pytest.raises(ValueError, match="context vectors"):
        build(enc, None, ["일찍 자요"], context_vectors=np.zeros((2, 3), np.float32))


def test_the_ranker_is_fitted_with_the_memory_that_leaves_the_carve_out_out(monkeypatch, tmp_path):
    import retrieval.ranking.build as rb
    from conftest import stub_index, topic_pairs

    index = stub_index(tmp_path, "m", topic_pairs(200, 0))
    full = ReplyMemory(np.array([text_key("a")]), np.zeros((1, index.encoder.dim), np.float16))
    full.fitting = ReplyMemory(np.zeros(0, np.int64), np.zeros((0, index.encoder.dim), np.float16))
    index.encoder.reply_memory = full
    seen = {}

    class Stop(Exception):
        pass

    def spy(scorer, examples, **kw):
        seen["memory"] = scorer.encoder.reply_memory
        raise Stop

    monkeypatch.setattr(rb, "fit_ranker", spy)
    with pytest.raises(Stop):
        rb.fit_for_index(tmp_path / "idx", tmp_path / "shards", fraction=0.3, index=index, ngram=False, use=False)
    assert seen["memory"] is full.fitting and index.encoder.reply_memory is full  # and put back


def test_the_report_keeps_the_transformers_own_row_beside_the_encoder_with_its_memory(remembering, tiny_shards, tmp_path):
    import shutil

    from retrieval.evaluate import evaluate

    _, out = remembering
    folder = tmp_path / "enc"
    shutil.copytree(out, folder)
    mem = ReplyMemory.load(folder)
    mem.weight = 1.0
    mem.save(folder)
    rep = evaluate(folder, tiny_shards, None, baselines=False, precision="fp32")
    rows = rep["systems"]
    assert {"encoder", "encoder without reply memory"} <= set(rows) and rep["served"] == "encoder"
    assert rows["encoder"]["MRR"] != rows["encoder without reply memory"]["MRR"]
    from retrieval.fixed import evaluate_fixed
    from retrieval.finetune import training_pairs
    fixed = tmp_path / "fixed.jsonl"
    pairs = training_pairs(tiny_shards, 2, (), 0.2)[:6]
    fixed.write_text("".join(json.dumps({"context": [t for _, t in p["context"]], "label": 0,
                                         "candidates": [p["response"], "전혀 상관없는 다른 대답이에요"]}, ensure_ascii=False) + "\n"
                             for p in pairs), "utf-8")
    assert {"encoder", "encoder without reply memory"} <= set(evaluate_fixed(fixed, None, folder, shards=tiny_shards,
                                                                             precision="fp32")["systems"])
    mem.weight = 0.0
    mem.save(folder)
    assert "encoder without reply memory" not in evaluate(folder, tiny_shards, None, baselines=False,
                                                           precision="fp32")["systems"]
    assert "encoder without reply memory" not in evaluate_fixed(fixed, None, folder, shards=tiny_shards,
                                                                precision="fp32")["systems"]


def test_finetuning_again_without_the_memory_removes_the_stale_one(remembering, tiny_shards, tmp_path):
    import shutil

    from retrieval.finetune import finetune

    model, out = remembering
    folder = tmp_path / "enc"
    shutil.copytree(out, folder)
    assert (folder / MEMORY_FILE).exists()
    finetune(model, tiny_shards, folder, overrides=[
        "train.max_steps=20", "train.batch_size=16", "train.save_every=0", "train.threads=1", "data.max_length=64",
        "data.valid_fraction=0.2"], resume=None, progress=False)
    assert not (folder / MEMORY_FILE).exists()
    assert "reply_memory" not in json.loads((folder / "finetune.json").read_text("utf-8"))
