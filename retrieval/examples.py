"""Protocol examples from shards (docs/protocol.md).

A test example is (context, response): the context is up to the last ``context_turns`` (5)
turns before turn t of a conversation (t >= 1), the response is turn t. A Q/A row ([Q, A])
gives one example. The split is :func:`preprocess.schema.split_of`, by conversation.

Candidates: the true response plus n-1 negatives drawn with ``random.Random(seed)`` (seed 1)
from the other test responses whose text differs from the true one. One draw of 99 negatives
per example serves both n=100 and n=10 (the first 9), so the sets are nested and identical for
every system scored on them.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from preprocess.schema import Conversation, read_shards, split_of

CONTEXT_TURNS = 5
NEGATIVE_SEED = 1


@dataclass
class Example:
    context: list[tuple[str, str]]  # (speaker, text), oldest first
    response: str
    speaker: str = ""
    conv_id: str = ""
    source: str = ""
    turn: int = 0
    # the conversation's turn texts, shared by its examples (fine-tuning's hard negatives)
    turns: tuple[str, ...] = field(default=(), repr=False, compare=False)


def conversation_examples(conv: Conversation, context_turns: int = CONTEXT_TURNS) -> list[Example]:
    out = []
    texts = tuple(x.text for x in conv.turns)
    for t in range(1, len(conv.turns)):
        ctx = [(x.speaker, x.text) for x in conv.turns[max(0, t - context_turns):t]]
        r = conv.turns[t]
        out.append(Example(ctx, r.text, r.speaker, conv.id, conv.source, t, texts))
    return out


def read_examples(shards: str | Path, split: str | None = "train", context_turns: int = CONTEXT_TURNS,
                  sources: Iterable[str] | None = None, fraction: float = 0.0,
                  valid: bool = False) -> Iterator[Example]:
    """The one reader of (context, reply) pairs from shards, streamed in shard order (file order,
    then turn order): the examples of ``split`` (None: every conversation), only ``sources`` when
    given; with ``fraction`` > 0 only the validation carve-out's conversations (``valid``) or only
    the others (not ``valid``). Evaluation, fine-tuning (retrieval.finetune.training_pairs) and the
    ranker's own encoders (retrieval.ngram.training_texts) all read through it."""
    keep = set(sources) if sources else None
    for conv in read_shards(shards, split=split):
        if (keep is not None and conv.source not in keep) or is_valid_conv(conv.id, fraction) != valid:
            continue
        yield from conversation_examples(conv, context_turns)


def load_examples(shards: str | Path, split: str | None = "test", max_examples: int | None = None,
                  context_turns: int = CONTEXT_TURNS, sources: Iterable[str] | None = None) -> list[Example]:
    """Examples of one split in shard order (file order, then turn order); the first
    ``max_examples`` when capped (the protocol's chitchat cap is 1,000)."""
    return list(itertools.islice(read_examples(shards, split, context_turns, sources), max_examples))


def is_valid_conv(conv_id: str, fraction: float) -> bool:
    """The validation carve-out of the TRAIN split (a second hash, never the test split):
    fine-tuning leaves these conversations out when ``data.valid_fraction`` > 0, and the
    ranker's weights are fitted on them."""
    return fraction > 0 and split_of(conv_id + "#valid", fraction=fraction) == "test"


def train_examples(shards: str | Path, fraction: float, valid: bool, context_turns: int = CONTEXT_TURNS,
                   sources: Iterable[str] | None = None) -> Iterator[Example]:
    """Protocol examples of the TRAIN split, streamed: those of the validation carve-out
    ``fraction`` (``valid``), or all the others (not ``valid``); only ``sources`` when given."""
    return read_examples(shards, "train", context_turns, sources, fraction, valid)


class _Reservoir:
    """Reservoir sampling of at most ``k`` (position, item) pairs, with a fixed seed."""

    def __init__(self, k: int | None, seed: int = 0):
        self.k, self.rng, self.seen, self.kept = k, random.Random(seed), 0, []

    def offer(self, position: int, item) -> None:
        if self.k is None or len(self.kept) < self.k:
            self.kept.append((position, item))
        else:
            j = self.rng.randint(0, self.seen)
            if j < self.k:
                self.kept[j] = (position, item)
        self.seen += 1

    def in_order(self) -> list:
        return sorted(self.kept, key=lambda p: p[0])


def uniform_sample(items: Iterable, k: int | None, seed: int = 0) -> list:
    """A uniform sample of ``k`` of the items (all when None or fewer), in their order: reservoir
    sampling with a fixed seed, so bounded memory and the same sample every time."""
    pool = _Reservoir(k, seed)
    for position, item in enumerate(items):
        pool.offer(position, item)
    return [item for _, item in pool.in_order()]


def balanced_sample(items: Iterable, k: int | None, group, seed: int = 0) -> list:
    """A sample of ``k`` items in which every group (``group(item)``) has an equal share, a group
    with fewer items giving all of them and the rest shared among the others; each group's share
    a uniform sample of it, all in the items' order. One reservoir of ``k`` per group (bounded
    memory; the same sample every time). A single group gives exactly :func:`uniform_sample`'s."""
    if k is None:
        return list(items)
    pools: dict = {}
    for position, item in enumerate(items):
        g = group(item)
        if g not in pools:
            pools[g] = _Reservoir(k, seed)
        pools[g].offer(position, item)
    left, keep = k, []
    by_size = sorted(pools, key=lambda g: (len(pools[g].kept), str(g)))
    for i, g in enumerate(by_size):
        pool = pools[g].in_order()
        share = min(len(pool), left // (len(by_size) - i))
        keep += uniform_sample(pool, share, seed)  # all of a pool no bigger than its share
        left -= share
    return [item for _, item in sorted(keep, key=lambda p: p[0])]


def validation_examples(shards: str | Path, fraction: float, max_examples: int | None = None,
                        context_turns: int = CONTEXT_TURNS, sources: Iterable[str] | None = None,
                        by_source: bool = False) -> list[Example]:
    """Protocol examples of the validation carve-out (train-split conversations). With
    ``max_examples``, a uniform sample of that many (:func:`uniform_sample`), kept in shard order:
    the first N in shard order would be whichever corpus of a mixed folder comes first. With
    ``by_source``, each source of a mixed folder gets an equal share (:func:`balanced_sample`)."""
    items = train_examples(shards, fraction, True, context_turns, sources)
    if by_source:
        return balanced_sample(items, max_examples, lambda e: e.source)
    return uniform_sample(items, max_examples)


def train_responses(shards: str | Path) -> list[str]:
    """Every response text of the training split (turns t >= 1), for fitting the baselines."""
    return [ex.response for ex in read_examples(shards, "train", 1)]


@dataclass
class CandidateSets:
    """``texts[i]`` is example i's candidates, the true response first, then n-1 negatives."""
    texts: list[list[str]]
    n: int
    seed: int = NEGATIVE_SEED
    pool_size: int = 0
    skipped: list[int] = field(default_factory=list)  # examples with too few distinct negatives

    def first(self, n: int) -> list[list[str]]:
        if n > self.n:
            raise ValueError(f"asked for {n} candidates, only {self.n} were drawn")
        return [c[:n] for c in self.texts]


def distinct(candidates: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """(the distinct candidate texts, sorted; the (m, n) index of each candidate among them): every
    scorer encodes each distinct text once, then reads ``vectors[index]``."""
    uniq = sorted({c for cands in candidates for c in cands})
    pos = {t: i for i, t in enumerate(uniq)}
    idx = np.array([[pos[c] for c in cands] for cands in candidates], dtype=np.int64)
    return uniq, idx.reshape(len(candidates), len(candidates[0]) if len(candidates) else 0)


def draw_candidates(responses: Sequence[str], n: int = 100, seed: int = NEGATIVE_SEED) -> CandidateSets:
    """Negatives for each response from the other responses with different text (distinct texts,
    without replacement), with one ``random.Random(seed)`` walked in example order."""
    pool = sorted(set(responses))
    if len(pool) < n:
        raise ValueError(f"only {len(pool)} distinct test responses: cannot draw {n - 1} negatives each; "
                         f"use more test examples (--max-examples) or a smaller n")
    rng = random.Random(seed)
    out = []
    for true in responses:
        draw = rng.sample(pool, n)
        negs = [t for t in draw if t != true][:n - 1]
        out.append([true] + negs)
    return CandidateSets(out, n, seed, len(pool))
