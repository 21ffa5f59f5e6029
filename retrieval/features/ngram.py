"""``ngram``: the cosine of the newest turn and the candidate under the bag-of-n-grams dual encoder
(retrieval.ngram), trained by ``dialogbert index`` on the encoder's training pairs."""
from __future__ import annotations

from retrieval.features.own import OwnEncoder


class Ngram(OwnEncoder):
    name, needs, subdir = "ngram", "the n-gram encoder in the index folder's ngram/", "ngram"
    what = "n-gram encoder"
    encoder_at, missing_at = "retrieval.ngram:NgramEncoder", "retrieval.morphemes:MorphemesUnavailable"
