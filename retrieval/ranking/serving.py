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
             reranker_dir: str | Path | None = None, precision: str = "auto", index=None) -> "HybridRetriever":
        """``precision``: the dialog model's weights at inference (Encoder.for_inference);
        ``index``: the ResponseIndex of ``index_dir`` already loaded (with its encoder), not read again."""
        from retrieval.index import ResponseIndex
        if index is None:
            index = ResponseIndex.load(index_dir, model_dir)
        if index.encoder is None:
            raise ValueError(f"{index_dir}: no encoder found for this index; pass MODEL_DIR "
                             f"(`dialogbert serve --model ENCODER_DIR`)")
        index.encoder.for_inference(precision)
        ranker = Ranker.load(index_dir, index.info) or Ranker()
        rr = (reranker_dir or ranker.reranker or "") if "rerank" in ranker.active else None
        scorer = FeatureScorer.for_ranker(index, ranker, reranker_dir=rr)
        missing = set(ranker.active) - set(scorer.available)
        if missing:
            raise ValueError(f"{index_dir}: {RANKER_FILE} weighs {sorted(missing)}, which this index cannot "
                             f"compute; rebuild it with `dialogbert index`")
        return cls(scorer, ranker)

    def search(self, contexts, k: int = 5) -> list[list[tuple[float, dict]]]:
        """Each context's k best stored replies; contexts with as many candidates (all of them,
        unless the neighbour features add replies) are scored in one call of the features."""
        idx, r = self.index, self.ranker
        C = self.scorer.encoder.encode_contexts(contexts)
        ids_of, hits = candidates(self.scorer, r, contexts, C, self.pool)
        groups: dict[int, list[int]] = {}
        for i, ids in enumerate(ids_of):
            if ids:
                groups.setdefault(len(ids), []).append(i)
        out: list[list[tuple[float, dict]]] = [[] for _ in contexts]
        for rows in groups.values():
            cand_rows = [ids_of[i] for i in rows]
            S = self.scorer.score(r, [contexts[i] for i in rows], [[idx.texts[j] for j in ids] for ids in cand_rows],
                                  C=C[rows], cand_vecs=np.stack([idx.response_vectors(ids) for ids in cand_rows]),
                                  cand_rows=cand_rows,
                                  hits={f: (sims[rows], hrows[rows]) for f, (sims, hrows) in hits.items()})
            for i, s, ids in zip(rows, S, cand_rows):
                order = np.argsort(-s, kind="stable")[:k]
                out[i] = [(float(s[j]), idx.rows[ids[j]]) for j in order]
        return out
