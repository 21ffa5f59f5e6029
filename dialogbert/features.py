"""The one function that turns dialog turns into model inputs.

Pretraining, fine-tuning, indexing, evaluation and serving all call :func:`encode_dialog`, so a
context looks the same to the model everywhere.

Layout: ``[CLS] turn_1 [SEP] turn_2 [SEP] ... turn_n [SEP]`` (oldest first; [SEP] is the turn
separator; the messages of a turn are joined by a space).

* ``turn_ids``: 0 for [CLS] and padding, 1 for the newest turn (its tokens and its [SEP]),
  2 for the turn before, ... capped at ``max_turns``;
* ``token_type_ids`` (speakers, relative): 0 for [CLS] and padding, 1 for the speaker of the
  newest turn, 2 for the next distinct speaker going back, ... capped at ``num_speakers - 1``.

Truncation keeps the newest turns: turns are dropped from the oldest end until the sequence fits,
and each turn is cut to ``max_turn_tokens`` (keeping its start). The newest turn is always kept.
"""
from __future__ import annotations

from typing import Sequence

# A turn as the encoder sees it: (speaker pseudonym, text). Text may hold "\n" between messages.
DialogTurn = tuple[str, str]


def turn_text(text: str) -> str:
    return " ".join(part.strip() for part in text.split("\n") if part.strip())


def relative_speakers(speakers: Sequence[str], num_speakers: int) -> list[int]:
    """Map pseudonyms to 1 = newest turn's speaker, 2 = the next distinct one back, ..."""
    order: dict[str, int] = {}
    for s in reversed(speakers):
        if s not in order:
            order[s] = len(order) + 1
    cap = max(1, num_speakers - 1)
    return [min(order[s], cap) for s in speakers]


def encode_dialog(tokenizer, turns: Sequence[DialogTurn], max_length: int = 256,
                  max_turns: int = 16, num_speakers: int = 4, max_turn_tokens: int = 64,
                  token_ids: Sequence[Sequence[int]] | None = None,
                  prefix_ids: Sequence[int] = ()) -> dict[str, list[int]]:
    """Encode turns (oldest first) into ``input_ids``, ``token_type_ids``, ``turn_ids``,
    ``attention_mask`` (python lists, unpadded). ``token_ids`` may give the turns already
    tokenized (without special tokens), which saves the tokenizer call in tight loops.
    ``prefix_ids`` go right after [CLS] with turn and speaker id 0, never cut: e5's ``query: `` /
    ``passage: `` marks, which make a context and a reply of the same words two inputs."""
    if not turns:
        raise ValueError("encode_dialog needs at least one turn")
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if token_ids is None:
        texts = [turn_text(t) for _, t in turns]
        token_ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    speakers = relative_speakers([s for s, _ in turns], num_speakers)
    prefix_ids = list(prefix_ids)
    budget = max_length - 1 - len(prefix_ids)  # room after [CLS] and the prefix
    kept: list[tuple[list[int], int, int]] = []  # (ids, turn id, speaker id), newest first
    for back, i in enumerate(range(len(turns) - 1, -1, -1)):
        ids = list(token_ids[i][:max_turn_tokens])
        need = len(ids) + 1
        if back >= max_turns or (kept and need > budget):
            break
        if need > budget:  # the newest turn alone is too long: cut it to fit
            ids = ids[:budget - 1]
            need = len(ids) + 1
        kept.append((ids, back + 1, speakers[i]))
        budget -= need
    input_ids, types, turn_ids = [cls_id, *prefix_ids], [0] * (1 + len(prefix_ids)), [0] * (1 + len(prefix_ids))
    for ids, tid, sid in reversed(kept):
        n = len(ids) + 1
        input_ids += ids + [sep_id]
        types += [sid] * n
        turn_ids += [tid] * n
    return {"input_ids": input_ids, "token_type_ids": types, "turn_ids": turn_ids,
            "attention_mask": [1] * len(input_ids)}


def pad_batch(features: Sequence[dict[str, list[int]]], pad_id: int, pad_to_multiple_of: int = 8):
    """Pad a list of encode_dialog outputs into a dict of int64 tensors (right padding)."""
    import torch

    longest = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of > 1:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    out = {}
    for key, fill in (("input_ids", pad_id), ("token_type_ids", 0), ("turn_ids", 0), ("attention_mask", 0)):
        out[key] = torch.tensor([f[key] + [fill] * (longest - len(f[key])) for f in features],
                                dtype=torch.long)
    return out
