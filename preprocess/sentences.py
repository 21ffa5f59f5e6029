"""Sentence splitting of turns.

A turn's messages are sentence boundaries already ("\\n" between them). Backends:

- "rules" (the default): punctuation rules in this module, no kss import. A message is cut after
  sentence-final punctuation (``.``, ``!``, ``?``, runs like ``?!`` or ``...``) followed by a space
  (or directly by an opening bracket, an emoji or jamo: ``좋아!ㅋㅋ``), unless the punctuation
  closes a number (``25. You``), an abbreviation or initial (``Mr. Kim``, ``J. K.``, ``U.S.``), or
  sits inside quotes or brackets closed later in the message. What follows the punctuation and is
  not a word stays with its sentence: spaces, more punctuation, closing quotes and brackets, emoji,
  emoticons (``:)``, ``^^``) and jamo runs (``좋아! ㅋㅋ`` / ``내일 봐``). A message without
  ``.!?`` is one sentence. These are the rules of kss's ``punct`` backend (which is
  character-based: it has no morphology either), re-implemented; agreement with it on the bundled
  corpora is measured in docs/preprocess.md (``bench/preprocess.py --sentence-agreement``).
- "fast", "punct", "pecab": kss 6.0.6, imported lazily (7-12 s and ~340 MB): kss only sees a
  message that is long (> ``LONG_MESSAGE`` characters) or has sentence punctuation followed by
  more text inside; every other message is one sentence as it is.
- "none": each message is one sentence.

Measurements and the choice of default: docs/preprocess.md.
"""
from __future__ import annotations

import contextlib
import io
import re
import unicodedata
import warnings

BACKENDS = ("rules", "fast", "punct", "pecab", "none")
KSS_BACKENDS = ("fast", "punct", "pecab")
DEFAULT_BACKEND = "rules"
LONG_MESSAGE = 60   # characters; longer messages go to kss even without punctuation inside

# Sentence-final punctuation (optionally closed by quotes/brackets) with more text after it.
_INNER_PUNCT = re.compile(r"[.!?。？！…][\"'”’)\]]*\s+\S")

# ---------------------------------------------------------------------------- the "rules" backend
# A run of sentence-final punctuation followed by what may start the next sentence: a space, an
# opening bracket, jamo or a symbol/emoji (a superset of _is_emoji; checked again in Python). One
# C-level search decides most messages ("먹을래?", "3.5", "ok!!"): no candidate, one sentence.
_SF_RUN = re.compile("[.!?]+(?=[\\s([{<（［〔【｛「『〈《\u3131-\u3163^©®\u2000-\u2bff\u3030\u303d\u3297\u3299"
                     "\U0001F000-\U0001FAFF])")
_QUOTE_OR_BRACKET = re.compile("[\"'″“‘([{<（［〔【｛「『〈《]")
_WORD = re.compile("[^\\W_\u3131-\u3163]")     # a letter, syllable or digit; not jamo
_SPACE = frozenset(" \t\n\r\f\v\u200b\u200c\u2060\ufeff")
_OPEN = "([{<（［〔【｛「『〈《"
_CLOSE = ")]}>）］〕】｝」』〉》"
_PAIRS = dict(zip(_OPEN, _CLOSE)) | {"“": "”", "‘": "’"}
_JAMO = frozenset(chr(c) for c in range(0x3131, 0x3164))    # ㄱ..ㅣ: ㅋㅋ, ㅎㅎ, ㅠㅠ, ㅇㅋ
# Text emoticons that belong to the sentence before them ("Hi! :D how are you").
_EMOTICON = re.compile(r"(?:[:;=8xX][-']?[()DPpOo3\]\[/|*]+|[(][:;]|<3|\^\^+|\^_*\^|[TㅠㅜQ][_.]?[TㅠㅜQ])(?=\s|$)")
# Abbreviations whose "." ends no sentence (a word of its own before the "."); single capital
# letters (initials, "plan A.") and single jamo are handled apart.
_ABBREV = frozenset(
    w for a in ("mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "no", "vol", "vols", "p", "pp",
                "ed", "eds", "al", "dept", "capt", "co", "mt", "rev", "fig", "approx", "viz")
    for w in (a, a.capitalize(), a.upper()))
_UNIT = re.compile(r"\d+[항조호절목권쪽장]$")
# Korean continuations: after "!" or "." these make the punctuation a mid-sentence one (kss's list)
_CONTINUES = ("시피", "거나", "의 ", "에서", "에선", "에는", "에도 ", "라서", "라는", "라도 ", "라던", "라지만", "라고",
              "라건", "라거나", "라며", "라면서", "하여서", "하여도", "하였", "하고는 ", "하고서 ", "하곤 ", "하다는",
              "하는데.", "하며", "할텐데")


def _is_emoji(ch: str) -> bool:
    o = ord(ch)
    return (0x1F000 <= o < 0x1FB00 or ch in "^©®\u3030\u303d\u3297\u3299\ufe0f\u200d"
            or (0x2000 <= o < 0x2C00 and unicodedata.category(ch) == "So"))


def _trails(ch: str) -> bool:
    """What stays with a sentence after its final punctuation: spaces, more punctuation, closing
    brackets and quotes, emoji and jamo (`좋아! ㅋㅋ`, `진짜?ㅠㅠ`, `와!^^`)."""
    return ch in _SPACE or ch in ".!?…~" or ch in _CLOSE or ch in "’”" or ch in _JAMO or _is_emoji(ch)


def _prev_nonspace(m: str, i: int) -> int:
    """Index of the last non-space character before index i, or -1."""
    i -= 1
    while i >= 0 and m[i] in _SPACE:
        i -= 1
    return i


def _next_nonspace(m: str, i: int) -> int:
    """Index of the first non-space character at or after index i, or len(m)."""
    n = len(m)
    while i < n and m[i] in _SPACE:
        i += 1
    return i


def _ends_sentence(m: str, s: int, e: int) -> bool:
    """Does the punctuation run m[s:e] (followed by more text) end a sentence?"""
    b = _prev_nonspace(m, s)
    if b < 0:
        return True                           # "?? 좋아": punctuation alone starts the message
    if m[b].isnumeric():
        return False                          # "25. You", "1. 2. 3.", "3! 와"
    # initials and dotted abbreviations: "U.S. It", "e.g. apples", "J. K. Rowling", "좋아. 응. 그래"
    last = e - 1
    lb = _prev_nonspace(m, last)
    if lb >= 0 and m[lb] != "." and (pb := _prev_nonspace(m, lb)) >= 0 and m[pb] == ".":
        return False
    a = _next_nonspace(m, e)
    if a < len(m) and m[a] != "." and (na := _next_nonspace(m, a + 1)) < len(m) and m[na] == ".":
        return False
    if e - s == 1 and m[s] == ".":
        word = m[m.rfind(" ", 0, s) + 1:s]
        if word in _ABBREV or _UNIT.match(word) or (len(word) == 1 and (word in _JAMO or word.isupper() and word != "I")):
            return False                      # "Mr. Kim", "plan A. Then", "ㅋ. 그래", "3항. 다만"
    j = e
    while j < len(m) and (_trails(m[j]) or m[j] in "\"'`″"):
        j += 1
    return not m.startswith(_CONTINUES, j)    # "좋아. 에서 봐"


def _open_until(m: str) -> list[int]:
    """For every index: the index where the innermost bracket or quote open there closes (the
    message's length when none is open). Straight quotes pair up left to right; an apostrophe
    inside a word ("I'm", "don't") is no quote."""
    n = len(m)
    stack: list[tuple[str, int]] = []         # (closing character, index opened)
    spans: list[tuple[int, int]] = []
    for i, ch in enumerate(m):
        if stack and ch == stack[-1][0]:
            spans.append((stack.pop()[1], i))
        elif ch in _PAIRS:
            stack.append((_PAIRS[ch], i))
        elif ch in "\"″" or (ch == "'" and not (0 < i < n - 1 and m[i - 1].isalnum() and m[i + 1].isalnum())):
            stack.append((ch, i))
    closes = [n] * n
    for a, b in spans:                        # inner spans close first: keep the smallest
        for i in range(a + 1, b):
            if b < closes[i]:
                closes[i] = b
    return closes


def split_rules(message: str) -> list[str]:
    """The sentences of one message by the rules above (the "rules" backend)."""
    run = _SF_RUN.search(message)
    if run is None:
        return [message]
    m, n = message, len(message)
    cuts: list[int] = []
    closes = None
    for run in _SF_RUN.finditer(m, run.start()):
        s, e = run.span()
        if e >= n or (cuts and s < cuts[-1]):
            continue
        ch = m[e]
        if not (ch in _SPACE or ch in _OPEN or ch in _JAMO or _is_emoji(ch)):
            continue                          # "3.5", "a.b.com", "ok!!" (the run goes on), "좋아?!"
        if _next_nonspace(m, e) >= n or not _ends_sentence(m, s, e):
            continue
        j = e
        while j < n:
            if _trails(m[j]):
                j += 1
            elif (emo := _EMOTICON.match(m, j)) is not None:
                j = emo.end()
            else:
                break
        if j >= n:
            break
        if closes is None:
            closes = _open_until(m) if _QUOTE_OR_BRACKET.search(m) else [n] * n
        if closes[s] < n and closes[s] >= e:
            continue                          # inside quotes or brackets that close later
        cuts.append(j)
    if not cuts:
        return [m]
    parts, a, start = [], 0, 0
    for c in cuts + [n]:
        p = m[a:c].strip()
        if p and parts and not _WORD.search(p):
            parts[-1] = m[start:c].strip()    # symbols only ("ㅡ_ㅡ", "^^*", ";;"): the sentence before's
        elif p:
            parts.append(p)
            start = a
        a = c
    return parts or [m]


class SentenceSplitter:
    def __init__(self, backend: str = DEFAULT_BACKEND, long_message: int = LONG_MESSAGE):
        if backend not in BACKENDS:
            raise ValueError(f"unknown sentence backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.long_message = long_message
        self._split = None
        self.kss_calls = 0

    def needs_kss(self, message: str) -> bool:
        return self.backend in KSS_BACKENDS and (len(message) > self.long_message
                                                 or bool(_INNER_PUNCT.search(message)))

    def _kss(self):
        if self._split is None:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                import kss  # noqa: PLC0415 - deliberately lazy, see the module docstring
            self._split = kss.split_sentences
        return self._split

    def split_message(self, message: str) -> list[str]:
        if self.backend == "rules":
            return split_rules(message)
        if not self.needs_kss(message):
            return [message]
        split = self._kss()
        self.kss_calls += 1
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")    # pecab warns about cost overflows on odd input
            parts = split(message, backend=self.backend)
        parts = [p.strip() for p in parts if p and p.strip()]
        return parts or [message]

    def split_turn(self, text: str) -> list[str]:
        """Sentences of a turn (messages joined by "\\n"); never empty for a non-empty turn."""
        out: list[str] = []
        if self.backend == "rules" and _SF_RUN.search(text) is None:
            return text.split("\n")          # most turns: no punctuation with text after it
        split = self.split_message
        for m in text.split("\n"):
            out.extend(split(m))
        return out or [text]
