"""STUB: the PII table replaces this. API:

    anonymize(text, names=()) -> str
    Anonymizer(names).anonymize(text) -> (text, Counter of placeholder -> count)
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable


class Anonymizer:
    def __init__(self, names: Iterable[str] = ()):
        self.names = [n for n in names if n]

    def anonymize(self, text: str) -> tuple[str, Counter]:
        counts: Counter = Counter()
        for n in sorted(self.names, key=len, reverse=True):
            if n in text:
                counts["[NAME]"] += text.count(n)
                text = text.replace(n, "[NAME]")
        return text, counts


def anonymize(text: str, names: Iterable[str] = ()) -> str:
    return Anonymizer(names).anonymize(text)[0]
