"""The word-embedding rows that learn at the word rate (``train.word_lr_mult``), and the rest held
to the base rate.

Fine-tuning moves the word-embedding rows at a multiple of the learning rate so that each row
works as its token's own memory (as the n-gram encoder's rows do). That pays on Korean, where the
unigram vocabulary's pieces with Hangul are syllables and short words of the corpus; the other
pieces (English subwords, punctuation, the prefixes and speaker marks) are shared by every input
and carry what e5 knows of English; at 30x the most used of them (English function words,
punctuation) moved by about half their norm in the demo's 20 minutes.
``train.word_lr_hangul_only`` keeps the higher rate for the Hangul pieces only
(docs/experiments/2026-12-07-word-embedding-rate.md, section 6).

AdamW's step is proportional to the group's rate when the group has no weight decay (the word
group has none), so dividing a row's change by the multiple after each step gives exactly the
step it would take at the base rate: one parameter, two rates, no second optimizer.
"""
from __future__ import annotations

from typing import Sequence

import torch

from retrieval.morphemes import HANGUL  # syllables, jamo and compatibility jamo


def rows_without_hangul(tokenizer, vocab_size: int) -> list[int]:
    """Token ids below ``vocab_size`` whose piece has no Hangul letter (specials and added tokens
    included), and ids past the tokenizer's vocabulary (rows no input uses)."""
    hangul = {i for piece, i in tokenizer.get_vocab().items() if i < vocab_size and HANGUL.search(piece)}
    return [i for i in range(vocab_size) if i not in hangul]


class BaseRateRows:
    """Hold some rows of a parameter whose AdamW group runs at ``mult`` times the rate (without
    weight decay) to the base rate: call ``before_step`` and ``after_step`` around
    ``optimizer.step()``."""

    def __init__(self, weight: torch.nn.Parameter, rows: Sequence[int], mult: float):
        if mult <= 0:
            raise ValueError(f"mult={mult} must be above 0")
        self.weight, self.mult = weight, float(mult)
        self.rows = torch.tensor(list(rows), dtype=torch.long, device=weight.device)
        self.saved: torch.Tensor | None = None

    def before_step(self) -> None:
        self.saved = self.weight.detach()[self.rows].clone()

    def after_step(self) -> None:
        if self.saved is None:
            raise RuntimeError("BaseRateRows.after_step without before_step")
        with torch.no_grad():
            moved = self.weight[self.rows] - self.saved
            self.weight[self.rows] = self.saved + moved / self.mult
        self.saved = None
