"""``neighbour``: what was answered to conversations like this one. The k training contexts of the
index's context memory nearest to this context, softmax-weighted by similarity (the ranker's
``temperature``), vote for the candidate by the cosine between it and their stored replies: the
neighbour idea of kNN-LM (Khandelwal et al. 2020) applied to response selection."""
from __future__ import annotations

import numpy as np

from retrieval.features.base import Batch, Feature, Sources
from retrieval.features.votes import _softmax_votes, _top_excluding


class Neighbour(Feature):
    name, needs, temperature = "neighbour", "the index's context memory", "temperature"

    def __init__(self, index):
        self.index = index

    @classmethod
    def load(cls, src: Sources) -> "Neighbour | None":
        return cls(src.index) if getattr(src.index, "memory", None) is not None else None

    def search(self, contexts, C, k, exclude_convs=None):
        idx = self.index
        return _top_excluding(lambda ids, depth: idx.neighbours(C[ids], depth), len(C), k, len(idx.memory_rows),
                              idx.memory_rows, idx.memory_convs, exclude_convs)

    def score(self, batch: Batch, temperatures=(0.1,)) -> dict:
        sims, rows = batch.hits[self.name]
        R = self.index.response_vectors(rows.ravel()).reshape(len(batch.C), rows.shape[1], -1)
        return _softmax_votes(sims, np.einsum("mnd,mkd->mnk", batch.cand_vecs, R), temperatures)
