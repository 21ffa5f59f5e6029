"""Korean given names that only a morphological analyser tells from words, as a DETECTORS pattern
(preprocess.anonymize).

Korean chat calls people by their given name and a vocative particle: 민수야, 지현아. Shaped
alike are 아니야, 괜찮아, 최고야, 친구야, 하늘아, so a pattern cannot find the names and no
maintained package lists Korean given names. Kiwi (kiwipiepy, Apache-2.0; already the n-gram
encoder's analyser) can: it tags 민수야 as a proper noun and the vocative particle (민수/NNP 야/JKV)
and the look-alikes as other words (아니/VCN 야/EF, 친구/NNG 야/JKV). :class:`KoreanVocatives`
masks the proper noun of every word so analysed; it also finds the name of a self-introduction
such as 나는 민수야 (the same word). Each candidate word is analysed once a process and
remembered, so a corpus's common words cost a dictionary look-up; Kiwi's model (~300 MB, ~1 s)
loads on the first word that needs it.
"""
from __future__ import annotations

import re
import threading

from preprocess.pii_english import _Found

__all__ = ["KoreanVocatives", "kiwi"]

_KIWI = None
_LOCK = threading.Lock()


def kiwi():
    """One Kiwi (CoNg model) a process, shared with retrieval.morphemes. Without its typo and
    multi-word dictionaries it loads in ~0.9 s and ~300 MB instead of ~2.8 s and ~490 MB; on 20,000
    of the demo's Korean turns it analyses 10 differently (multi-word entries such as 하늘만큼 땅만큼)
    and on 2,846 vocative-shaped words it decides every one alike."""
    global _KIWI
    if _KIWI is None:
        with _LOCK:
            if _KIWI is None:
                try:
                    from kiwipiepy import Kiwi
                    _KIWI = Kiwi(model_type="cong", load_typo_dict=False, load_multi_dict=False)
                except (ImportError, OSError, RuntimeError, ValueError) as e:
                    raise RuntimeError(f"kiwipiepy could not load its CoNg model ({e}); reinstall it: "
                                       f"`pip install --force-reinstall -r requirements.txt`") from e
    return _KIWI


# a Hangul word of 2-4 syllables and a vocative particle, alone (not inside a longer Hangul word)
_CANDIDATE = re.compile(r"(?<![가-힣])([가-힣]{2,4})[아야](?![가-힣])")
_CACHE_LIMIT = 1 << 18


class KoreanVocatives:
    """``finditer(text)``: the given name of each word Kiwi reads as a proper noun (NNP) and a
    vocative particle (JKV) and nothing else; the particle stays outside the span."""

    def __init__(self):
        self._is_name: dict[str, bool] = {}

    def finditer(self, text: str):
        for m in _CANDIDATE.finditer(text):
            word = m.group(0)
            hit = self._is_name.get(word)
            if hit is None:
                hit = self._analyse(word)
            if hit:
                yield _Found(m.start(1), m.end(1), m.group(1))

    def _analyse(self, word: str) -> bool:
        toks = kiwi().tokenize(word)
        hit = (len(toks) == 2 and toks[0].tag == "NNP" and toks[1].tag == "JKV"
               and toks[0].start == 0 and toks[0].len == len(word) - 1)
        if len(self._is_name) >= _CACHE_LIMIT:
            self._is_name.clear()
        self._is_name[word] = hit
        return hit
