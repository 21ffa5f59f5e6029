"""The pretraining data stream: shards -> masked, next-turn-labelled, length-bucketed batches.

Examples. For every turn t >= ``min_context_turns`` of every conversation of the split (by
conversation, :func:`preprocess.schema.split_of`): the context is up to ``max_turns - 1``
previous turns and the candidate is the newest turn, encoded by
:func:`dialogbert.features.encode_dialog` (the one formatting function). Half the time the
candidate is the true turn t (``next_turn_label`` 0); otherwise (label 1) it is a turn of
ANOTHER conversation drawn from a ring buffer of recent turns or, with share
``same_conv_negative_share``, a later non-adjacent turn (t+2 or later) of the same
conversation when one exists, or, with share ``copy_negative_share``, a copy or near-copy of a
turn of the context itself (:func:`near_copy`). With ``negatives_by_source`` that other conversation is of the
same source (``Conversation.source``: one corpus or export format): in a mixed corpus a turn of
another corpus gives itself away by its style, so the head can learn which corpus a turn is from
instead of whether it answers. Measured on the Korean mix (ChatbotData, XPersona-ko, chatterbot;
tiny model, 1,500 steps): trained the default way, next-turn accuracy is 0.753 against any
source's negatives but 0.660 against the same source's; trained by source, 0.665 there. Ranking
the ChatbotData and XPersona-ko validation candidates by the head alone is at chance either way
(R10@1 0.096-0.107), so the default keeps the measured configuration (False); docs/pretraining.md. A negative keeps the true turn's speaker, so the speaker
embedding gives nothing away, and is never token-for-token equal to the true turn. With
``next_turn=False`` the examples are the contexts ending at turn t (MLM only).

Batches. ``shuffle_buffer`` examples are shuffled, sorted by length and cut into batches
(``batch_size`` sequences, or fewer when ``max_batch_tokens`` caps the padded tokens), then the
batch order is shuffled: padding stays small and batches still mix. Masking is dynamic (drawn per
batch from a generator seeded by (seed, epoch, rank, batch index)): 15%, 80/10/10 by
``transformers.DataCollatorForLanguageModeling``; never on [CLS]/[SEP]/[PAD]/[UNK]/[MASK] or the
anonymizer placeholders, and a random replacement is never one of those either.

Streaming and resuming. Conversations stream from the shard files, all of the corpus interleaved
(up to ``MAX_READERS`` line-aligned chunks read at once, the next one drawn at random by what it
has left, so every stretch of the stream mixes all sources); nothing holds the corpus. Ranks take
every ``world_size``-th conversation (disjoint).
Everything is a pure function of (seed, epoch, rank), so ``state_dict()`` is just the position
(epoch, batches yielded in the epoch): a resumed stream regenerates the epoch and skips that
many batches without masking or padding them, then yields exactly what the uninterrupted stream
would have yielded next. Iterate one stream from one place (no DataLoader worker copies: a
worker's position would not come back to the main process).

Here: DataConfig, the examples and their negatives, bucketing, resuming and the held-out batches.
The chunked reading of the shard files is in dialogbert.shard_chunks and the padding and masking
(MlmCollator) in dialogbert.masking; both are importable from here as before.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, fields
from itertools import islice
from typing import Iterator

import torch

from dialogbert.features import encode_dialog, pad_batch, turn_text
from dialogbert.masking import PAD_MULTIPLE, MlmCollator, mlm_collator  # noqa: F401
from dialogbert.shard_chunks import MAX_READERS, MIN_CHUNK_BYTES, READ_AHEAD_BYTES, chunk_readers  # noqa: F401
from preprocess.schema import parse_line, shard_files, split_of


@dataclass
class DataConfig:
    max_length: int = 128
    max_turns: int = 8
    num_speakers: int = 4
    max_turn_tokens: int = 64
    batch_size: int = 32            # sequences per batch (upper bound)
    max_batch_tokens: int = 0       # if > 0: cap padded tokens per batch
    mlm: bool = True
    mlm_probability: float = 0.15
    next_turn: bool = True
    same_conv_negative_share: float = 0.25  # of the negatives: share from a later non-adjacent turn
    negatives_by_source: bool = False  # True: the other negatives are turns of the same source only
    copy_negative_share: float = 0.0  # of the negatives: share that copies a context turn (half near-copies)
    shuffle_buffer: int = 2048      # examples buffered for shuffling + length bucketing
    min_context_turns: int = 1
    dialog_ids: bool = True         # False: speaker and turn ids all 0 (the ablation without them)

    def __post_init__(self):
        if self.max_turns < 2 and self.next_turn:
            raise ValueError(f"max_turns={self.max_turns}: next-turn examples need >= 2 turns "
                             f"(a context and a candidate); raise max_turns or set next_turn=False")
        if not 0.0 <= self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability={self.mlm_probability} must be in [0, 1)")
        for key in ("same_conv_negative_share", "copy_negative_share"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key}={getattr(self, key)} must be in [0, 1]")
        if self.batch_size < 1 or self.shuffle_buffer < 1 or self.min_context_turns < 1:
            raise ValueError("batch_size, shuffle_buffer and min_context_turns must be >= 1")

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown data config keys {unknown}; known: {sorted(known)}")
        return cls(**d)


def near_copy(rng: random.Random, ids: list[int]) -> list[int]:
    """A context turn as a wrong next turn: half the time the copy itself, otherwise with one token
    dropped or repeated. A bot that ranks by overlap with the context prefers exactly these; the
    next-turn head learns that repeating the other speaker is not an answer."""
    ids = list(ids)
    if len(ids) < 2 or rng.random() < 0.5:
        return ids
    i = rng.randrange(len(ids))
    return ids[:i] + ids[i + 1:] if rng.random() < 0.5 else ids[:i + 1] + ids[i:]


def _seed(*parts) -> int:
    """A 63-bit seed from any parts (stable across processes, unlike hash())."""
    h = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


def _padded_len(n: int) -> int:
    return -(-n // PAD_MULTIPLE) * PAD_MULTIPLE


# One example: (encode_dialog features, next_turn_label or None).
Example = tuple[dict, "int | None"]


class PretrainStream:
    """An endless, resumable iterator of pretraining batches (epochs roll over).

    Each batch is a dict of int64 tensors: input_ids, attention_mask, token_type_ids, turn_ids,
    plus labels (if cfg.mlm; -100 = not masked) and next_turn_label (if cfg.next_turn;
    0 = true continuation, 1 = not)."""

    def __init__(self, shards, tokenizer, cfg: DataConfig, split: str | None = "train", seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.shards, self.tokenizer, self.cfg = shards, tokenizer, cfg
        self.split, self.seed, self.rank, self.world_size = split, seed, rank, world_size
        self.files = shard_files(shards)
        self.collator = MlmCollator(tokenizer, cfg) if cfg.mlm else None
        self.epoch = 0
        self.batches_in_epoch = 0

    # ---- the deterministic pipeline: conversations -> examples -> unmasked batches ----------
    def conversations(self, epoch: int):
        """This rank's conversations of the split, the whole corpus interleaved.

        Shards are written in input order (one corpus after another, also inside a file), so
        reading them front to back trains on one source at a time, and a short run never sees
        the later sources. Instead the shard bytes are cut into up to ``MAX_READERS`` line-aligned
        chunks, all read at once: the next conversation comes from a chunk drawn with probability
        proportional to its estimated lines left (seeded per epoch, the same on every rank), so any
        stretch of the stream is a sample of the whole corpus and the chunks run out together.
        Only a small read-ahead per chunk is held in memory. Deterministic in (seed, epoch)."""
        rng = random.Random(_seed(self.seed, "files", epoch))  # same on every rank
        readers = chunk_readers(self.files)
        i = 0
        while readers:
            k = rng.choices(range(len(readers)), weights=[r.left for r in readers])[0] if len(readers) > 1 else 0
            got = readers[k].next_line()
            if got is None:
                readers.pop(k)
                continue
            path, lineno, line = got
            text = line.decode("utf-8")
            if not text.strip():
                continue
            conv = parse_line(text, path, lineno)
            if self.split is not None and split_of(conv) != self.split:
                continue
            if i % self.world_size == self.rank:
                yield conv
            i += 1

    def _encode(self, token_ids: list[list[int]], speakers: list[str]) -> dict:
        c = self.cfg
        f = encode_dialog(self.tokenizer, [(s, "") for s in speakers], max_length=c.max_length,
                          max_turns=c.max_turns, num_speakers=c.num_speakers,
                          max_turn_tokens=c.max_turn_tokens, token_ids=token_ids)
        if not c.dialog_ids:
            f["token_type_ids"] = f["turn_ids"] = [0] * len(f["input_ids"])
        return f

    def _negative(self, rng: random.Random, ids: list[list[int]], t: int, recent: list,
                  elsewhere: list | None = None, lo: int = 0) -> list[int] | None:
        true = ids[t]
        if ids[lo:t] and rng.random() < self.cfg.copy_negative_share:
            cand = near_copy(rng, rng.choice(ids[lo:t]))
            if cand and cand != true:
                return cand
        later = range(t + 2, len(ids))
        if len(later) and rng.random() < self.cfg.same_conv_negative_share:
            for _ in range(8):
                cand = ids[rng.choice(later)]
                if cand != true:
                    return cand
        # later turns only if no other conversation yet; another source's turns only before its own has any
        for pool in (recent, [ids[j] for j in later], elsewhere or []):
            if pool:
                for _ in range(8):
                    cand = rng.choice(pool)
                    if cand != true:
                        return cand
        return None

    def examples(self, epoch: int) -> Iterator[Example]:
        c = self.cfg
        rng = random.Random(_seed(self.seed, "examples", epoch, self.rank))
        cap = max(1024, c.shuffle_buffer)
        rings: dict[str, list[list[int]]] = {}  # ring buffers of turns of earlier conversations, by source
        pos: dict[str, int] = {}
        for conv in self.conversations(epoch):
            if not conv.turns:
                continue
            key = conv.source if c.negatives_by_source else ""
            recent = rings.setdefault(key, [])
            elsewhere = None
            if not recent and len(rings) > 1:  # the first conversations of a source: another's turns
                elsewhere = next((r for k, r in rings.items() if k != key and r), None)
            ids = [x[: c.max_turn_tokens] for x in self.tokenizer(
                [turn_text(t.text) for t in conv.turns], add_special_tokens=False, verbose=False)["input_ids"]]
            speakers = [t.speaker for t in conv.turns]
            for t in range(c.min_context_turns, len(ids)):
                if c.next_turn:
                    lo = max(0, t - (c.max_turns - 1))
                    cand, label = ids[t], 0
                    if rng.random() < 0.5:
                        neg = self._negative(rng, ids, t, recent, elsewhere, lo)
                        if neg is not None:
                            cand, label = neg, 1
                    yield self._encode(ids[lo:t] + [cand], speakers[lo:t + 1]), label
                else:
                    lo = max(0, t + 1 - c.max_turns)
                    yield self._encode(ids[lo:t + 1], speakers[lo:t + 1]), None
            for x in ids:
                if x:
                    if len(recent) < cap:
                        recent.append(x)
                    else:
                        recent[pos.get(key, 0) % cap] = x
                    pos[key] = pos.get(key, 0) + 1

    def cut(self, items: list[Example]) -> list[list[Example]]:
        """Cut length-sorted examples into batches (batch_size, and max_batch_tokens if set)."""
        c = self.cfg
        batches, cur, longest = [], [], 0
        for item in items:
            n = _padded_len(len(item[0]["input_ids"]))
            if cur and (len(cur) >= c.batch_size or
                        (c.max_batch_tokens > 0 and (len(cur) + 1) * max(longest, n) > c.max_batch_tokens)):
                batches.append(cur)
                cur, longest = [], 0
            cur.append(item)
            longest = max(longest, n)
        if cur:
            batches.append(cur)
        return batches

    def raw_batches(self, epoch: int) -> Iterator[list[Example]]:
        """The epoch's batches before padding and masking (deterministic)."""
        rng = random.Random(_seed(self.seed, "batches", epoch, self.rank))
        buf: list[Example] = []

        def flush():
            rng.shuffle(buf)
            buf.sort(key=lambda e: len(e[0]["input_ids"]))  # stable: ties keep the shuffle
            batches = self.cut(buf)
            rng.shuffle(batches)
            return batches

        for ex in self.examples(epoch):
            buf.append(ex)
            if len(buf) >= self.cfg.shuffle_buffer:
                yield from flush()
                buf = []
        if buf:
            yield from flush()

    def collate(self, items: list[Example], epoch: int, index: int) -> dict[str, torch.Tensor]:
        feats = [f for f, _ in items]
        if self.collator is not None:
            g = torch.Generator().manual_seed(_seed(self.seed, "mask", epoch, self.rank, index))
            batch = self.collator(feats, generator=g)
        else:
            batch = pad_batch(feats, self.tokenizer.pad_token_id, pad_to_multiple_of=PAD_MULTIPLE)
        if self.cfg.next_turn:
            batch["next_turn_label"] = torch.tensor([label for _, label in items], dtype=torch.long)
        return batch

    # ---- iteration and resumption --------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            epoch, skip = self.epoch, self.batches_in_epoch
            n = 0
            for i, items in enumerate(self.raw_batches(epoch)):
                n = i + 1
                if i < skip:
                    continue  # resuming: regenerate, but skip padding and masking
                batch = self.collate(items, epoch, i)
                self.batches_in_epoch = i + 1
                yield batch
            if n == 0:
                raise ValueError(f"{self.shards}: split {self.split!r} gives rank {self.rank}/{self.world_size} "
                                 f"no examples (no conversations with > {self.cfg.min_context_turns} turns); "
                                 f"check the shards, the split or world_size")
            self.epoch, self.batches_in_epoch = epoch + 1, 0

    def _identity(self) -> dict:
        return {"seed": self.seed, "rank": self.rank, "world_size": self.world_size, "split": self.split,
                "config": asdict(self.cfg)}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch, **self._identity()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Resume at ``state``'s position. ``strict`` checks that seed, rank, world_size, split
        and data config match (otherwise the position means different batches); pass
        ``strict=False`` to resume at the same epoch/offset anyway."""
        if strict:
            mine = self._identity()
            if isinstance(state.get("config"), dict):  # a key added since that run: it ran with the default
                state = {**state, "config": {**asdict(DataConfig()), **state["config"]}}
            diff = {k: (state.get(k), mine[k]) for k in mine if k in state and state[k] != mine[k]}
            if diff:
                raise ValueError(f"data state does not match this stream (saved, now): {diff}; resume with "
                                 f"the same settings or call load_state_dict(state, strict=False)")
        self.epoch = int(state["epoch"])
        self.batches_in_epoch = int(state["batches_in_epoch"])


def eval_batches(shards, tokenizer, cfg: DataConfig, split: str = "test", max_examples: int = 512,
                 seed: int = 1234) -> list[dict[str, torch.Tensor]]:
    """Deterministic held-out batches (same keys as the stream): ``max_examples`` examples drawn
    uniformly from the whole ``split`` (a seeded reservoir sample over its examples, so every
    source is represented, not just the first file's), length-sorted, with fixed negatives and
    fixed masking."""
    stream = PretrainStream(shards, tokenizer, cfg, split=split, seed=seed)
    rng = random.Random(_seed(seed, "eval-sample"))
    items: list[Example] = []
    for n, ex in enumerate(stream.examples(0)):  # reservoir sampling (Algorithm R)
        if n < max_examples:
            items.append(ex)
        else:
            j = rng.randrange(n + 1)
            if j < max_examples:
                items[j] = ex
    if not items:
        raise ValueError(f"{shards}: split {split!r} has no conversation with > {cfg.min_context_turns} turns")
    items.sort(key=lambda e: len(e[0]["input_ids"]))
    return [stream.collate(b, 0, i) for i, b in enumerate(stream.cut(items))]


def padding_efficiency(batches) -> float:
    """Non-pad tokens / padded tokens over batches (dicts with attention_mask)."""
    real = total = 0
    for b in batches:
        m = b["attention_mask"]
        real += int(m.sum())
        total += m.numel()
    return real / max(1, total)


def sequential_batches(stream: PretrainStream, n_batches: int, epoch: int = 0) -> list[dict]:
    """Naive baseline: the same examples in stream order, cut every batch_size, no bucketing."""
    it = stream.examples(epoch)
    out = []
    for _ in range(n_batches):
        chunk = list(islice(it, stream.cfg.batch_size))
        if not chunk:
            break
        out.append(pad_batch([f for f, _ in chunk], stream.tokenizer.pad_token_id, PAD_MULTIPLE))
    return out
