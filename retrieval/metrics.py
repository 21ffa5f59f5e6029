"""Rn@k and MRR with ties counted against the system (docs/protocol.md).

``scores`` is an (m, n) array: row i holds example i's candidate scores, the true response in
column 0. rank = 1 + the number of wrong candidates scoring >= the true one, so a scorer that
gives everything the same score gets rank n, never rank 1.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

RN_AT_K = ((10, 1), (10, 2), (10, 5), (100, 1), (100, 10))


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of column 0 in each row, ties counted against it."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 1:
        raise ValueError(f"scores must be (examples, candidates), got shape {s.shape}")
    true = s[:, :1]
    return 1 + (s[:, 1:] >= true).sum(axis=1)


def recall_at(r: np.ndarray, k: int) -> float:
    return float(np.mean(np.asarray(r) <= k)) if len(r) else 0.0


def mrr(r: np.ndarray) -> float:
    return float(np.mean(1.0 / np.asarray(r, dtype=np.float64))) if len(r) else 0.0


def rank_metrics(scores: np.ndarray, pairs: Sequence[tuple[int, int]] = RN_AT_K,
                 mrr_n: int = 10) -> dict[str, float]:
    """The protocol's flat dict from (m, N) scores over nested candidate sets (true first, then
    the negatives in draw order): Rn@k uses the first n columns; MRR uses the first ``mrr_n``."""
    s = np.asarray(scores)
    out: dict[str, float] = {}
    for n, k in pairs:
        if n <= s.shape[1]:
            out[f"R{n}@{k}"] = recall_at(ranks(s[:, :n]), k)
    if mrr_n <= s.shape[1]:
        out["MRR"] = mrr(ranks(s[:, :mrr_n]))
    return out


def random_metrics(n_examples: int, n: int = 100, seed: int = 0) -> dict[str, float]:
    """A random scorer on the same layout, for the table's floor."""
    rng = np.random.default_rng(seed)
    return rank_metrics(rng.random((n_examples, n)))
