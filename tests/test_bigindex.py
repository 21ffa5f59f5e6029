"""retrieval/bigindex.py: the float16 vector file (append, resume after a kill), the exact
reference search, and the IVF-PQ index with its exact re-score from disk."""
from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.bigindex import VECTORS, VECTORS_INFO, BigIndex, Recipe, VectorFile, build, exact_top, recall_at


def clustered(n: int, d: int = 32, seed: int = 0, centres: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(99).standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_vector_file_appends_in_float16_and_resumes_after_a_torn_write(tmp_path):
    x = clustered(1000)
    vf = VectorFile(tmp_path / "v", dim=32)
    vf.append(x[:600])
    vf.append(x[600:])
    assert vf.count == 1000
    np.testing.assert_array_equal(vf.array(), x.astype(np.float16))
    # a kill in the middle of an append: bytes on disk past the recorded count
    with open(tmp_path / "v" / VECTORS, "ab") as f:
        f.write(x[:3].astype(np.float16).tobytes()[:100])
    again = VectorFile(tmp_path / "v")
    assert again.count == 1000 and (tmp_path / "v" / VECTORS).stat().st_size == 1000 * 32 * 2
    again.append(x[:5])
    np.testing.assert_array_equal(again.array()[1000:], x[:5].astype(np.float16))
    assert json.loads((tmp_path / "v" / VECTORS_INFO).read_text())["count"] == 1005
    with pytest.raises(ValueError, match="dim 32"):
        VectorFile(tmp_path / "v", dim=64)
    with pytest.raises(ValueError, match="dim 32"):
        again.append(np.zeros((2, 16)))
    with pytest.raises(FileNotFoundError, match="give dim"):
        VectorFile(tmp_path / "nothing")


def test_the_streamed_exact_search_is_brute_force(tmp_path):
    x = clustered(3000, seed=1)
    vf = VectorFile(tmp_path / "v", dim=32)
    vf.append(x)
    q = clustered(20, seed=2)
    want = np.argsort(-(q @ vf.array().astype(np.float32).T), axis=1, kind="stable")[:, :10]
    got = exact_top(vf, q, 10, batch=700)  # batches that do not divide the rows
    assert recall_at(got, want) == 1.0
    assert recall_at(got[:, ::-1], want) == 1.0 and recall_at(got[:, :5], want[:, :5]) == 1.0
    assert recall_at(np.full_like(want, -1), want) == 0.0


def test_ivfpq_with_the_exact_rescore_finds_the_true_neighbours(tmp_path):
    x = clustered(20_000, seed=3)
    vf = VectorFile(tmp_path / "v", dim=32)
    vf.append(x)
    info = build(vf, tmp_path / "idx", Recipe(nlist=64, pq="PQ16", train_size=12_000, nprobe=16, refine=100))
    assert info["count"] == 20_000 and info["bytes_per_vector_in_ram"] < 32 * 2  # codes + ids, not the vectors
    bi = BigIndex.load(tmp_path / "idx")
    q = clustered(50, seed=4)
    truth = exact_top(vf, q, 10)
    scores, ids = bi.search(q, 10)
    assert recall_at(ids, truth) >= 0.9
    in_memory = BigIndex.load(tmp_path / "idx", mmap=False)   # the memory-mapped lists answer the same
    np.testing.assert_array_equal(in_memory.search(q, 10)[1], ids)
    # the scores are the exact float16 inner products, highest first
    exact = np.einsum("qd,qkd->qk", q, vf.array()[ids].astype(np.float32))
    np.testing.assert_allclose(scores, exact, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)
    bi.set_params(nprobe=1, refine=10)  # fewer lists and no room to re-score: recall drops
    assert recall_at(bi.search(q, 10)[1], truth) < recall_at(ids, truth)
    with pytest.raises(ValueError, match="too few"):
        build(vf, tmp_path / "bad", Recipe(nlist=4096))


# ---- the sharded encoding (retrieval/bulk.py) feeding it -------------------------------------
class _Dying:
    """A stub encoder that fails on its ``die_at``-th call (a worker killed mid-run)."""

    def __init__(self, inner, die_at: int):
        self.inner, self.dim, self.calls, self.die_at = inner, inner.dim, 0, die_at

    def encode_responses(self, texts, **kw):
        self.calls += 1
        if self.calls == self.die_at:
            raise KeyboardInterrupt("killed")
        return self.inner.encode_responses(texts)


def test_ranks_encode_their_shares_resume_after_a_kill_and_read_back_as_one(tmp_path, tiny_shards):
    from conftest import StubEncoder

    from retrieval.bulk import encode_share, reply_rows
    from retrieval.bigindex import open_vectors
    from retrieval.index import collect_responses
    enc = StubEncoder(tmp_path / "m", dim=64)
    whole = encode_share(enc, tiny_shards, tmp_path / "one", rank=0, world=1, chunk=100)
    texts = [r["text"] for r in collect_responses(tiny_shards)[0]]
    assert whole["count"] == len(texts) > 300

    dying = _Dying(enc, die_at=3)   # rank 1 dies in its third chunk, then runs again
    encode_share(enc, tiny_shards, tmp_path / "three", rank=0, world=3, chunk=50)
    with pytest.raises(KeyboardInterrupt):
        encode_share(dying, tiny_shards, tmp_path / "three", rank=1, world=3, chunk=50)
    assert VectorFile(tmp_path / "three" / "rank-1").count == 100   # two chunks kept
    with pytest.raises(ValueError, match="rank 1 is missing or unfinished"):
        open_vectors(tmp_path / "three")
    again = encode_share(enc, tiny_shards, tmp_path / "three", rank=1, world=3, chunk=50)
    assert again["resumed_at"] == 100
    encode_share(enc, tiny_shards, tmp_path / "three", rank=2, world=3, chunk=50)

    vs, one = open_vectors(tmp_path / "three"), open_vectors(tmp_path / "one")
    assert vs.count == one.count == len(texts)
    np.testing.assert_array_equal(vs.array()[np.arange(vs.count)], one.array())
    ids = np.array([len(texts) - 1, 0, len(texts) // 2, len(texts) // 3 + 1])   # across ranks, unsorted
    np.testing.assert_array_equal(vs.array()[ids], one.array()[ids])
    rows = reply_rows(tmp_path / "three")
    assert [r["text"] for r in rows] == texts and [r["id"] for r in rows] == list(range(len(texts)))
    np.testing.assert_array_equal(vs.array()[ids], enc.encode_responses([texts[i] for i in ids]).astype(np.float16))
    with pytest.raises(ValueError, match="rank 3 of world 3"):
        encode_share(enc, tiny_shards, tmp_path / "bad", rank=3, world=3)


def test_the_index_builds_over_the_ranks_and_searches_their_rows(tmp_path):
    from retrieval.bigindex import open_vectors
    x = clustered(12_000, seed=5)
    for r, (lo, hi) in enumerate([(0, 5000), (5000, 12_000)]):
        VectorFile(tmp_path / "v" / f"rank-{r}", dim=32).append(x[lo:hi])
        (tmp_path / "v" / f"rank-{r}" / "rank.json").write_text(json.dumps({"world": 2, "rows": [lo, hi]}))
    from dialogbert.cli import main
    vs = open_vectors(tmp_path / "v")
    assert main(["bigindex", "--vectors", str(tmp_path / "v"), "--out", str(tmp_path / "idx"), "--nlist", "32",
                 "--pq", "PQ16", "--train-size", "12000", "--nprobe", "8", "--refine", "100"]) == 0
    bi = BigIndex.load(tmp_path / "idx")
    assert (bi.nprobe, bi.refine) == (8, 100)
    q = x[[3, 4999, 5000, 11_999]]   # stored vectors: each finds itself first
    scores, ids = bi.search(q, 5)
    assert ids[:, 0].tolist() == [3, 4999, 5000, 11_999]
    assert recall_at(ids, exact_top(vs, q, 5)) >= 0.9


def test_the_encode_command_at_bf16_writes_the_fp32_vectors_within_rounding(tmp_path, tiny_shards):
    """`dialogbert encode --precision bf16`: the same replies, in the same order, each vector within
    bf16 rounding of the fp32 command's (cosine > 0.99), and not merely a copy of them."""
    import torch

    from conftest import save_random_dialogbert
    from dialogbert.cli import main
    from retrieval.bigindex import open_vectors
    from retrieval.bulk import reply_rows
    model = save_random_dialogbert(tmp_path / "m")
    threads = torch.get_num_threads()
    for name, precision in (("fp32", "fp32"), ("bf16", "bf16")):
        assert main(["encode", "--model", str(model), "--shards", str(tiny_shards), "--out", str(tmp_path / name),
                     "--precision", precision]) == 0
    torch.set_num_threads(threads)
    full, half = (np.asarray(open_vectors(tmp_path / n).array(), dtype=np.float32) for n in ("fp32", "bf16"))
    assert full.shape == half.shape and full.shape[0] > 300
    assert [r["text"] for r in reply_rows(tmp_path / "fp32")] == [r["text"] for r in reply_rows(tmp_path / "bf16")]
    cos = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert cos.min() > 0.99 and not np.array_equal(full, half), cos.min()
