"""``lexical``: the TF-IDF character 1-3-gram cosine of the newest turn and the candidate (the
protocol's strongest lexical baseline, fitted on the index's stored replies and contexts)."""
from __future__ import annotations

import numpy as np

from retrieval.features.base import Batch, Feature, Sources
from retrieval.index import MEMORY_TEXT_TURNS  # the turns the memory keeps as text: the same are read


class Lexical(Feature):
    name, needs = "lexical", "TF-IDF fitted on the index's texts (cached in lexical/)"

    def __init__(self, tfidf, memory=None):
        self.tfidf, self.memory = tfidf, memory  # a fitted baselines.TfidfScorer; the LexicalMemory sharing it

    @classmethod
    def load(cls, src: Sources) -> "Lexical":
        from retrieval.features.tfidf import load_tfidf
        return cls(*src.once("tfidf", lambda: load_tfidf(src.index, "lexical_neighbour" in src.wanted, src.write)))

    def score(self, batch: Batch, temperatures=()) -> np.ndarray:
        return self.tfidf.score([c[-MEMORY_TEXT_TURNS:] for c in batch.contexts], batch.candidates,
                                rows=batch.tfidf_rows(self.tfidf.vec, self.memory))
