"""``rerank``: the cross-encoder re-ranker's next-turn log-odds (retrieval.rerank), computed for
the ranker's ``rerank_top`` best candidates of the other features only (a late feature)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.features.base import Batch, Feature, Sources


class Rerank(Feature):
    name, needs, late = "rerank", "a fine-tuned re-ranker folder (--reranker DIR)", True

    def __init__(self, reranker):
        self.reranker = reranker  # a rerank.CrossEncoder

    @classmethod
    def load(cls, src: Sources) -> "Rerank | None":
        if src.reranker is not None:
            return cls(src.reranker)
        if src.reranker_dir is None:
            return None
        if not src.reranker_dir or not Path(src.reranker_dir).is_dir():
            raise FileNotFoundError(f"ranker.json weighs the re-ranker {str(src.reranker_dir)!r}, which is not "
                                    f"there; pass --reranker DIR, or refit with `dialogbert index`")
        from retrieval.rerank import CrossEncoder
        return cls(CrossEncoder.load(src.reranker_dir))

    def score(self, batch: Batch, temperatures=()) -> np.ndarray:
        """Every candidate's score (fitting)."""
        n = len(batch.candidates[0]) if len(batch.candidates) else 0
        return self.reranker.score(batch.contexts, batch.candidates, show_progress=len(batch.contexts) * n >= 20000)

    def score_top(self, contexts, candidates, first: np.ndarray, top: int) -> np.ndarray:
        m, n = first.shape
        top = min(top, n)
        best = np.argsort(-first, axis=1, kind="stable")[:, :top]
        flat_ctx = [contexts[i] for i in range(m) for _ in range(top)]
        flat = [candidates[i][j] for i in range(m) for j in best[i]]
        s = self.reranker.score_pairs(flat_ctx, flat, show_progress=len(flat) >= 20000).reshape(m, top)
        out = np.full((m, n), np.nan, np.float32)
        np.put_along_axis(out, best, s, axis=1)
        return out
