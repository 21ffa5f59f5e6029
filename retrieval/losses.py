"""The in-batch (multiple-negatives ranking) loss, in one copy, and the batches it is taken over
(:func:`batch_order`): the dual encoder's fine-tuning (retrieval.finetune) and the ranker's own
encoders (retrieval.towers: the n-gram tables, the USE towers) train with both.

Row i of a batch is pair i; its positive is column i of the logits and every other column is a
negative (Henderson et al. 2017; sentence-transformers' MultipleNegativesRankingLoss). A column
that repeats row i's positive text is no negative of it and is masked (:func:`duplicate_mask`).
How the logits are scored (cosine times a scale, one matrix per head) stays with the caller, so
each keeps its own arithmetic to the bit.
"""
from __future__ import annotations

import random
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


def batch_order(n: int, batch_size: int, seed: int, epoch: int, lengths: Sequence[int] | None = None,
                window: int = 0, groups: Sequence[str] | None = None,
                weights: Sequence[float] | None = None) -> list[list[int]]:
    """The epoch's batches: a seeded shuffle cut into ``batch_size`` rows. With ``lengths`` and
    ``window`` > 0, each run of ``window`` batches of the shuffle is sorted by length before it is
    cut, and the batches are shuffled again: a batch then pads to a length near its own rows'
    (the transformer's cost is the padded tokens), while each batch's in-batch negatives are
    still drawn from the whole corpus. With ``groups`` (one label a row, e.g. its corpus) each
    batch is cut from one group, so its in-batch negatives are of the same kind as its positives
    (a Korean reply is no lesson as the negative of an English context); each group's remainder
    is pooled into mixed batches, and the batches of all groups are shuffled together. With
    ``weights`` (one a row) the epoch holds row i ``int(w)`` times, and once more with probability
    ``w - int(w)`` (drawn anew each epoch): 0.5 is a different half of those rows each epoch, 2
    each row twice (two copies in one batch mask each other as duplicates)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    members: dict[str, list[int]] = {}
    labels = groups if groups is not None else [""] * n
    for i in range(n):
        w = 1.0 if weights is None else float(weights[i])
        for _ in range(int(w) + (w != int(w) and rng.random() < w - int(w))):
            members.setdefault(labels[i], []).append(i)
    batches, rest = [], []
    for g in sorted(members):
        for b in _cut(members[g], batch_size, rng, lengths, window):
            if len(b) == batch_size:
                batches.append(b)
            else:
                rest.extend(b)
    if groups is not None:  # the groups' remainders, in mixed batches
        batches += [b for b in _cut(rest, batch_size, rng, lengths, window) if len(b) == batch_size]
    if groups is not None or lengths is not None and window > 0:
        rng.shuffle(batches)
    return batches or [rest]  # fewer rows than a batch: all of them, as one


def _cut(rows: list[int], batch_size: int, rng: random.Random, lengths: Sequence[int] | None,
         window: int) -> list[list[int]]:
    """``rows`` shuffled (each run of ``window`` batches then sorted by length) and cut into
    batches; the last one may be short."""
    perm = list(rows)
    rng.shuffle(perm)
    if lengths is not None and window > 0:
        span = batch_size * window
        perm = [i for s in range(0, len(perm), span) for i in sorted(perm[s:s + span], key=lambda i: lengths[i])]
    return [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
