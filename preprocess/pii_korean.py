"""Korean given names that only a morphological analyser tells from words, as a DETECTORS pattern
(preprocess.anonymize).

Korean chat calls people by their given name and a vocative particle: 민수야, 지현아. Shaped
alike are 아니야, 괜찮아, 최고야, 친구야, 하늘아, so a pattern cannot find the names and no
maintained package lists Korean given names. Kiwi (kiwipiepy, Apache-2.0; already the n-gram
encoder's analyser) can: it tags 민수야 as a proper noun and the vocative particle (민수/NNP 야/JKV)
and the look-alikes as other words (아니/VCN 야/EF, 친구/NNG 야/JKV). :class:`KoreanVocatives`
masks the proper noun of every word so analysed; it also finds the name of a self-introduction
such as 나는 민수야 (the same word). :class:`KoreanIntroductions` finds the names introduced with the
copula, which are not vocatives (난 조지야: 조지/NNP 이/VCP 야/EF), after a first-person subject
only: 조지야 alone may be "it's George" as well as "I'm George". Each candidate word is analysed once a process and
remembered, so a corpus's common words cost a dictionary look-up; Kiwi's model (~300 MB, ~1 s)
loads on the first word that needs it.
"""
from __future__ import annotations

import re
import threading

from preprocess.pii_english import _Found

__all__ = ["KoreanIntroductions", "KoreanVocatives", "kiwi"]

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


# a first-person subject, then one word ending in the copula: 난 조지야, 나는 톰이야, 저는 제인이에요, 저는 민수입니다
_INTRO = re.compile(r"(?<![가-힣])(?:나는|난|저는|전)\s+([가-힣]{1,6}(?:이야|야|이에요|예요|입니다))(?![가-힣])")
_COPULA_TAGS = {"VCP", "EF", "JX", "JKV"}
_CACHE_LIMIT = 1 << 18


class _AnalysedWords:
    """``finditer(text)`` over the words ``candidates`` finds: the name each one holds, by Kiwi's
    analysis of the word alone (:meth:`_name_length`, 0 for none), remembered per word."""
    candidates: re.Pattern

    def __init__(self):
        self._length: dict[str, int] = {}

    def finditer(self, text: str):
        for m in self.candidates.finditer(text):
            word = m.group(1)
            n = self._length.get(word)
            if n is None:
                n = self._name_length(kiwi().tokenize(word), word)
                if len(self._length) >= _CACHE_LIMIT:
                    self._length.clear()
                self._length[word] = n
            if n:
                yield _Found(m.start(1), m.start(1) + n, word[:n])


class KoreanVocatives(_AnalysedWords):
    """The given name of each word Kiwi reads as a proper noun (NNP) and a vocative particle (JKV)
    and nothing else (민수야, 지현아); the particle stays outside the span."""
    # a Hangul word of 2-4 syllables and a vocative particle, alone (not inside a longer Hangul word)
    candidates = re.compile(r"(?<![가-힣])([가-힣]{2,4}[아야])(?![가-힣])")

    @staticmethod
    def _name_length(toks, word: str) -> int:
        hit = (len(toks) == 2 and toks[0].tag == "NNP" and toks[1].tag == "JKV"
               and toks[0].start == 0 and toks[0].len == len(word) - 1)
        return toks[0].len if hit else 0


class KoreanIntroductions(_AnalysedWords):
    """The name of a self-introduction, a first-person subject and one word that Kiwi reads as a
    proper noun and the copula (난 조지야: 조지/NNP 이/VCP 야/EF; 저는 민수입니다); a common noun
    (나는 학생이야), or a proper noun with more after it (나는 컨트리음악이야), passes. A place so
    said (나는 서울이야) is masked too: Kiwi tags it NNP as well."""
    candidates = _INTRO

    @staticmethod
    def _name_length(toks, word: str) -> int:
        hit = (len(toks) >= 2 and toks[0].tag == "NNP" and toks[0].start == 0
               and all(t.tag in _COPULA_TAGS for t in toks[1:]))
        return toks[0].len if hit else 0
