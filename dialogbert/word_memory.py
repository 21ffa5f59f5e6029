"""A word memory for the DialogBERT: one embedding row per frequent multi-piece word of a corpus.

The unigram vocabulary cuts a Korean word into 2.2 pieces on average, so no row of the word
embedding belongs to a whole word such as "뭐해" or "배고파": the word exists only as what the
layers compose from its pieces. The word memory gives each word of a corpus's TRAIN split that
spans two or more pieces (and occurs at least ``min_count`` times) a row of its own, added to the
embedding of every piece of that word. The rows start at zero, so a model with a fresh memory
computes exactly what it computed without one; fine-tuning fills them as per-word memory (the
same role as the n-gram encoder's table rows, inside the dialog model).

Words are found in the token ids alone, so the model needs no extra input: a word starts at a
piece that begins with the metaspace mark and at every special, placeholder or punctuation piece
(each of which is a word of its own, as is the piece after it). A word's key is a polynomial hash
of its piece ids (mod the prime 2^31 - 1); a sorted key table maps it to its row, and a word not
in the table (unseen, or cut by a [MASK]) adds the zero row. The same function finds the words
when the table is built and when the model runs, so the two cannot disagree.
"""
from __future__ import annotations

import collections
import unicodedata
from typing import Iterable

import torch

PRIME = 2_147_483_647  # 2^31 - 1: a piece id (< 2^20) times a power (< 2^31) stays inside int64
BASE = 1_000_003
MAX_WORD_PIECES = 64   # pieces beyond this in one word share the last power (the hash still differs)


def _powers(n: int = MAX_WORD_PIECES) -> torch.Tensor:
    out, p = [], 1
    for _ in range(n):
        out.append(p)
        p = p * BASE % PRIME
    return torch.tensor(out, dtype=torch.long)


POWERS = _powers()


def piece_tables(tokenizer, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(starts, breaks), one bool per token id: ``starts`` where the piece begins a word (the
    metaspace mark), ``breaks`` where it is a word of its own (specials, added tokens such as the
    placeholders, pieces of punctuation or symbols only). Ids past the tokenizer's are breaks."""
    starts = torch.zeros(vocab_size, dtype=torch.bool)
    breaks = torch.ones(vocab_size, dtype=torch.bool)
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    for piece, i in tokenizer.get_vocab().items():
        if i >= vocab_size or i in special:
            continue
        body = piece.lstrip("\u2581")
        starts[i] = piece.startswith("\u2581")
        breaks[i] = not body or all(unicodedata.category(c)[0] in "PSZ" for c in body)
    return starts, breaks


def word_hashes(input_ids: torch.Tensor, starts: torch.Tensor, breaks: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For (B, L) token ids: each token's word key (B, L), whether it opens its word (B, L), and
    its word's length in pieces (B, L)."""
    ids = input_ids.long()
    brk = breaks[ids]
    prev_brk = torch.nn.functional.pad(brk[:, :-1], (1, 0), value=True)
    opens = starts[ids] | brk | prev_brk
    word = opens.long().cumsum(1)                      # 1, 1, 2, 3, 3, ... (word number per token)
    idx = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    first = torch.where(opens, idx, torch.zeros_like(idx)).cummax(1).values
    pos = (idx - first).clamp(max=MAX_WORD_PIECES - 1)
    part = ids * POWERS.to(ids.device)[pos] % PRIME
    n_words = ids.shape[1] + 1
    sums = torch.zeros(ids.shape[0], n_words, dtype=torch.long, device=ids.device).scatter_add_(1, word, part)
    lengths = torch.zeros_like(sums).scatter_add_(1, word, torch.ones_like(word))
    return (sums % PRIME).gather(1, word), opens, lengths.gather(1, word)


def word_rows(input_ids: torch.Tensor, starts: torch.Tensor, breaks: torch.Tensor,
              keys: torch.Tensor) -> torch.Tensor:
    """Each token's row in the memory: 1 + the index of its word's key in the sorted ``keys``, or 0
    (the zero row) for a word not in the table."""
    h, _, _ = word_hashes(input_ids, starts, breaks)
    if keys.numel() == 0:
        return torch.zeros_like(h)
    at = torch.searchsorted(keys, h).clamp(max=keys.numel() - 1)
    return torch.where(keys[at] == h, at + 1, torch.zeros_like(at))


def count_words(tokenizer, texts: Iterable[list[str]], vocab_size: int) -> collections.Counter:
    """Occurrences of each multi-piece word key in the texts (lists of strings)."""
    starts, breaks = piece_tables(tokenizer, vocab_size)
    counts: collections.Counter = collections.Counter()
    for batch in texts:
        enc = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        width = max((len(r) for r in enc), default=0)
        if not width:
            continue
        pad = tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in enc], dtype=torch.long)
        h, opens, lengths = word_hashes(ids, starts, breaks)
        real = torch.tensor([[j < len(r) for j in range(width)] for r in enc])
        take = opens & real & (lengths >= 2)
        counts.update(h[take].tolist())
    return counts


def build_keys(tokenizer, texts: Iterable[list[str]], vocab_size: int, min_count: int = 2) -> torch.Tensor:
    """The sorted key table: every multi-piece word of ``texts`` seen at least ``min_count`` times."""
    if min_count < 1:
        raise ValueError(f"min_count={min_count}: a word must be seen at least once")
    counts = count_words(tokenizer, texts, vocab_size)
    return torch.tensor(sorted(k for k, c in counts.items() if c >= min_count), dtype=torch.long)
