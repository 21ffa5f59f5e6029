"""``dual``: the cosine of the context and candidate vectors of the fine-tuned dual encoder."""
from __future__ import annotations

import numpy as np

from retrieval.features.base import Batch, Feature


class Dual(Feature):
    name, needs = "dual", "the index's encoder"

    def score(self, batch: Batch, temperatures=()) -> np.ndarray:
        return np.einsum("md,mnd->mn", batch.C, batch.cand_vecs)
