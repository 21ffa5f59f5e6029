"""Neighbour search with the example's own conversation left out, and the softmax-weighted vote of
the neighbours' replies: what the ``neighbour`` and ``lexical_neighbour`` features share."""
from __future__ import annotations

from typing import Sequence

import numpy as np

EXCLUDE_SLACK = 32  # extra neighbours searched first when the example's own conversation is left out


def _softmax_votes(sims: np.ndarray, votes: np.ndarray, temperatures: Sequence[float]) -> dict[float, np.ndarray]:
    """sims (m, k) similarities of each row's neighbours (-inf where none), votes (m, n, k)
    candidate x neighbour-reply similarity -> {temperature: (m, n) softmax-weighted vote}."""
    out = {}
    finite = np.isfinite(sims)
    for t in temperatures:
        z = np.where(finite, sims / t, -np.inf)
        z = z - np.max(np.where(finite, z, -1e30), axis=1, keepdims=True)
        w = np.where(finite, np.exp(z), 0.0)
        w /= np.maximum(w.sum(1, keepdims=True), 1e-12)
        out[t] = np.einsum("mnk,mk->mn", votes, w)
    return out


def _keep_top(D: np.ndarray, J: np.ndarray, k: int, memory_rows: np.ndarray, memory_convs: Sequence[str],
              exclude_convs: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """The first k hits of each row (skipping row i's own conversation when excluding):
    (similarities with -inf padding, response rows)."""
    m = len(D)
    sims = np.full((m, k), -np.inf, np.float32)
    rows = np.zeros((m, k), np.int64)
    for i in range(m):
        keep = [(d, j) for d, j in zip(D[i], J[i]) if j >= 0 and
                (exclude_convs is None or memory_convs[j] != exclude_convs[i])][:k]
        for c, (d, j) in enumerate(keep):
            sims[i, c], rows[i, c] = d, memory_rows[j]
    return sims, rows


def _top_excluding(search, m: int, k: int, total: int, memory_rows: np.ndarray, memory_convs: Sequence[str],
                   exclude_convs: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """_keep_top over ``search(row ids, depth) -> (D, J)`` (hits, -1 padded). When excluding, a
    row whose own conversation filled its first k + EXCLUDE_SLACK hits (a long conversation
    holds many nearby contexts) is searched again 4x deeper, until it has k others or the
    memory runs out, so it is never left with fewer neighbours than the memory can give."""
    depth = min(total, k + (EXCLUDE_SLACK if exclude_convs is not None else 0))
    D, J = search(np.arange(m), depth)
    sims, rows = _keep_top(D, J, k, memory_rows, memory_convs, exclude_convs)
    if exclude_convs is None:
        return sims, rows
    todo = np.arange(m)
    while depth < total:
        # short of k, though the search gave all it was asked (more may lie deeper)
        short = ~np.isfinite(sims[todo, -1]) & (J[:, -1] >= 0)
        todo = todo[short]
        if not len(todo):
            break
        depth = min(total, depth * 4)
        D, J = search(todo, depth)
        sims[todo], rows[todo] = _keep_top(D, J, k, memory_rows, memory_convs, [exclude_convs[i] for i in todo])
    return sims, rows
