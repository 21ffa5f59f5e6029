"""The tokenizer keeps Hangul syllables and case, keeps placeholders whole, and reloads right."""
from __future__ import annotations

import itertools
import json

import pytest
from transformers import AutoTokenizer

from dialogbert.tokenizer import SPECIAL_TOKENS, load_tokenizer, never_mask_ids, train_texts, train_tokenizer, wrap
from preprocess.schema import PLACEHOLDERS, Conversation, Turn, split_of, write_shard

ENGLISH = [
    "Hello, how are you today?", "hello there, nice to meet you.", "I like coffee and music.",
    "What do you do for work?", "I work at a bar on weekends.", "Do you have any pets?",
    "My dog likes to play outside.", "That sounds great, thank you!", "Where do you live?",
    "I live in Seoul with my family.", "Hello again, my friend.", "See you tomorrow at the coffee shop.",
]


@pytest.fixture(scope="module")
def english_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("text") / "en.txt"
    p.write_text("\n".join(ENGLISH * 3) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def tok_dir(tiny_shards, english_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(tiny_shards, out, vocab_size=2000, extra_text=[english_file])
    return out


@pytest.fixture(scope="module")
def auto_tok(tok_dir):
    return AutoTokenizer.from_pretrained(str(tok_dir))


def test_saved_files_are_cased_fast_tokenizer(tok_dir):
    assert (tok_dir / "tokenizer.json").is_file() and (tok_dir / "tokenizer_config.json").is_file()
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text("utf-8"))
    assert not cfg.get("do_lower_case", False)
    norm = json.loads((tok_dir / "tokenizer.json").read_text("utf-8"))["normalizer"]
    text = json.dumps(norm)
    assert '"lowercase": false' in text and '"strip_accents": false' in text and "NFC" in text


@pytest.mark.parametrize("loader", ["auto", "load_tokenizer"])
def test_hangul_stays_syllables_after_reload(tok_dir, loader):
    tok = AutoTokenizer.from_pretrained(str(tok_dir)) if loader == "auto" else load_tokenizer(tok_dir)
    pieces = tok.tokenize("안녕하세요")
    joined = "".join(p.removeprefix("##") for p in pieces)
    assert joined == "안녕하세요", pieces  # syllables, not jamo (U+1100..U+11FF)
    assert not any("\u1100" <= ch <= "\u11ff" for ch in joined)
    assert tok.unk_token_id not in tok("안녕하세요")["input_ids"]


def test_case_is_kept(auto_tok):
    assert auto_tok("Hello", add_special_tokens=False)["input_ids"] != auto_tok("hello", add_special_tokens=False)["input_ids"]
    assert auto_tok.decode(auto_tok("Hello World", add_special_tokens=False)["input_ids"]) == "Hello World"


def test_special_tokens_and_template(auto_tok):
    ids = auto_tok("안녕")["input_ids"]
    assert ids[0] == auto_tok.cls_token_id and ids[-1] == auto_tok.sep_token_id
    for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        assert auto_tok.convert_tokens_to_ids(t) == SPECIAL_TOKENS.index(t)
    assert set(never_mask_ids(auto_tok)) >= {auto_tok.convert_tokens_to_ids(p) for p in PLACEHOLDERS}


def test_placeholders_are_single_tokens_and_round_trip(auto_tok):
    for p in PLACEHOLDERS:
        line = f"제 번호는{p}이고 {p}로 연락주세요"
        pieces = auto_tok.tokenize(line)
        assert pieces.count(p) == 2, pieces
        ids = auto_tok(line, add_special_tokens=False)["input_ids"]
        assert ids.count(auto_tok.convert_tokens_to_ids(p)) == 2
        back = auto_tok.decode(ids)
        assert back.count(p) == 2
        assert back.replace(" ", "") == line.replace(" ", "")


@pytest.mark.parametrize("line", [
    "안녕하세요. 오늘 날씨가 좋네요!", "나는 공포영화를 더 좋아해. 너는 어때?",
    "Hello, how are you today?", "I live in Seoul with my family.",
])
def test_decode_encode_round_trip(auto_tok, line):
    ids = auto_tok(line, add_special_tokens=False)["input_ids"]
    assert auto_tok.unk_token_id not in ids
    back = auto_tok.decode(ids)
    assert back.split() == line.split() or back.replace(" ", "") == line.replace(" ", "")
    assert auto_tok.decode(auto_tok(line)["input_ids"], skip_special_tokens=True).replace(" ", "") == line.replace(" ", "")


def test_mixed_sentence_has_low_unk_rate(auto_tok):
    line = "오늘 coffee 마시면서 music 들었어요. 너는 weekend에 뭐 해? Hello 친구!"
    ids = auto_tok(line, add_special_tokens=False)["input_ids"]
    assert ids.count(auto_tok.unk_token_id) / len(ids) < 0.05


def _conv_in(split: str, tag: str, text: str) -> Conversation:
    i = 0
    while split_of(f"{tag}-{i}", source="xpersona") != split:
        i += 1
    return Conversation(f"{tag}-{i}", "xpersona", "ko", [Turn("S1", text, [text]), Turn("S2", text, [text])])


def test_training_reads_train_split_only(tmp_path):
    train = [_conv_in("train", f"tr{k}", "가나다라 trainword 마바사") for k in range(5)]
    test = [_conv_in("test", f"te{k}", "zebrafish 아자차카 zebrafish") for k in range(5)]
    write_shard(tmp_path / "shard-00000.jsonl", train + test)
    texts = [t for chunk in train_texts(tmp_path) for t in chunk]
    assert texts and all("zebrafish" not in t for t in texts)
    tok = train_tokenizer(tmp_path, tmp_path / "tok", vocab_size=200, min_frequency=1)
    vocab = tok.get_vocab()
    assert "trainword" in vocab and "zebrafish" not in vocab and "z" not in vocab and "아" not in vocab
    assert load_tokenizer(tmp_path / "tok").get_vocab() == vocab


def test_training_text_is_streamed(tiny_shards):
    chunks = train_texts(tiny_shards, batch=100)
    assert iter(chunks) is chunks  # a generator, never the whole corpus as one list
    assert all(len(c) < 200 for c in itertools.islice(chunks, 5))


def test_load_tokenizer_rejects_a_lowercasing_tokenizer(tok_dir, tmp_path):
    from tokenizers import Tokenizer, normalizers

    bad = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    bad.normalizer = normalizers.BertNormalizer(lowercase=True)  # strips accents: Hangul -> jamo
    wrap(bad).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="jamo"):
        load_tokenizer(tmp_path)
