"""The chat service over a bigindex (retrieval/bigserve.py): the reply rows read back by id from
the ranks' files, the search equal to exact search over every stored vector, the service's
answers and /api/info from it, and a model of another size refused."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from conftest import save_random_dialogbert

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def big(tmp_path_factory, tiny_shards):
    """A random tiny DialogBERT, the tiny shards' replies encoded by it in two ranks, and an
    IVF-PQ bigindex over them whose refinement re-scores every vector (so search is exact)."""
    from retrieval.bigindex import Recipe, build, open_vectors
    from retrieval.bulk import encode_share
    from retrieval.encoder import Encoder
    tmp = tmp_path_factory.mktemp("big")
    model = save_random_dialogbert(tmp / "model", pretraining=False)
    enc = Encoder.load(model)
    for rank in (0, 1):
        encode_share(enc, tiny_shards, tmp / "vectors", rank=rank, world=2, chunk=128)
    vs = open_vectors(tmp / "vectors")
    build(vs, tmp / "idx", Recipe(nlist=4, pq="PQ8x4", train_size=vs.count, nprobe=4, refine=vs.count))
    return tmp, enc, vs


def test_reply_rows_are_read_back_by_id_across_ranks_and_the_offsets_are_kept(big):
    from retrieval.bigserve import OFFSETS, ReplyRows
    from retrieval.bulk import reply_rows
    tmp, _, vs = big
    rows = ReplyRows(tmp / "vectors")
    every = reply_rows(tmp / "vectors")
    assert len(rows) == len(every) == vs.count > 300
    for i in (0, len(every) // 2 - 1, len(every) // 2, len(every) - 1):  # both ranks, and their edges
        assert rows[i] == every[i] and rows[i]["id"] == i
    with pytest.raises(IndexError):
        rows[len(every)]
    table = tmp / "vectors" / "rank-1" / OFFSETS
    assert table.is_file()
    stamp = table.stat().st_mtime_ns
    assert ReplyRows(tmp / "vectors")[len(every) - 1] == every[-1]  # the next start reads the table
    assert table.stat().st_mtime_ns == stamp


def test_the_retriever_gives_the_exact_top_replies_of_the_dialog_model(big):
    from retrieval.bigindex import exact_top
    from retrieval.bigserve import BigRetriever
    from retrieval.bulk import reply_rows
    tmp, enc, vs = big
    every = reply_rows(tmp / "vectors")
    r = BigRetriever.load(tmp / "idx")  # the model recorded by the encoding
    assert r.encoder.path.resolve() == (tmp / "model").resolve()
    contexts = [[("S1", "오늘 비 온대")], [("S1", "배고파"), ("S2", "뭐 먹을래?"), ("S1", "라면")]]
    found = r.search(contexts, k=5)
    truth = exact_top(vs, enc.encode_contexts(contexts), k=5)
    for got, ids in zip(found, truth):
        assert [row["text"] for _, row in got] == [every[i]["text"] for i in ids]
        assert all(a >= b for (a, _), (b, _) in zip(got, got[1:]))


def test_the_chat_service_answers_from_a_bigindex(big):
    from bot.app import create_app
    from retrieval.bulk import reply_rows
    tmp, _, _ = big
    texts = {row["text"] for row in reply_rows(tmp / "vectors")}
    client = create_app({"INDEX_DIR": str(tmp / "idx"), "RATE_LIMIT": "", "RELOAD_SECONDS": 0}).test_client()
    res = client.post("/api/chat", json={"message": "오늘 뭐 했어?"})
    assert res.status_code == 200 and res.get_json()["reply"] in texts
    info = client.get("/api/info").get_json()
    assert info["index"]["size"] == len(texts) and info["index"]["factory"] == "IVF4,PQ8x4"
    assert info["index"]["dimension"] == 64 and info["model"]["name"] == "model"
    raw = (tmp / "idx" / "bigindex.json").read_bytes()
    assert info["index"]["info_sha256"] == hashlib.sha256(raw).hexdigest()
    assert str(tmp) not in json.dumps(info)  # names, never paths
    assert client.get("/healthz").status_code == 200


def test_a_model_of_another_size_or_hash_is_refused(big, tmp_path):
    from retrieval.bigserve import BigRetriever
    from retrieval.index import IndexMismatchError
    tmp, _, _ = big
    other = save_random_dialogbert(tmp_path / "other", hidden=32, pretraining=False)
    with pytest.raises(IndexMismatchError, match="dimension 64"):
        BigRetriever.load(tmp / "idx", other)
    import torch

    from dialogbert.modeling import DialogBertModel
    same_size = save_random_dialogbert(tmp_path / "retrained", pretraining=False)
    m = DialogBertModel.from_pretrained(same_size)
    with torch.no_grad():
        m.turn_embeddings.weight.add_(0.01)  # retrained a little: the same shape, other weights
    m.save_pretrained(same_size)
    with pytest.raises(IndexMismatchError, match="sha256"):
        BigRetriever.load(tmp / "idx", same_size)
