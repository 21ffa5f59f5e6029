"""The chat service's retriever: candidates (ranking.candidates) ranked by the fitted ranker."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.ranking.candidates import candidates
from retrieval.ranking.scoring import FeatureScorer
from retrieval.ranking.weights import RANKER_FILE, Ranker


class HybridRetriever:
    """``search(contexts, k)`` answers like ResponseIndex.search: [[(score, row), ...], ...]."""

    def __init__(self, scorer: FeatureScorer, ranker: Ranker, pool: int = 50):
        self.scorer, self.ranker, self.pool = scorer, ranker, pool
        self.index = scorer.index

    @classmethod
    def load(cls, index_dir: str | Path, model_dir: str | Path | None = None,
             reranker_dir: str | Path | None = None) -> "HybridRetriever":
        from retrieval.index import ResponseIndex
        index = ResponseIndex.load(index_dir, model_dir)
        if index.encoder is None:
            raise ValueError(f"{index_dir}: no encoder found for this index; pass MODEL_DIR "
                             f"(`dialogbert serve --model ENCODER_DIR`)")
        ranker = Ranker.load(index_dir, index.info) or Ranker()
        rr = (reranker_dir or ranker.reranker or "") if "rerank" in ranker.active else None
        scorer = FeatureScorer.for_ranker(index, ranker, reranker_dir=rr)
        missing = set(ranker.active) - set(scorer.available)
        if missing:
            raise ValueError(f"{index_dir}: {RANKER_FILE} weighs {sorted(missing)}, which this index cannot "
                             f"compute; rebuild it with `dialogbert index`")
        return cls(scorer, ranker)

    def search(self, contexts, k: int = 5) -> list[list[tuple[float, dict]]]:
        idx, r = self.index, self.ranker
        C = self.scorer.encoder.encode_contexts(contexts)
        ids_of, hits = candidates(self.scorer, r, contexts, C, self.pool)
        out = []
        for i, (ctx, ids) in enumerate(zip(contexts, ids_of)):
            if not ids:
                out.append([])
                continue
            s = self.scorer.score(r, [ctx], [[idx.texts[j] for j in ids]], C=C[i:i + 1],
                                  cand_vecs=idx.response_vectors(ids)[None], cand_rows=[ids],
                                  hits={f: (sims[i:i + 1], rows[i:i + 1]) for f, (sims, rows) in hits.items()})[0]
            order = np.argsort(-s, kind="stable")[:k]
            out.append([(float(s[j]), idx.rows[ids[j]]) for j in order])
        return out
