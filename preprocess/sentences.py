"""Sentence splitting of turns: the one module that imports kss (lazily: the import takes
7-12 s and ~340 MB, so a run that never needs it never pays for it).

A turn's messages are sentence boundaries already ("\\n" between them). kss only sees a message
that is long (> ``LONG_MESSAGE`` characters) or has sentence punctuation followed by more text
inside; every other message is one sentence as it is. Backends: "fast", "punct", "pecab" (kss
6.0.6) or "none" (each message is one sentence). Measurements and the choice of default:
docs/preprocess.md.
"""
from __future__ import annotations

import contextlib
import io
import re
import warnings

BACKENDS = ("fast", "punct", "pecab", "none")
DEFAULT_BACKEND = "punct"
LONG_MESSAGE = 60   # characters; longer messages go to kss even without punctuation inside

# Sentence-final punctuation (optionally closed by quotes/brackets) with more text after it.
_INNER_PUNCT = re.compile(r"[.!?。？！…][\"'”’)\]]*\s+\S")


class SentenceSplitter:
    def __init__(self, backend: str = DEFAULT_BACKEND, long_message: int = LONG_MESSAGE):
        if backend not in BACKENDS:
            raise ValueError(f"unknown sentence backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.long_message = long_message
        self._split = None
        self.kss_calls = 0

    def needs_kss(self, message: str) -> bool:
        return self.backend != "none" and (len(message) > self.long_message or bool(_INNER_PUNCT.search(message)))

    def _kss(self):
        if self._split is None:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                import kss  # noqa: PLC0415 - deliberately lazy, see the module docstring
            self._split = kss.split_sentences
        return self._split

    def split_message(self, message: str) -> list[str]:
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
        for m in text.split("\n"):
            out.extend(self.split_message(m))
        return out or [text]
