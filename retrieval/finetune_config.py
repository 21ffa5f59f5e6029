"""The fine-tuning config (retrieval.finetune): typed sections, checked like pretraining's
(dialogbert.config: a TOML file, then ``section.key=value`` overrides, unknown keys rejected).
configs/finetune_e5.toml is the demo's; each key's comment here says what it does."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from dialogbert.config import Sections, read_config
from retrieval.encoder import check_precision


@dataclass
class FtRun:
    seed: int = 0


@dataclass
class FtData:
    context_turns: int = 5         # the protocol's context: up to 5 turns before the response
    max_length: int = 128
    max_turn_tokens: int = 64
    sources: list[str] = field(default_factory=list)  # e.g. ["chatbotdata"]: one corpus of a mixed folder
    valid_fraction: float = 0.0    # > 0: hold out this share of TRAIN conversations, report R10@1 on it
    batch_by_source: bool = False  # dual: each batch from one corpus (its in-batch negatives of the same kind); remainders mixed
    topic_batches: int = 0         # > 0: each batch cut from one cluster of about this many similar contexts of one corpus (retrieval.topics)
    source_weights: list[str] = field(default_factory=list)  # e.g. ["chitchat:0.5"]: a corpus's pairs this many times an epoch (losses.batch_order)


@dataclass
class FtModel:
    kind: str = "dual"             # "dual" encoder, or "cross" (the re-ranker, retrieval.rerank)
    pooling: str = "mean"          # dual: "mean" over non-pad tokens or "cls"
    zero_dialog_ids: bool = False  # ablation: speaker/turn ids all 0 in fine-tuning and evaluation
    context_prefix: str = ""       # dual: text after [CLS] of contexts ("query:" for e5) ...
    response_prefix: str = ""      # ... and of replies ("passage:"), kept in retrieval.json for serving
    dropout: float = -1.0          # >= 0: every dropout of the model (hidden and attention) at this rate while fine-tuning; < 0 keeps the checkpoint's


@dataclass
class FtTrain:
    batch_size: int = 64           # dual: in-batch negatives; cross: contexts per step
    group_size: int = 8            # cross: candidates per context (the true one + sampled negatives)
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0      # cosine decay to lr * min_lr_ratio (dialogbert.train.lr_at)
    max_steps: int = 500
    max_minutes: float = 0.0       # > 0: stop (and save) after this many minutes of training in all (a resumed run counts the earlier ones)
    scale: float = 20.0            # dual: MultipleNegativesRankingLoss scale (1 / temperature)
    learn_scale: bool = False
    symmetric: bool = True         # dual: context->response and response->context losses
    hard_negatives: bool = False   # another turn of the same conversation as a negative
    copy_negatives: bool = False   # each context's newest turn as a negative (a bot must not echo it)
    contrast_negatives: bool = False  # dual: a negated or tense-shifted copy of each true reply as a negative (retrieval.adversarial)
    contrast_share: float = 1.0    # with contrast_negatives: the share of a batch's pairs (drawn at random) that get one
    grad_clip: float = 1.0
    length_window: int = 0         # > 0: batches of similar context length, sorted within runs of this many batches
    length_chunk: int = 0          # > 0: a batch's contexts and replies run through the model this many at a time, sorted by length
    save_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 25
    threads: int = 0               # torch CPU threads; 0 keeps torch's default
    precision: str = "fp32"        # "bf16": matmuls autocast to bfloat16, weights and optimizer in fp32; "auto": bf16 where the hardware has it natively
    freeze_layers: int = 0         # > 0: the embeddings (word, position, speaker, turn) and the bottom N layers are not trained: no backward through them
    word_lr_mult: float = 1.0      # the word-embedding rows learn at this multiple of the learning rate ...
    word_lr_hangul_only: bool = False  # ... only those of pieces with Hangul; the others at the base rate (retrieval.word_rows)
    memory_lr_mult: float = 1.0    # the word memory's rows (a base built with one) at this multiple
    reply_memory: bool = False     # dual: after training, each training reply's vector moved towards its contexts' (retrieval.reply_memory)


@dataclass
class FinetuneConfig(Sections):
    run: FtRun = field(default_factory=FtRun)
    data: FtData = field(default_factory=FtData)
    model: FtModel = field(default_factory=FtModel)
    train: FtTrain = field(default_factory=FtTrain)


def load_config(config_path: str | Path | None = None, overrides: Sequence[str] = ()) -> FinetuneConfig:
    """Defaults, then the TOML file, then dotted ``section.key=value`` overrides, all checked
    (unknown keys and wrong types are errors that list the valid keys), then validated."""
    cfg = read_config(config_path, overrides, cls=FinetuneConfig)
    m, t = cfg.model, cfg.train
    if m.kind not in ("dual", "cross"):
        raise ValueError(f"model.kind={m.kind!r}: use 'dual' (the encoder) or 'cross' (the re-ranker)")
    if m.pooling not in ("mean", "cls"):
        raise ValueError(f"model.pooling={m.pooling!r}: use 'mean' or 'cls'")
    if t.group_size < 2:
        raise ValueError(f"train.group_size={t.group_size}: a group needs the true candidate and >= 1 negative")
    check_precision(t.precision, "train.precision")
    for key in ("batch_size", "max_steps", "log_every"):
        if getattr(t, key) < 1:
            raise ValueError(f"train.{key}={getattr(t, key)} must be >= 1")
    if t.freeze_layers < 0:
        raise ValueError(f"train.freeze_layers={t.freeze_layers} must be >= 0")
    if m.dropout >= 1.0:
        raise ValueError(f"model.dropout={m.dropout} must be below 1 (< 0 keeps the checkpoint's rates)")
    if not 0.0 <= t.contrast_share <= 1.0:
        raise ValueError(f"train.contrast_share={t.contrast_share} must be between 0 and 1")
    for key in ("word_lr_mult", "memory_lr_mult"):
        if getattr(t, key) <= 0:
            raise ValueError(f"train.{key}={getattr(t, key)} must be above 0")
    source_weights(cfg.data.source_weights)
    return cfg


def source_weights(items: Sequence[str]) -> dict[str, float]:
    """``data.source_weights`` (``["chitchat:0.5", ...]``) as {corpus: weight}, each weight above 0."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = str(item).rpartition(":")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name.strip() or not weight > 0 or not math.isfinite(weight):
            raise ValueError(f"data.source_weights: {item!r} is not CORPUS:WEIGHT with a weight above 0 "
                             f"(e.g. \"chitchat:0.5\")")
        out[name.strip()] = weight
    return out
