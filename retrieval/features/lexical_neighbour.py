"""``lexical_neighbour``: the neighbour vote with TF-IDF in place of the encoder: neighbours by the
words of the newest turn, votes by the words of their replies (the ranker's
``lexical_temperature``; the memory's TF-IDF rows live in RAM, see retrieval.features.tfidf)."""
from __future__ import annotations

from retrieval.features.base import Batch, Feature, Sources
from retrieval.index import MEMORY_TEXT_TURNS


class LexicalNeighbour(Feature):
    name, needs, temperature = "lexical_neighbour", "the context memory's texts, TF-IDF", "lexical_temperature"

    def __init__(self, memory):
        self.memory = memory  # a features.tfidf.LexicalMemory

    @classmethod
    def load(cls, src: Sources) -> "LexicalNeighbour | None":
        from retrieval.features.tfidf import load_tfidf
        mem = src.once("tfidf", lambda: load_tfidf(src.index, True, src.write))[1]
        return cls(mem) if mem is not None and mem.contexts is not None else None

    def search(self, contexts, C, k, exclude_convs=None):
        from retrieval.baselines import context_text
        return self.memory.search([context_text(c, MEMORY_TEXT_TURNS) for c in contexts], k, exclude_convs)

    def score(self, batch: Batch, temperatures=(0.1,)) -> dict:
        return self.memory.votes(batch.hits[self.name], batch.candidates, temperatures,
                                 flat=batch.tfidf_rows(self.memory.vec, self.memory))
