"""The tokenizer of the converted e5: XLM-R's SentencePiece unigram vocabulary (pieces, scores,
normalisation map) rebuilt as a ``tokenizers`` Unigram in a ``PreTrainedTokenizerFast``, XLM-R's
specials in BERT's roles. Apart from the weights (dialogbert.e5_file) and the folder writing
(dialogbert.e5): it needs only the vocabulary."""
from __future__ import annotations

import unicodedata
from typing import Iterable

from dialogbert.e5_file import E5FormatError

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
    return wrap_tokenizer(tok, pieces[unk_id], placeholders, model_max_length)


def wrap_tokenizer(tok, unk: str, placeholders: Iterable[str], model_max_length: int):
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
