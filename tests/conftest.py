"""Shared fixtures. `tiny_shards` builds shards straight from the bundled XPersona-ko and
ChatbotData samples through the schema (not through the preprocessor), so model and retrieval
tests do not depend on the preprocessor's choices."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from preprocess.schema import Conversation, Turn, write_shard

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"


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
