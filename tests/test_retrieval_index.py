"""Index round trip, the mismatch errors, `add`, and the filters (PII never enters)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import StubEncoder
from preprocess.schema import Conversation, Turn, split_of, write_shard
from retrieval.index import IndexMismatchError, ResponseFilter, ResponseIndex, build_index, collect_responses


def bigram_encoder(path, dim: int = 32):
    """Hashed bag of character bigrams: deterministic, no model, known nearest neighbours."""
    return StubEncoder(path, dim=dim, n=2)


def fake_pii(text):
    return "010-" in text


def _train_convs(prefix, replies):
    """Conversations in the train split, each [question, reply]."""
    out, i = [], 0
    for r in replies:
        while split_of(f"{prefix}{i}", fraction=0.1) != "train":
            i += 1
        out.append(Conversation(f"{prefix}{i}", "test", "ko", [Turn("S1", "질문 " + r), Turn("S2", r)]))
        i += 1
    return out


REPLIES = ["좋은 아침이에요", "점심 뭐 먹었어?", "내일 비가 온대요", "주말에 영화 보자",
           "제 번호는 010-1234-5678 이에요", "[NAME] 씨한테 물어봐", "ㅋ", "좋은 아침이에요"]


@pytest.fixture()
def setup(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard(shards / "shard-00000.jsonl", _train_convs("c", REPLIES))
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights-v1")
    return shards, model, bigram_encoder(model)


def test_filters_keep_pii_and_placeholders_out(setup):
    shards, _, _ = setup
    rows, dropped = collect_responses(shards, ResponseFilter(pii_check=fake_pii))
    texts = [r["text"] for r in rows]
    assert not any("010-" in t for t in texts) and not any("[NAME]" in t for t in texts)
    assert texts.count("좋은 아침이에요") == 1
    assert dropped == {"duplicate": 1, "pii": 1, "placeholder": 1, "too_short": 1}
    rows, _ = collect_responses(shards, ResponseFilter(pii_check=fake_pii, allow_placeholders=True))
    assert any("[NAME]" in r["text"] for r in rows) and not any("010-" in r["text"] for r in rows)


def test_real_pii_guard_blocks_a_phone_number(setup):
    from preprocess.anonymize import contains_pii
    assert contains_pii("제 번호는 010-1234-5678 이에요")
    shards, _, _ = setup
    rows, dropped = collect_responses(shards)
    assert not any("010-" in r["text"] for r in rows) and dropped.get("pii", 0) >= 1


@pytest.mark.parametrize("factory", ["Flat", "HNSW8", "IVF2,Flat"])
def test_round_trip_search_and_sidecar(setup, tmp_path, factory):
    shards, model, enc = setup
    out = build_index(model, shards, tmp_path / "idx", factory=factory, encoder=enc,
                      filt=ResponseFilter(pii_check=fake_pii))
    info = json.loads((out / "index_info.json").read_text())
    assert info["count"] == 4 and info["dimension"] == 32 and info["factory"] == factory
    assert len(info["model_sha256"]) == 64 and info["created_with"]["faiss"]
    idx = ResponseIndex.load(out, encoder=enc)
    (hits,) = idx.search([[("S1", "내일 비가 와?")]], k=2)
    assert hits[0][1]["text"] == "내일 비가 온대요"
    rows = [json.loads(x) for x in (out / "responses.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(4))


def test_mismatch_errors_say_how_to_fix(setup, tmp_path):
    shards, model, enc = setup
    out = build_index(model, shards, tmp_path / "idx", encoder=enc, filt=ResponseFilter(pii_check=fake_pii))
    with pytest.raises(IndexMismatchError, match="dimension 32.*produces 16.*dialogbert index"):
        ResponseIndex.load(out, encoder=bigram_encoder(model, dim=16))
    (model / "model.safetensors").write_bytes(b"weights-v2")
    with pytest.raises(IndexMismatchError, match="sha256.*different or retrained model.*dialogbert index --model"):
        ResponseIndex.load(out, encoder=enc)
    with pytest.raises(FileNotFoundError, match="dialogbert index"):
        ResponseIndex.load(tmp_path / "nowhere", encoder=enc)


def test_add_appends_without_rebuilding(setup, tmp_path):
    shards, model, enc = setup
    filt = ResponseFilter(pii_check=fake_pii)
    out = build_index(model, shards, tmp_path / "idx", encoder=enc, filt=filt)
    more = tmp_path / "more"
    more.mkdir()
    write_shard(more / "shard-00000.jsonl", _train_convs("d", ["새로 들어온 답장", "점심 뭐 먹었어?", "010-9999-0000"]))
    build_index(model, more, out, add=True, encoder=enc, filt=filt)
    idx = ResponseIndex.load(out, encoder=enc)
    assert len(idx) == 5 and idx.info["count"] == 5 and idx.index.ntotal == 5
    assert idx.texts[-1] == "새로 들어온 답장" and idx.rows[-1]["id"] == 4
    assert len(idx.info["shards"]) == 2
    (hits,) = idx.search([[("S1", "새로 들어온 답장")]], k=1)
    assert hits[0][1]["text"] == "새로 들어온 답장"
    # the context memory grew with it: 5 contexts of stored replies before (4 replies, one twice),
    # 2 more now (the PII reply stays out); the repeated reply points at its first row
    assert idx.memory.ntotal == idx.info["memory"] == 7 == len(idx.memory_rows)
    assert list(idx.memory_rows[-2:]) == [4, idx.texts.index("점심 뭐 먹었어?")]
    D, J = idx.neighbours(enc.encode_contexts([[("S1", "질문 새로 들어온 답장")]]), 1)
    assert idx.texts[idx.memory_rows[J[0, 0]]] == "새로 들어온 답장"


def test_memory_inconsistency_is_refused(setup, tmp_path):
    shards, model, enc = setup
    out = build_index(model, shards, tmp_path / "idx", encoder=enc, filt=ResponseFilter(pii_check=fake_pii))
    lines = (out / "memory.jsonl").read_text().splitlines()
    (out / "memory.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(IndexMismatchError, match="memory entries.*rebuild it"):
        ResponseIndex.load(out, encoder=enc)
    out2 = build_index(model, shards, tmp_path / "idx2", encoder=enc, filt=ResponseFilter(pii_check=fake_pii),
                       memory=False)
    idx = ResponseIndex.load(out2, encoder=enc)
    assert idx.memory is None and not (out2 / "memory.index").exists()
    with pytest.raises(ValueError, match="no context memory"):
        idx.neighbours(np.zeros((1, 32), np.float32), 1)


def test_ivf_with_too_few_vectors_says_what_to_use(setup, tmp_path):
    shards, model, enc = setup
    with pytest.raises(ValueError, match="use 'Flat'"):
        build_index(model, shards, tmp_path / "idx", factory="IVF64,Flat", encoder=enc,
                    filt=ResponseFilter(pii_check=fake_pii))


def test_an_index_without_the_context_memory(setup, tmp_path):
    """index.memory=false: replies only; a rebuild over a folder with a memory removes it, and the
    ranker's neighbour features are then unavailable (nothing to vote with), the others are not."""
    from retrieval.ranker import FeatureScorer
    shards, model, enc = setup
    out = build_index(model, shards, tmp_path / "idx", encoder=enc, filt=ResponseFilter(pii_check=fake_pii))
    assert (out / "memory.index").exists() and ResponseIndex.load(out, encoder=enc).memory is not None
    build_index(model, shards, out, encoder=enc, filt=ResponseFilter(pii_check=fake_pii), memory=False)
    info = json.loads((out / "index_info.json").read_text())
    assert "memory" not in info and info["count"] == 4
    assert not (out / "memory.index").exists() and not (out / "memory.jsonl").exists()
    idx = ResponseIndex.load(out, encoder=enc)
    assert idx.memory is None and idx.memory_texts == []
    (hits,) = idx.search([[("S1", "내일 비가 와?")]], k=1)
    assert hits[0][1]["text"] == "내일 비가 온대요"
    assert FeatureScorer.for_index(idx).available == ["dual", "lexical", "echo"]
