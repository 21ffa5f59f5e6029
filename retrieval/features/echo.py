"""``echo``: how nearly a candidate repeats one of the context's two newest turns (character
bigram Jaccard, 0 below ECHO_FROM and rising to 1 for a copy). A dual encoder scores such a
reply almost as highly as the context itself (docs/experiments/2026-12-05-echo-feature.md);
this feature is zero for ordinary replies, so it can carry a large negative weight without
costing the ones that share a few words with the context."""
from __future__ import annotations

import re

import numpy as np

from retrieval.features.base import Batch, Feature

ECHO_FROM = 0.5    # overlap below this is ordinary topical sharing, not an echo
ECHO_TURNS = 2     # the user's newest turn and the one before it
_NOT_WORD = re.compile(r"[\W_]+")


def bigrams(text: str) -> set[str]:
    """The bigrams of the text's letters and digits (spaces and punctuation left out: "뭐해?"
    echoes "뭐해")."""
    t = _NOT_WORD.sub("", text.lower())
    return {t[i:i + 2] for i in range(len(t) - 1)} or ({t} if t else set())


def echo(candidate: str, turns: list[set[str]]) -> float:
    c = bigrams(candidate)
    if not c:
        return 0.0
    best = max((len(c & t) / len(c | t) for t in turns if t), default=0.0)
    return max(0.0, (best - ECHO_FROM) / (1.0 - ECHO_FROM))


class Echo(Feature):
    name, needs = "echo", "only the texts"

    def score(self, batch: Batch, temperatures=()) -> np.ndarray:
        out = np.zeros((len(batch.candidates), max((len(c) for c in batch.candidates), default=0)), np.float32)
        for i, (ctx, cands) in enumerate(zip(batch.contexts, batch.candidates)):
            turns = [bigrams(text) for _, text in list(ctx)[-ECHO_TURNS:]]
            out[i, :len(cands)] = [echo(c, turns) for c in cands]
        return out
