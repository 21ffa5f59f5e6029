"""The model a pretraining run starts from: a fresh DialogBertForPreTraining or one initialised
from a BERT or dialogbert folder (``model.init_from``), the tokenizer it uses, and the MLM bias set
at the corpus's unigram prior. Separate from the loop (dialogbert.train): everything here happens
once, before the first step."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dialogbert.config import Config
from dialogbert.data import PretrainStream
from dialogbert.modeling import DialogBertConfig, DialogBertForPreTraining
from dialogbert.tokenizer import adopt_tokenizer, load_tokenizer

ARCH_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "max_position_embeddings")
PASS_KEYS = ("hidden_act", "layer_norm_eps")


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file()


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file
        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin to initialise from")


def _bert_key(key: str) -> str:
    """Map a BertModel / BertForPreTraining / dialogbert key onto DialogBertForPreTraining's."""
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    if key.startswith(("embeddings.", "encoder.", "pooler.")):
        key = "bert." + key
    return key


def copy_compatible_weights(model: DialogBertForPreTraining, src: dict[str, torch.Tensor],
                            grow_vocab: bool = False) -> dict[str, list[str]]:
    """Copy every weight whose name and shape match; grow/shrink token-type, position and turn
    embeddings by rows (new token-type rows start as row 0 plus noise, so speakers begin as
    BERT's segment A); leave the rest (e.g. the turn embedding) as initialised. ``grow_vocab``
    (the source's own tokenizer, extended by added tokens, is used): the word embeddings and
    the MLM bias keep the source's rows and grow by the added ones. Without it a vocabulary of
    another size means another tokenizer, and those weights start fresh."""
    report: dict[str, list[str]] = {"copied": [], "resized": [], "new": [], "ignored": []}
    src = {_bert_key(k): v for k, v in src.items()}
    own = model.state_dict()
    std = model.config.initializer_range
    with torch.no_grad():
        for key, param in own.items():
            if key not in src:
                report["new"].append(key)
                continue
            value = src[key].to(param.dtype)
            if value.shape == param.shape:
                param.copy_(value)
                report["copied"].append(key)
            elif (key.endswith(("token_type_embeddings.weight", "position_embeddings.weight", "turn_embeddings.weight"))
                  or (grow_vocab and key.endswith("word_embeddings.weight") and value.shape[0] < param.shape[0])) \
                    and value.ndim == 2 and value.shape[1] == param.shape[1]:
                n = min(value.shape[0], param.shape[0])
                param[:n].copy_(value[:n])
                if param.shape[0] > n and key.endswith("token_type_embeddings.weight"):
                    param[n:].copy_(value[0] + torch.randn_like(param[n:]) * std)
                elif param.shape[0] > n and key.endswith("word_embeddings.weight"):
                    # tokens the tokenizer gained (placeholders): the mean embedding plus noise
                    param[n:].copy_(value.mean(0) + torch.randn_like(param[n:]) * std)
                report["resized"].append(f"{key} {tuple(value.shape)}->{tuple(param.shape)}")
            elif grow_vocab and key.endswith("predictions.bias") and value.ndim == 1 \
                    and value.shape[0] < param.shape[0]:
                n = value.shape[0]
                param[:n].copy_(value)
                param[n:].fill_(float(value.mean()))
                report["resized"].append(f"{key} {tuple(value.shape)}->{tuple(param.shape)}")
            else:
                report["ignored"].append(f"{key} {tuple(value.shape)} vs {tuple(param.shape)}")
        report["ignored"] += [k for k in src if k not in own]
    model.tie_weights()
    return report


def build_model(cfg: Config, vocab_size: int, pad_token_id: int,
                grow_vocab: bool = False) -> tuple[DialogBertForPreTraining, dict | None]:
    """A fresh DialogBertForPreTraining, or one initialised from ``model.init_from`` (whose
    architecture then wins over [model]; the resolved config records what was used)."""
    m = cfg.model
    extra: dict[str, Any] = {}
    src = None
    if m.init_from:
        folder = Path(m.init_from)
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"model.init_from={folder}: no config.json; point it at a Hugging Face "
                                    f"BERT or dialogbert folder")
        theirs = json.loads(cfg_file.read_text("utf-8"))
        for k in ARCH_KEYS:
            if k in theirs:
                setattr(m, k, int(theirs[k]))
        extra = {k: theirs[k] for k in PASS_KEYS if k in theirs}
        if cfg.data.max_length > m.max_position_embeddings:
            raise ValueError(f"data.max_length={cfg.data.max_length} > max_position_embeddings="
                             f"{m.max_position_embeddings} of {folder}; lower data.max_length")
        src = _read_weights(folder)
    config = DialogBertConfig(
        vocab_size=vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads, intermediate_size=m.intermediate_size,
        max_position_embeddings=m.max_position_embeddings, max_turns=m.max_turns, num_speakers=m.num_speakers,
        hidden_dropout_prob=m.hidden_dropout_prob, attention_probs_dropout_prob=m.attention_probs_dropout_prob,
        initializer_range=m.initializer_range, pad_token_id=pad_token_id, **extra)
    model = DialogBertForPreTraining(config)
    report = copy_compatible_weights(model, src, grow_vocab=grow_vocab) if src is not None else None
    return model, report


def pick_tokenizer(cfg: Config):
    if cfg.model.init_from and _has_tokenizer(Path(cfg.model.init_from)):
        return adopt_tokenizer(cfg.model.init_from), cfg.model.init_from
    if not cfg.data.tokenizer:
        raise ValueError("no tokenizer: set data.tokenizer (a folder from `dialogbert tokenizer`) or "
                         "model.init_from to a folder that has one")
    return load_tokenizer(cfg.data.tokenizer), cfg.data.tokenizer


def unigram_log_probs(shards, tokenizer, data_cfg, seed: int = 0, max_batches: int = 200) -> torch.Tensor:
    """log p(token) over the tokens the MLM predicts (masked positions) in the first
    ``max_batches`` training batches, add-one smoothed; special tokens get -inf-ish (never labels)."""
    counts = torch.ones(len(tokenizer), dtype=torch.float64)
    stream = PretrainStream(shards, tokenizer, data_cfg, split="train", seed=seed)
    for i, items in enumerate(stream.raw_batches(0)):
        if i >= max_batches:
            break
        for f, _ in items:
            counts += torch.bincount(torch.tensor(f["input_ids"]), minlength=len(tokenizer)).double()
    if stream.collator is not None:
        counts[stream.collator.never] = 1e-4  # [CLS]/[SEP]/[PAD]/... are never MLM labels
    return (counts / counts.sum()).log().float()


def init_output_bias(model: DialogBertForPreTraining, log_probs: torch.Tensor) -> None:
    """Start the MLM decoder bias at the (centred) log unigram distribution.

    With the bias at 0, every step of the first few hundred pushes the tied word embeddings toward
    one shared "frequent token" direction (Adam moves each row by ~lr whatever its gradient), which
    washes out token identity in the input and keeps a small model on the unigram plateau; the
    bias itself can only move ~lr per step, far too slowly to absorb the ~10-nat range of
    log-frequencies. Initialising it at the prior takes that load off the embeddings."""
    with torch.no_grad():
        bias = model.cls.predictions.bias
        bias.copy_((log_probs - log_probs.mean()).to(bias.dtype))
    model.tie_weights()
