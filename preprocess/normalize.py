"""Text normalization for chat messages: small ``str -> str`` functions, no state.

    to_one_line(text)        NFC, every line break / tab / odd space -> " ", control and
                             zero-width characters removed, spaces collapsed, stripped
    normalize_repeats(text)  soynlp's rules: split emoticon syllables ("ㅋㅋ쿠ㅜㅜ" -> "ㅋㅋㅋㅜㅜㅜ"),
                             then a letter repeated 4+ times -> 2 ("ㅋㅋㅋㅋㅋ" -> "ㅋㅋ")
    normalize(text)          both, in that order (the pipeline anonymizes in between)

Why not call soynlp 0.0.493 directly: measured here, its ``repeat_normalize`` collapses digits
(``010-1111-1111`` -> ``010-11-11``, ``1000000원`` -> ``100원``) and its ``emoticon_normalize``
drops the syllable next to a jamo run (``진짜ㅋㅋㅋ`` -> ``진ㅋㅋㅋ``, ``ㅎㅎㅎ웃겨`` -> ``ㅎㅎ겨``).
The rules below are soynlp's, with digits left alone and nothing dropped; tests/test_normalize.py
checks that they agree with soynlp wherever soynlp is right.
"""
from __future__ import annotations

import re
import unicodedata

NUM_REPEATS = 2

# Line and paragraph separators, tabs, NBSP and other Unicode spaces.
_SPACES = re.compile(r"[\s\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")
# C0/C1 controls (the line breaks are spaces by now), zero-width characters, BOM, soft hyphen.
_INVISIBLE = re.compile(r"[\u0000-\u0008\u000e-\u001f\u007f-\u009f\u00ad\u200b-\u200d\u2060\ufeff]")
# A letter (not a digit, not "_") repeated 4+ times: soynlp's `(\w)\1{3,}` minus the digits.
_REPEAT = re.compile(r"([^\W\d_])\1{3,}")
# Any character 4 times in a row: a necessary condition for _REPEAT, and 3x cheaper to search.
_FOUR = re.compile(r"(.)\1\1\1", re.S)
_JAMO = re.compile(r"[\u3131-\u3163]")

_SBASE, _SEND = 0xAC00, 0xD7A3
_CHO = "ㄱㄲㄴㄷㄸㄹㅁㅂㅃㅅㅆㅇㅈㅉㅊㅋㅌㅍㅎ"
_JUNG = "ㅏㅐㅑㅒㅓㅔㅕㅖㅗㅘㅙㅚㅛㅜㅝㅞㅟㅠㅡㅢㅣ"
_JONG = " ㄱㄲㄳㄴㄵㄶㄷㄹㄺㄻㄼㄽㄾㄿㅀㅁㅂㅄㅅㅆㅇㅈㅊㅋㅌㅍㅎ"


def to_one_line(text: str) -> str:
    """NFC (never NFD: tokenizers see syllables), one line, single spaces, stripped."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    if text.isprintable():
        # Fast path, same result: every character _INVISIBLE removes and every _SPACES character
        # but " " is non-printable (Cc, Cf, Zs, Zl, Zp), so only runs of " " are left to collapse.
        if "  " in text:
            text = _SPACES.sub(" ", text)
        return text.strip()
    text = _INVISIBLE.sub("", text)
    return _SPACES.sub(" ", text).strip()


def _decompose(c: str) -> tuple[str, str, str] | None:
    o = ord(c)
    if not _SBASE <= o <= _SEND:
        return None
    o -= _SBASE
    return _CHO[o // 588], _JUNG[(o % 588) // 28], _JONG[o % 28]


def _compose(cho: str, jung: str) -> str:
    return chr(_SBASE + _CHO.index(cho) * 588 + _JUNG.index(jung) * 28)


# A syllable glued to a jamo (before or after it): the only places split_emoticons looks at.
_GLUED = re.compile(r"[\uac00-\ud7a3](?=[\u3131-\u3163])|(?<=[\u3131-\u314e])[\uac00-\ud7a3]")


def split_emoticons(text: str) -> str:
    """soynlp's emoticon rule without its data loss: a syllable glued to a jamo run is split
    when it spells the run (``ㅋㅋ쿠ㅜㅜ`` -> ``ㅋㅋㅋㅜㅜㅜ``, ``갘ㅋㅋ`` -> ``가ㅋㅋㅋ``); any other
    syllable stays as it is (``진짜ㅋㅋ`` stays)."""
    if not _JAMO.search(text):
        return text

    def fix(m: re.Match) -> str:
        c = m.group()
        i = m.start()
        cho, jung, jong = _decompose(c)
        prev = text[i - 1] if i > 0 else ""
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if jong == " " and prev == cho and (nxt == jung or not nxt or _decompose(nxt) is None and not nxt.isalpha()):
            return cho + jung                   # ㅋ쿠ㅜ -> ㅋㅋㅜㅜ, ㅋㅋ쿠 -> ㅋㅋㅋㅜ
        if jong != " " and nxt == jong and jong in _CHO:
            return _compose(cho, jung) + jong    # 갘ㅋ -> 가ㅋㅋ
        return c

    return _GLUED.sub(fix, text)


def _twice(m: re.Match) -> str:
    return m.group(1) * 2


def normalize_repeats(text: str, num_repeats: int = NUM_REPEATS) -> str:
    text = split_emoticons(text)
    if num_repeats > 0 and _FOUR.search(text):     # no 4 equal characters in a row: nothing to do
        text = _REPEAT.sub(_twice if num_repeats == 2 else (lambda m: m.group(1) * num_repeats), text)
    return text


def normalize(text: str) -> str:
    return normalize_repeats(to_one_line(text))
