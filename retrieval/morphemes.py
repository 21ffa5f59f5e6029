"""Korean morphemes and their pretrained neighbours: extra features of the n-gram encoder.

A character n-gram of a conjugated Korean word is only part of what the word says: 헤어졌어,
헤어진 and 헤어지면 share the stem 헤어지 (to break up), and 이별 (parting) shares no
character with any of them. Kiwi (kiwipiepy, Apache-2.0; Lee 2024), a Korean morphological
analyser whose pip package ships its models, splits a text into morphemes (헤어지/VV + 었/EP + 어/EF)
and its CoNg language model (``model_type="cong"``) carries morpheme embeddings learnt from far
more Korean than any chat corpus here: the nearest morphemes of 헤어지/VV are 이별/NNG, 작별/NNG and
결별/NNG. :class:`Morphemes` turns a text into

* ``m:FORM/TAG`` for each Korean morpheme (particles and endings included: they carry tense,
  mood and politeness), and
* the same strings for the ``expand`` nearest morphemes of each content morpheme (nouns, verbs,
  adjectives, adverbs, roots) whose cosine under the CoNg embeddings is at least ``min_similarity``,

so a question worded with a synonym the training pairs never used still lands on trained rows.
Symbols, numbers, Latin text, Hanja and web tokens get none: an English text's features are the
n-grams alone, and a text without Hangul never reaches the analyser.

Chosen on the ChatbotData validation carve-out (897 examples; the n-gram encoder with 4 heads,
R10@1 alone / in the ranker, its weights fitted on one half and scored on the other): character
n-grams 0.706 / 0.756; with the morphemes and 3, 5 or **8 neighbours** (cosine >= 0.5, 0.55,
**0.5**) 0.729 / 0.764, 0.739 / 0.770, **0.750 / 0.779**; 12 or 16 neighbours no better (measured
before out-of-vocabulary morphemes lost their placeholder's neighbours: 8 neighbours then 0.743 /
0.764).
docs/retrieval.md has the test figures ("Morphemes and their pretrained neighbours").

The nearest-morpheme search scans the model's vocabulary (about 7 ms a morpheme), so each
morpheme's neighbours are looked up once per process and kept; loading the model (the anonymizer's, preprocess.pii_korean.kiwi) takes ~1 s and
~300 MB.
"""
from __future__ import annotations

import re
from typing import Sequence

from dialogbert import MissingPackage

HANGUL = re.compile("[\uac00-\ud7a3\u1100-\u11ff\u3131-\u318e]")
# the Sejong tags Kiwi gives Korean morphemes: nouns and pronouns (N), verbs and adjectives (V),
# determiners and adverbs (M), interjections (I), particles (J), endings (E), affixes (X)
KOREAN_TAGS = ("N", "V", "M", "I", "J", "E", "X")
# whose neighbours are added: nouns, verbs, adjectives, adverbs, roots (not particles or endings)
CONTENT_TAGS = ("NNG", "NNP", "VV", "VA", "MAG", "XR")
PACKAGE = "kiwipiepy"
EXPAND = 8             # nearest morphemes added for each content morpheme (chosen on the carve-out, above)
MIN_SIMILARITY = 0.5   # ... whose CoNg cosine is at least this


class MorphemesUnavailable(MissingPackage):
    """kiwipiepy (and its model package) is not installed."""


MISSING_FIX = "`pip install -r requirements.txt`, or leave the morphemes out (`dialogbert index --no-morphemes`)"


def version() -> str:
    """The analyser's version (``kiwipiepy`` x.y.z): its morphemes and neighbours belong to it."""
    try:
        import kiwipiepy
    except ImportError as e:
        raise MorphemesUnavailable(f"{PACKAGE} is not installed ({e}); {MISSING_FIX}") from e
    return kiwipiepy.__version__


def _kiwi():
    """The process's one CoNg Kiwi, the anonymizer's (preprocess.pii_korean.kiwi, which keeps it)."""
    version()  # raises, naming the fix, where kiwipiepy is missing
    from preprocess.pii_korean import kiwi
    try:
        return kiwi()
    except RuntimeError as e:  # kiwipiepy_model missing or damaged: the message names the fix
        raise MorphemesUnavailable(str(e)) from e


def _base_tag(tag) -> str:
    return str(tag).split("-")[0]  # VV-I (irregular) -> VV


class Morphemes:
    """``features(texts)``: each text's morpheme feature strings (see the module's doc)."""

    def __init__(self, expand: int = EXPAND, min_similarity: float = MIN_SIMILARITY):
        if expand < 0:
            raise ValueError(f"expand must be >= 0, got {expand}")
        self.expand, self.min_similarity = expand, min_similarity
        self._similar: dict[int, list[str]] = {}

    def load(self) -> "Morphemes":
        """Load the analyser now (~3 s) rather than at the first text (the chat service's first request)."""
        _kiwi()
        return self

    def neighbours(self, morpheme_id: int) -> list[str]:
        """``m:FORM/TAG`` of the ``expand`` nearest morphemes with cosine >= ``min_similarity``."""
        got = self._similar.get(morpheme_id)
        if got is None:
            try:
                near = _kiwi().most_similar_morphemes(int(morpheme_id), top_n=self.expand)
            except (ValueError, IndexError, RuntimeError):  # a morpheme the embeddings do not cover
                near = []
            got = [f"m:{s.form}/{s.tag}" for s in near
                   if s.score >= self.min_similarity and s.form and _base_tag(s.tag).startswith(KOREAN_TAGS)]
            if len(self._similar) > 500_000:
                self._similar.clear()
            self._similar[morpheme_id] = got
        return got

    def features(self, texts: Sequence[str]) -> list[list[str]]:
        out: list[list[str]] = [[] for _ in texts]
        korean = [i for i, t in enumerate(texts) if HANGUL.search(t)]
        if not korean:
            return out
        for i, tokens in zip(korean, _kiwi().tokenize([texts[i] for i in korean])):
            feats = out[i]
            for tok in tokens:
                base = _base_tag(tok.tag)
                if not base.startswith(KOREAN_TAGS):
                    continue
                feats.append(f"m:{tok.form}/{tok.tag}")
                # an out-of-vocabulary morpheme (a new name, a typo) has a placeholder id that
                # stands for every such morpheme of its tag: no neighbours of its own
                if self.expand and base in CONTENT_TAGS and not tok.oov:
                    feats.extend(self.neighbours(tok.id))
        return out
