"""The chat path's two shortcuts give what the long way gives: a few contexts packed into one row
(Encoder.forward_packed) and a Flat index's search as one matrix product (ResponseIndex.search_vectors)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import copy_tiny_tokenizer, save_random_dialogbert

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONTEXTS = [
    [("S1", "안녕")],
    [("S1", "오늘 날씨 어때?"), ("S2", "비가 많이 온대요 우산 챙기세요 꼭이요")],
    [("S2", "점심 뭐 먹었어")],
    [("S1", "주말에 영화 보러 갈래?"), ("S2", "좋아요"), ("S1", "몇 시에 만날까? 저녁 먹고 볼까 아니면 낮에 볼까")],
    [("S1", "ㅋ")],
]


@pytest.fixture(scope="module")
def dialog_model(tmp_path_factory):
    return save_random_dialogbert(tmp_path_factory.mktemp("packing-dialogbert"), pretraining=False)


@pytest.fixture(scope="module")
def plain_bert(tmp_path_factory):
    """A random plain BertModel (no turn ids, two token types) with the tiny tokenizer."""
    from transformers import BertConfig, BertModel

    from dialogbert.tokenizer import load_tokenizer
    out = tmp_path_factory.mktemp("packing-bert")
    tok = load_tokenizer(copy_tiny_tokenizer(out))
    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)).save_pretrained(out)
    return out


def _both_ways(enc, contexts):
    enc.pack_tokens = 512
    feats = enc.context_features(contexts)
    assert enc.packs(feats)
    packed = enc.encode_contexts(contexts)
    enc.pack_tokens = 0
    padded = enc.encode_contexts(contexts)
    enc.pack_tokens = 512
    return packed, padded


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("which", ["dialog", "plain"])
def test_packed_contexts_equal_the_padded_batch(dialog_model, plain_bert, which, pooling):
    from retrieval.encoder import Encoder
    enc = Encoder.load(dialog_model if which == "dialog" else plain_bert, strict_kind=False, pooling=pooling,
                       context_prefix="query:")
    feats = enc.context_features(CONTEXTS)
    assert len({len(f["input_ids"]) for f in feats}) >= 4  # lengths differ: the padded batch pads
    packed, padded = _both_ways(enc, CONTEXTS)
    np.testing.assert_allclose(packed, padded, atol=2e-5)
    assert not np.allclose(packed[0], packed[2], atol=1e-3)  # the rows stay apart: no input sees another's tokens
    # one input alone, or the inputs in another order, gives the same vectors
    np.testing.assert_allclose(enc.encode_contexts(CONTEXTS[1:2])[0], packed[1], atol=2e-5)
    np.testing.assert_allclose(enc.encode_contexts(CONTEXTS[::-1])[::-1], packed, atol=2e-5)


def test_packed_bf16_weights_rank_as_the_padded_batch(dialog_model):
    from retrieval.encoder import Encoder
    enc = Encoder.load(dialog_model, strict_kind=False).for_inference("bf16")
    packed, padded = _both_ways(enc, CONTEXTS)
    assert packed.dtype == np.float32
    assert (packed * padded).sum(1).min() > 0.999


def test_what_is_not_packed(dialog_model):
    from retrieval.encoder import Encoder
    from retrieval.rerank import CrossEncoder
    enc = Encoder.load(dialog_model, strict_kind=False)
    feats = enc.context_features(CONTEXTS)
    assert not enc.packs(feats[:1])  # a single input has no padding to save
    enc.pack_tokens = sum(len(f["input_ids"]) for f in feats) - 1
    assert not enc.packs(feats)  # over the budget: length-sorted batches
    assert CrossEncoder.pack_tokens == 0  # its forward is the next-turn head over a padded batch


def _flat_index(n: int = 300, d: int = 16, seed: int = 0):
    import faiss

    from retrieval.index import ResponseIndex
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    ix = faiss.IndexFlatIP(d)
    ix.add(X)
    rows = [{"text": f"reply {i}"} for i in range(n)]
    return ResponseIndex(ix, rows, {"dimension": d, "count": n}), X, rng


def test_flat_search_as_a_matrix_product_equals_faiss():
    index, X, rng = _flat_index()
    assert np.shares_memory(index.flat_vectors(), index.flat_vectors())  # a view of faiss's storage
    for nq, k in ((1, 5), (8, 50), (64, 20), (3, 1000)):  # k above the count: every row, as faiss gives
        q = X[rng.choice(len(X), nq)] + 0.1 * rng.standard_normal((nq, X.shape[1])).astype(np.float32)
        D, I = index.search_vectors(q, k)
        D0, I0 = index.index.search(q, min(k, len(X)))
        np.testing.assert_array_equal(I, I0)
        np.testing.assert_allclose(D, D0, atol=1e-5)
        assert D.dtype == np.float32 and I.dtype == np.int64
    # vectors added later are searched: the view is taken at each search
    new = -X[:2]
    index.index.add(new)
    index.rows += [{"text": "new 0"}, {"text": "new 1"}]
    D, I = index.search_vectors(new, 1)
    assert I[:, 0].tolist() == [len(X), len(X) + 1]


def test_other_indexes_search_with_faiss():
    import faiss

    from retrieval.index import FLAT_MATMUL_QUERIES, ResponseIndex
    index, X, rng = _flat_index()
    many = X[:FLAT_MATMUL_QUERIES + 1]
    D, I = index.search_vectors(many, 3)  # more queries than a chat batch: faiss's own search
    assert I[:, 0].tolist() == list(range(len(many)))
    hnsw = faiss.IndexHNSWFlat(X.shape[1], 8, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(X)
    assert ResponseIndex(hnsw, index.rows, index.info).flat_vectors() is None
    l2 = faiss.IndexFlatL2(X.shape[1])
    l2.add(X)
    assert ResponseIndex(l2, index.rows, index.info).flat_vectors() is None


@pytest.mark.parametrize("which", ["dialog", "plain"])
def test_a_cpu_encoder_runs_plain_attention_with_the_fused_kernels_vectors_and_gradients(dialog_model, plain_bert, which):
    """On a CPU the encoder runs BERT's own attention matmuls ("eager"): without dropout, torch's SDPA
    takes its flash kernel there, whose backward is the slow one for short inputs. Vectors (padded and
    packed) and gradients are SDPA's."""
    from dialogbert.modeling import attention_for_device
    from retrieval.encoder import Encoder
    enc = Encoder.load(dialog_model if which == "dialog" else plain_bert, strict_kind=False, context_prefix="query:")
    model = enc.model
    assert model.config._attn_implementation == "eager"

    def vectors_and_grads():
        enc.pack_tokens = 512
        packed = enc.encode_contexts(CONTEXTS)
        enc.pack_tokens = 0
        padded = enc.encode_contexts(CONTEXTS)
        model.zero_grad(set_to_none=True)
        vectors = enc.forward(enc.pad(enc.context_features(CONTEXTS)))
        (vectors[:, :5] * torch.arange(1.0, 6.0)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return packed, padded, grads

    eager = vectors_and_grads()
    assert attention_for_device(model, "cuda") == "sdpa"  # where the fused kernels pay; nothing moves to a GPU here
    sdpa = vectors_and_grads()
    assert attention_for_device(model, torch.device("cpu")) == "eager"
    for a, b in zip(eager[:2], sdpa[:2]):
        np.testing.assert_allclose(a, b, atol=2e-5)
    assert eager[2].keys() == sdpa[2].keys() and len(eager[2]) > 10
    for name, g in eager[2].items():
        torch.testing.assert_close(g, sdpa[2][name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_training_engine_sets_plain_attention_on_a_cpu():
    from dialogbert.config import TrainSection
    from dialogbert.engine import TorchEngine
    from dialogbert.modeling import DialogBertConfig, DialogBertForPreTraining
    model = DialogBertForPreTraining(DialogBertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                      num_attention_heads=2, intermediate_size=32,
                                                      max_position_embeddings=32))
    model.set_attn_implementation("sdpa")
    TorchEngine(model, TrainSection(lr=1e-3, device="cpu"))
    assert model.config._attn_implementation == "eager"
