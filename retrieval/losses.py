"""The in-batch (multiple-negatives ranking) loss, in one copy: the dual encoder's fine-tuning
(retrieval.finetune) and the ranker's own encoders (retrieval.towers: the n-gram tables, the USE
towers) train with it.

Row i of a batch is pair i; its positive is column i of the logits and every other column is a
negative (Henderson et al. 2017; sentence-transformers' MultipleNegativesRankingLoss). A column
that repeats row i's positive text is no negative of it and is masked (:func:`duplicate_mask`).
How the logits are scored (cosine times a scale, one matrix per head) stays with the caller, so
each keeps its own arithmetic to the bit.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def duplicate_mask(rows: Sequence, columns: Sequence | None = None) -> torch.Tensor:
    """(len(rows), len(columns)) booleans, True where column j's key (a reply text or id) equals
    row i's and j != i: those columns repeat row i's positive and are no negatives of it. The
    diagonal is never True. ``columns`` defaults to ``rows``; its first len(rows) entries are the
    rows' own positives, any after them extra negatives (hard or copy negatives)."""
    columns = rows if columns is None else columns
    ids: dict = {}
    r = np.array([ids.setdefault(k, len(ids)) for k in rows], dtype=np.int64)
    c = np.array([ids.setdefault(k, len(ids)) for k in columns], dtype=np.int64)
    mask = r[:, None] == c[None, :]
    np.fill_diagonal(mask, False)
    return torch.from_numpy(mask)


def in_batch_loss(logits: torch.Tensor, duplicates: torch.Tensor | None = None,
                  symmetric: bool = True) -> torch.Tensor:
    """Cross-entropy of each row against its own column: ``logits`` (B, C) or (heads, B, C), C >= B,
    the first B columns the rows' positives in order. ``duplicates`` (B, C) from
    :func:`duplicate_mask` leaves those columns out of the row's softmax. ``symmetric``: the mean
    with the reply->context direction (the (B, B) block, transposed). With heads, the mean over
    every head's rows, i.e. the mean of the heads' own losses, so they train as separate models.

    Masked entries are set to -inf rather than a finite filler such as -1e4: -inf gives them
    exactly zero probability whatever the scale and dtype, while a finite value is only "small"
    as long as the logits stay far from it; the one hazard of -inf, a row whose every entry is
    masked (NaN), cannot happen because the diagonal (the row's own positive) is never masked."""
    F = torch.nn.functional
    if logits.dim() == 2:
        logits = logits[None]
    heads, b = logits.shape[0], logits.shape[1]
    if duplicates is not None:
        if duplicates[:, :b].diagonal().any():
            raise ValueError("in_batch_loss: a row's own positive is masked")
        logits = logits.masked_fill(duplicates.to(logits.device), float("-inf"))
    y = torch.arange(b, device=logits.device).repeat(heads)  # each head's rows, one after the other
    loss = F.cross_entropy(logits.flatten(0, 1), y)
    if symmetric:
        loss = (loss + F.cross_entropy(logits[:, :, :b].transpose(1, 2).flatten(0, 1), y)) / 2
    return loss
