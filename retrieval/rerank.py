"""The cross-encoder re-ranker: the pretrained next-turn head reads context and candidate together.

A dual encoder embeds the context and the response apart, so it never sees a word of one next
to a word of the other. DialogBERT's next-turn head was pretrained on exactly the question a
re-ranker asks: "is this turn the continuation of that context?" (``[CLS] context [SEP] ...
candidate [SEP]``, the candidate as the newest turn, next-turn label 0 = yes). The re-ranker is
that model, fine-tuned listwise (``dialogbert finetune`` with ``model.kind = "cross"``: the true
response against sampled negatives, cross-entropy over the group), and it scores the top
candidates of the dual encoder (Nogueira & Cho 2019 retrieve-then-rerank; Humeau et al. 2020 on
bi- vs cross-encoders for response selection).

    rr = CrossEncoder.load("runs/demo/reranker")
    rr.score(contexts, candidates)       # (m, n) float32, higher = better continuation

The score is the next-turn log-odds ``logit[is next] - logit[is not]``. A candidate is encoded as
the turn of the speaker who would answer: the speaker of the turn before the newest one when that
is someone else, else a new speaker; so the layout is the same in training, evaluation and
serving.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from retrieval.encoder import Encoder, Turns

NEW_SPEAKER = "\x00responder"


def responder(context: Turns) -> str:
    """The pseudonym under which a candidate reply to ``context`` is encoded."""
    if len(context) >= 2 and context[-2][0] != context[-1][0]:
        return context[-2][0]
    return NEW_SPEAKER


class CrossEncoder(Encoder):
    """(context, candidate) -> relevance, from DialogBertForPreTraining's next-turn head (or any
    ``AutoModelForPreTraining`` BERT with a next-sentence head)."""
    kind = "cross"
    auto_class = "AutoModelForPreTraining"
    pack_tokens = 0  # its forward scores a padded batch with the next-turn head: never packed

    def __init__(self, model, tokenizer, settings=None, path=None):
        super().__init__(model, tokenizer, settings, path)
        if not hasattr(model, "cls") or not hasattr(model.cls, "seq_relationship"):
            raise ValueError(f"{path or type(model).__name__}: no next-turn (next-sentence) head; a re-ranker "
                             f"starts from a pretraining checkpoint (`dialogbert pretrain`)")

    def pair_features(self, contexts: Sequence[Turns], candidates: Sequence[str]) -> list[dict]:
        """One input per (context, candidate): the newest ``context_turns`` turns, then the candidate."""
        items = [list(ctx)[-self.settings.context_turns:] + [(responder(ctx), cand)]
                 for ctx, cand in zip(contexts, candidates)]
        return self.featurize(items, keep=0)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-turn log-odds of a padded batch, shape (B,) (keeps the autograd graph)."""
        m, kw = self.model, self.model_inputs(batch)
        if self.is_dialog:
            logits = m.next_turn_logits(**kw)
        else:  # a plain BertForPreTraining
            logits = m.cls.seq_relationship(m.bert(**kw).pooler_output)
        logits = logits.float()
        return logits[:, 0] - logits[:, 1]

    def score_pairs(self, contexts: Sequence[Turns], candidates: Sequence[str], batch_size: int = 128,
                    show_progress: bool | None = None) -> np.ndarray:
        return self.run(self.pair_features(contexts, candidates), (), batch_size, show_progress, "rerank")

    def score(self, contexts: Sequence[Turns], candidates: Sequence[Sequence[str]], batch_size: int = 128,
              show_progress: bool | None = None) -> np.ndarray:
        """(m, n) scores: row i holds contexts[i] against each of candidates[i]."""
        n = len(candidates[0]) if len(candidates) else 0
        flat_ctx = [ctx for ctx, cands in zip(contexts, candidates) for _ in cands]
        flat = [c for cands in candidates for c in cands]
        if any(len(c) != n for c in candidates):
            raise ValueError("every context needs the same number of candidates")
        return self.score_pairs(flat_ctx, flat, batch_size, show_progress).reshape(len(contexts), n)


def listwise_loss(scores: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the true candidate (column 0) against the rest of its group, (B, G)."""
    return torch.nn.functional.cross_entropy(scores, torch.zeros(scores.shape[0], dtype=torch.long,
                                                                 device=scores.device))
