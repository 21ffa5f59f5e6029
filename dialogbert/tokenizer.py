"""The DialogBERT tokenizer: a cased WordPiece trained on the shards' train split.

Cased and accent-preserving on purpose: BERT's lowercasing strips accents, and accent stripping
decomposes Hangul syllables into jamo (shared/NOTES.md). The normalizer only cleans control
characters, spaces out CJK ideographs and applies NFC, so '안녕하세요' stays five syllables.

Special tokens: [PAD] [UNK] [CLS] [SEP] [MASK] plus every anonymizer placeholder
(preprocess.schema.PLACEHOLDERS) as one special token each: never split, never masked.

Saved as a plain ``PreTrainedTokenizerFast`` (tokenizer.json + tokenizer_config.json), which
reloads with ``AutoTokenizer.from_pretrained(folder)`` or :func:`load_tokenizer`. Never wrap it
in ``BertTokenizerFast``: that saves ``do_lower_case: true`` and the reload turns Hangul to [UNK].

Training is not bit-for-bit reproducible: tokenizers' WordPiece trainer gives continuing-subword
tokens their ids in hash-map order and breaks count ties by id (huggingface/tokenizers#1794,
measured here: three runs on the same shards gave three vocabularies). Keep the trained folder:
a run resumed or repeated must load it, not retrain it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from preprocess.schema import PLACEHOLDERS, read_shards

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
CORE_SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, CLS, SEP, MASK)
SPECIAL_TOKENS: tuple[str, ...] = CORE_SPECIAL_TOKENS + tuple(PLACEHOLDERS)


def _normalizer():
    return normalizers.Sequence([
        normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                   strip_accents=False, lowercase=False),
        normalizers.NFC(),
    ])


def build_tokenizer() -> Tokenizer:
    """An untrained cased WordPiece with our normalizer, pre-tokenizer and decoder."""
    tok = Tokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix="##"))
    tok.normalizer = _normalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return tok


def train_texts(shards: str | os.PathLike, extra_text: Iterable[str | os.PathLike] = (),
                batch: int = 1000) -> Iterator[list[str]]:
    """Stream training text in small lists: the TRAIN split's turn texts (message by message),
    then the lines of each extra text file. Never holds the corpus in memory."""
    buf: list[str] = []
    for conv in read_shards(shards, split="train"):
        for turn in conv.turns:
            buf.extend(m for m in turn.text.split("\n") if m.strip())
        if len(buf) >= batch:
            yield buf
            buf = []
    for path in extra_text:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    buf.append(line.rstrip("\n"))
                if len(buf) >= batch:
                    yield buf
                    buf = []
    if buf:
        yield buf


def wrap(tok: Tokenizer, model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Wrap a trained ``tokenizers.Tokenizer`` as a transformers tokenizer with our specials."""
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    if cls_id is None or sep_id is None:
        raise ValueError("tokenizer lacks [CLS]/[SEP]; build it with train_tokenizer")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=UNK, pad_token=PAD, cls_token=CLS, sep_token=SEP,
        mask_token=MASK, extra_special_tokens=list(PLACEHOLDERS), model_max_length=model_max_length,
        clean_up_tokenization_spaces=False)


def train_tokenizer(shards: str | os.PathLike, out: str | os.PathLike | None, vocab_size: int = 16000,
                    extra_text: Iterable[str | os.PathLike] = (), min_frequency: int = 2,
                    limit_alphabet: int | None = None) -> PreTrainedTokenizerFast:
    """Train on the shards' train split (+ optional plain-text files, one text a line) and save
    to ``out`` (skipped when ``out`` is None). ``limit_alphabet`` caps the initial characters
    (None keeps every character seen, which keeps rare Hangul syllables out of [UNK])."""
    tok = build_tokenizer()
    opts = {} if limit_alphabet is None else {"limit_alphabet": limit_alphabet}
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix="##", show_progress=False, **opts)
    tok.train_from_iterator(train_texts(shards, list(extra_text)), trainer=trainer)
    fast = wrap(tok)
    if out is not None:
        save_tokenizer(fast, out)
    return fast


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out: str | os.PathLike) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    return out


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer folder (or a checkpoint folder that holds one) and check that it
    kept its case and its placeholders."""
    p = Path(path)
    if not (p / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{p}: no tokenizer.json (train one with `dialogbert tokenizer` "
                                f"or pass the folder that holds tokenizer.json)")
    tok = AutoTokenizer.from_pretrained(str(p))
    check_tokenizer(tok, where=str(p))
    return tok


def adopt_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """The tokenizer of an outside checkpoint we continue from (``model.init_from``).

    Our own tokenizers must pass :func:`check_tokenizer`; an outside BERT's is taken as it is, so
    its vocabulary keeps matching its embeddings, with two repairs: the placeholders it lacks, and
    the specials whose role it does not fill (XLM-R's ``<s>`` is a [CLS]), are added as special tokens (the embedding matrix grows by those rows, see
    model_init.copy_compatible_weights), and a lowercasing one is accepted with a warning, since it is
    fine for English but turns Korean into jamo/[UNK]."""
    import warnings
    p = Path(path)
    if not (p / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{p}: no tokenizer.json to continue from")
    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    if hangul_problem(tok) is not None:
        warnings.warn(f"{p}: its tokenizer lowercases and strips accents: fine for English, but Korean "
                      f"turns into jamo/[UNK]; for Korean, continue from a cased model or train ours",
                      stacklevel=2)
    roles = {PAD: tok.pad_token, CLS: tok.cls_token, SEP: tok.sep_token, MASK: tok.mask_token}
    missing = [t for t in SPECIAL_TOKENS if t != UNK and roles.get(t) is None
               and tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)]
    if missing:
        tok.add_tokens(missing, special_tokens=True)
    return tok


def hangul_problem(tok) -> str | None:
    """Why the tokenizer would destroy Hangul (lowercasing or accent stripping), with the fix; None if it would not."""
    if getattr(tok, "do_lower_case", False):
        return ("saved with do_lower_case=True, which turns Hangul into jamo/[UNK]; "
                "re-save it as a PreTrainedTokenizerFast (dialogbert.tokenizer.wrap)")
    backend = getattr(tok, "backend_tokenizer", None)
    norm = backend.normalizer if backend is not None else None
    probe = norm.normalize_str("안녕 Hello") if norm is not None else "안녕 Hello"
    if probe != "안녕 Hello":
        return (f"the normalizer turns '안녕 Hello' into {probe!r} (lowercasing/accent stripping decomposes "
                f"Hangul into jamo); retrain with dialogbert.tokenizer.train_tokenizer")
    return None


def check_tokenizer(tok, where: str = "tokenizer") -> None:
    """Raise if the tokenizer would destroy Hangul or split placeholders."""
    problem = hangul_problem(tok)
    if problem is not None:
        raise ValueError(f"{where}: {problem}")
    missing = [p for p in PLACEHOLDERS if tok.convert_tokens_to_ids(p) in (None, tok.unk_token_id)]
    if missing:
        raise ValueError(f"{where}: placeholders {missing} are not tokens; retrain with "
                         f"dialogbert.tokenizer.train_tokenizer")


def never_mask_ids(tokenizer) -> list[int]:
    """Ids that masking must never touch nor produce: [PAD] [UNK] [CLS] [SEP] [MASK] + placeholders."""
    ids = set(tokenizer.all_special_ids)
    for t in SPECIAL_TOKENS:
        i = tokenizer.convert_tokens_to_ids(t)
        if i is not None:
            ids.add(i)
    return sorted(ids)
