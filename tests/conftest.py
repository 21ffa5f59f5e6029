"""Shared fixtures and helpers; test files import the helpers from here (``from conftest import
...``), never from one another.

* `tiny_shards` builds shards straight from the bundled XPersona-ko and ChatbotData samples
  through the schema (not through the preprocessor), so model and retrieval tests do not depend
  on the preprocessor's choices; `save_random_dialogbert` and `copy_tiny_tokenizer` give a model
  and a tokenizer without training one.
* `one_torch_thread` (module scope): torch on one thread while a module's tests run, restored
  after them; `pretrain_tokenizer`, `tiny_pretrain_overrides`, `read_log` and `train_losses` are
  the pretraining tests' run helpers.
* `StubEncoder` and `stub_index`: an index without a model, whose similarities are worked out
  by hand; `DISJOINT_TOPICS` and `topic_pairs`: (question, reply) pairs that share no
  character, so only a trained encoder can match them."""
from __future__ import annotations

import csv
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from preprocess.schema import Conversation, Turn, split_of, write_shard

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _cid(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:16]


def sample_conversations(n_persona: int = 200, n_qa: int = 400) -> list[Conversation]:
    convs = []
    dialogues = json.loads((SAMPLE / "xpersona-ko" / "Ko_persona_split_valid_human_annotated.json").read_text("utf-8"))
    for i, d in enumerate(dialogues[:n_persona]):
        turns = []
        for u, r in d["dialogue"]:
            turns += [Turn("S1", u, [u]), Turn("S2", r, [r])]
        convs.append(Conversation(_cid("xpersona", str(i)), "xpersona", "ko", turns))
    with open(SAMPLE / "chatbotdata-ko" / "ChatbotData.csv", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if i >= n_qa:
                break
            convs.append(Conversation(_cid("chatbotdata", str(i)), "chatbotdata", "ko",
                                      [Turn("S1", row["Q"], [row["Q"]]), Turn("S2", row["A"], [row["A"]])]))
    return convs


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    convs = sample_conversations()
    half = len(convs) // 2
    write_shard(out / "shard-00000.jsonl", convs[:half])
    write_shard(out / "shard-00001.jsonl", convs[half:])
    return out


def save_random_dialogbert(out: Path, hidden: int = 64, layers: int = 2, pretraining: bool = True) -> Path:
    """A randomly initialised DialogBERT (seed 0) with the tiny tokenizer, saved into ``out``: the
    heads too when ``pretraining`` (a checkpoint to fine-tune), else the encoder alone."""
    import torch

    from dialogbert.modeling import DialogBertConfig, DialogBertForPreTraining, DialogBertModel
    from dialogbert.tokenizer import load_tokenizer
    tok = load_tokenizer(copy_tiny_tokenizer(out))
    torch.manual_seed(0)
    cfg = DialogBertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                           intermediate_size=2 * hidden, max_position_embeddings=128, max_turns=8, num_speakers=4,
                           pad_token_id=tok.pad_token_id)
    (DialogBertForPreTraining if pretraining else DialogBertModel)(cfg).save_pretrained(out)
    return out


def copy_tiny_tokenizer(out: Path) -> Path:
    """The tokenizer fixture (tests/fixtures/tiny-tokenizer: WordPiece, 2,000 pieces, trained once
    on ``tiny_shards``' conversations with ``train_tokenizer``) copied into ``out``. A committed
    file, not a fresh training run: tokenizers' WordPiece trainer breaks count ties in hash-map
    order (huggingface/tokenizers#1794), so a retrained vocabulary, and with it every model test's
    curve, changed from run to run. test_tokenizer.py trains tokenizers itself."""
    import shutil
    out = Path(out)
    shutil.copytree(FIXTURES / "tiny-tokenizer", out, dirs_exist_ok=True)
    return out


# ---- torch threads ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for the module's tests (a 2-core CI machine runs two xdist workers: one
    thread each is fastest), the previous count restored after them. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- pretraining runs ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pretrain_tokenizer(tiny_shards, tmp_path_factory) -> Path:
    return copy_tiny_tokenizer(tmp_path_factory.mktemp("pretrain_tokenizer"))


def tiny_pretrain_overrides(shards: Path, tokenizer: Path, out: Path, **extra) -> list[str]:
    """Overrides for a ~0.2M-parameter model on the tiny shards (no config file needed);
    ``extra`` keys spell the dot as ``__`` (``train__max_steps=6``)."""
    values = {
        "run.out": out, "data.shards": shards, "data.tokenizer": tokenizer,
        "data.max_length": 64, "data.batch_size": 16, "data.shuffle_buffer": 256,
        "model.hidden_size": 64, "model.num_hidden_layers": 2, "model.num_attention_heads": 2,
        "model.intermediate_size": 128, "model.max_position_embeddings": 64,
        "train.lr": 2e-3, "train.warmup_steps": 5, "train.log_every": 1, "train.eval_examples": 64,
        "train.num_threads": 1, "train.progress": False, "train.tensorboard": False, "train.plot": False,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


def read_log(run: Path) -> list[dict]:
    """The rows of a pretraining run's log.csv."""
    with open(run / "log.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def train_losses(run: Path) -> dict[int, float]:
    """step -> training loss, from a run's log.csv."""
    return {int(r["step"]): float(r["loss"]) for r in read_log(run) if r["loss"]}


# ---- a model-free index ----------------------------------------------------------------------
class StubEncoder:
    """A normalised hashed bag of the text's character n-grams (``n=1``: its characters, spaces
    left out; ``n=2``: its bigrams, spaces included), so cosine similarity counts shared pieces:
    deterministic, no model, every nearest neighbour worked out by hand. A context is encoded as
    its newest turn."""

    def __init__(self, path, dim: int = 4096, n: int = 1):
        self.path, self.dim, self.n = path, dim, n

    def hash(self):
        from retrieval.encoder import model_hash
        return model_hash(self.path)

    def _vec(self, text):
        v = np.zeros(self.dim, np.float32)
        if self.n == 1:
            pieces = text.replace(" ", "")
        else:
            pieces = [text[i:i + self.n] for i in range(len(text) - self.n + 1)]
        for piece in pieces:
            v[int(hashlib.md5(piece.encode()).hexdigest(), 16) % self.dim] += 1
        return v / max(1e-6, np.linalg.norm(v))

    def encode_responses(self, texts, **kw):
        return np.stack([self._vec(t) for t in texts]) if len(texts) else np.zeros((0, self.dim), np.float32)

    def encode_contexts(self, contexts, **kw):
        return np.stack([self._vec(c[-1][1]) for c in contexts])


def train_ids(prefix: str, n: int) -> list[str]:
    """The first ``n`` conversation ids ``prefix0, prefix1, ...`` that fall in the train split."""
    ids, i = [], 0
    while len(ids) < n:
        if split_of(f"{prefix}{i}", fraction=0.1) == "train":
            ids.append(f"{prefix}{i}")
        i += 1
    return ids


def stub_index(tmp_path: Path, prefix: str, qa, pii_check=lambda t: False):
    """A ResponseIndex (StubEncoder, built into ``tmp_path/idx``) over one train-split
    conversation per (question, answer) in ``qa``, written to ``tmp_path/shards``."""
    from retrieval.index import ResponseFilter, ResponseIndex, build_index
    convs = [Conversation(cid, "test", "ko", [Turn("S1", q), Turn("S2", a)])
             for cid, (q, a) in zip(train_ids(prefix, len(qa)), qa)]
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard(shards / "shard-00000.jsonl", convs)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"stub")
    enc = StubEncoder(model)
    out = build_index(model, shards, tmp_path / "idx", encoder=enc, filt=ResponseFilter(pii_check=pii_check))
    return ResponseIndex.load(out, encoder=enc)


# ---- pairs that share no character -----------------------------------------------------------
# Each topic: the words its questions are made of, and its one reply. No question word or filler
# shares a character with any reply: only training can connect a question with its reply.
DISJOINT_TOPICS = [
    (["비", "우산", "장마", "폭우"], "챙겨 나가요"),
    (["배고파", "밥", "라면", "치킨"], "맛있는 거 드세요"),
    (["졸려", "잠", "피곤해", "밤샘"], "푹 쉬어"),
    (["시험", "공부", "숙제", "성적"], "힘내 잘될 거야"),
    (["여행", "해변", "휴가", "비행기"], "좋은 곳 다녀와"),
    (["이별", "헤어져", "차였어", "그리워"], "잊힐 거예요"),
    (["운동", "헬스", "달리기", "근육"], "꾸준히 하면 돼요"),
    (["커피", "카페", "라떼", "아메리카노"], "한잔 마셔요"),
    (["고양이", "강아지", "멍멍", "산책"], "귀엽겠다"),
    (["선물", "생일", "케이크", "축하"], "행복한 날 보내"),
]
TOPIC_FILLER = ["오늘", "진짜", "너무", "지금", "아"]
assert not any(set("".join(words + TOPIC_FILLER)) & set(reply) for words, reply in DISJOINT_TOPICS)


def topic_question(rng: random.Random, words: list[str]) -> str:
    """Two of a topic's words and a filler word."""
    return " ".join(rng.sample(words, 2) + [rng.choice(TOPIC_FILLER)])


def topic_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (question, reply) pairs, the topics in turn."""
    rng = random.Random(seed)
    topics = [DISJOINT_TOPICS[i % len(DISJOINT_TOPICS)] for i in range(n)]
    return [(topic_question(rng, words), reply) for words, reply in topics]


@pytest.fixture
def recorded(monkeypatch):
    """`dialogbert index` with nothing built: the model load, build_index and the ranker's fit and
    update replaced by recorders of their arguments ({"built": (args, kwargs), "fit": ..., "update": ...})."""
    import retrieval.encoder
    import retrieval.index
    import retrieval.ranker
    calls = {}
    model = object()  # the dialog model index_stage loads once and hands to both
    monkeypatch.setattr(retrieval.encoder.Encoder, "load", classmethod(lambda cls, *a, **k: model))
    monkeypatch.setattr(retrieval.index, "build_index", lambda *a, **k: calls.setdefault("built", (a, k)))
    monkeypatch.setattr(retrieval.ranker, "fit_for_index", lambda *a, **k: calls.setdefault("fit", (a, k)))
    monkeypatch.setattr(retrieval.ranker, "update_for_index", lambda *a, **k: calls.setdefault("update", (a, k)))
    return calls
