"""Candidate generation for the chat service: the stored replies nearest the context vector (the
response index) and the replies of the nearest training contexts (the neighbour features' hits,
which then vote without a second search)."""
from __future__ import annotations

import numpy as np


def candidates(scorer, ranker, contexts, C: np.ndarray, pool: int) -> tuple[list[list[int]], dict]:
    """(each context's candidate response rows, the nearest index rows first, then the neighbours'
    replies, each once; the neighbour hits by feature, for :meth:`FeatureScorer.features`)."""
    _, I = scorer.index.search_vectors(C, pool)
    hits = scorer.neighbour_hits(contexts, C, ranker.active, ranker.neighbours)  # searched once
    ids = []
    for i in range(len(contexts)):
        nb = [int(row) for sims, rows in hits.values() for row, d in zip(rows[i], sims[i]) if np.isfinite(d)]
        ids.append(list(dict.fromkeys([int(j) for j in I[i] if j >= 0] + nb)))
    return ids, hits
