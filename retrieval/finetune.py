"""Dual-encoder fine-tuning with in-batch negatives (Henderson et al. 2017, "Efficient Natural
Language Response Suggestion for Smart Reply"; sentence-transformers'
MultipleNegativesRankingLoss).

One encoder (shared weights) embeds contexts and responses; scores = scale * cosine matrix,
labels = the diagonal, cross-entropy (both directions when ``symmetric``). In-batch entries
whose response text equals the positive's are masked out (they are not negatives). Optional
hard negatives: another turn of the same conversation as an extra response column.

Pairs come from the TRAIN split only (each turn t >= 1 with up to 5 turns of context, as the
protocol's examples). ``init`` may be a dialogbert checkpoint or a plain BERT folder (e.g.
all-MiniLM-L6-v2). Output: ``out/`` in HF format (AutoModel loads it) with the tokenizer and
``retrieval.json``; checkpoints in ``out/checkpoints/step-N`` (weights, optimizer, trainer
state) let the same command resume after an interruption.
"""
from __future__ import annotations

import json
import math
import random
import re
import shutil
import time
import tomllib
from copy import deepcopy
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from preprocess.schema import read_shards, split_of
from retrieval.encoder import Encoder, EncoderSettings
from retrieval.examples import conversation_examples

DEFAULTS: dict = {
    "run": {"seed": 0},
    "data": {"context_turns": 5, "max_length": 128, "max_turn_tokens": 64, "sources": [],
             "valid_fraction": 0.0},
    "model": {"pooling": "mean", "zero_dialog_ids": False},
    "train": {"batch_size": 64, "lr": 5e-5, "weight_decay": 0.01, "warmup_steps": 50,
              "max_steps": 500, "max_minutes": 0.0, "scale": 20.0, "learn_scale": False,
              "symmetric": True, "hard_negatives": False, "grad_clip": 1.0,
              "save_every": 200, "keep_checkpoints": 2, "log_every": 25, "threads": 0},
}


# ---- config ---------------------------------------------------------------------------------
def _parse_value(raw: str, like):
    if isinstance(like, bool):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true/false, got {raw!r}")
    if isinstance(like, int):
        return int(raw)
    if isinstance(like, float):
        return float(raw)
    if isinstance(like, list):
        return [x for x in raw.split(",") if x]
    return raw


def load_config(config_path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict:
    """Defaults, then the TOML file, then dotted ``section.key=value`` overrides; unknown
    sections or keys are rejected with the list of known ones."""
    cfg = deepcopy(DEFAULTS)

    def put(section: str, key: str, value, where: str):
        if section not in cfg:
            raise ValueError(f"{where}: unknown section [{section}]; known: {sorted(cfg)}")
        if key not in cfg[section]:
            raise ValueError(f"{where}: unknown key {section}.{key}; known: {sorted(cfg[section])}")
        cfg[section][key] = value

    if config_path:
        with open(config_path, "rb") as f:
            data = tomllib.load(f)
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ValueError(f"{config_path}: top-level key {section!r} must be a [section]")
            for k, v in values.items():
                put(section, k, v, str(config_path))
    for ov in overrides:
        key, _, raw = ov.partition("=")
        if "." not in key:
            raise ValueError(f"override {ov!r}: use section.key=value, e.g. train.max_steps=200")
        section, k = key.split(".", 1)
        if section in cfg and k in cfg[section]:
            put(section, k, _parse_value(raw, cfg[section][k]), f"override {ov!r}")
        else:
            put(section, k, raw, f"override {ov!r}")
    return cfg


# ---- data -----------------------------------------------------------------------------------
def is_valid_conv(conv_id: str, fraction: float) -> bool:
    """A validation carve-out of the training split (a second hash, never the test split)."""
    return fraction > 0 and split_of(conv_id + "#valid", fraction=fraction) == "test"


def training_pairs(shards, context_turns: int = 5, sources: Sequence[str] = (), valid_fraction: float = 0.0,
                   part: str = "train") -> list[dict]:
    """(context, response) pairs of the TRAIN split; ``part="valid"`` gives the carve-out."""
    keep = set(sources or ())
    pairs = []
    for conv in read_shards(shards, split="train"):
        if keep and conv.source not in keep:
            continue
        if is_valid_conv(conv.id, valid_fraction) != (part == "valid"):
            continue
        others = [t.text for t in conv.turns]
        for ex in conversation_examples(conv, context_turns):
            pairs.append({"context": ex.context, "response": ex.response, "speaker": ex.speaker,
                          "conv_turns": others, "turn": ex.turn})
    return pairs


def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    perm = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(perm)
    return [perm[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)] or [perm]


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    if step < warmup:
        return base * (step + 1) / max(1, warmup)
    return base * max(0.0, (total - step) / max(1, total - warmup))


# ---- loss -----------------------------------------------------------------------------------
def mnr_loss(ctx: torch.Tensor, resp: torch.Tensor, scale: torch.Tensor | float, same_text: torch.Tensor,
             symmetric: bool = True) -> torch.Tensor:
    """MultipleNegativesRankingLoss. ctx (B, d), resp (B + H, d) normalised; the first B response
    rows are the positives; ``same_text`` (B, B+H) is True where a column repeats row i's true
    text (not a negative; the diagonal excluded)."""
    b = ctx.shape[0]
    logits = scale * ctx @ resp.T
    logits = logits.masked_fill(same_text, float("-inf"))
    labels = torch.arange(b, device=ctx.device)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    if symmetric:
        sq = logits[:, :b].T
        loss = (loss + torch.nn.functional.cross_entropy(sq, labels)) / 2
    return loss


# ---- checkpoints ----------------------------------------------------------------------------
def _steps(out: Path) -> list[Path]:
    d = out / "checkpoints"
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := re.fullmatch(r"step-(\d+)", p.name))
             and (p / "trainer_state.json").exists()]
    return [p for _, p in sorted(found)]


def _save_checkpoint(enc: Encoder, opt, state: dict, scale_param, out: Path, keep: int) -> Path:
    ck = out / "checkpoints" / f"step-{state['step']}"
    tmp = ck.with_name(ck.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    enc.save(tmp)
    torch.save({"optimizer": opt.state_dict(),
                "scale": None if scale_param is None else scale_param.detach().cpu(),
                "torch_rng": torch.get_rng_state()}, tmp / "optimizer.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n", "utf-8")
    shutil.rmtree(ck, ignore_errors=True)
    tmp.rename(ck)
    for old in _steps(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return ck


# ---- the loop -------------------------------------------------------------------------------
def finetune(init: str | Path, shards: str | Path, out: str | Path, config_path: str | Path | None = None,
             overrides: Sequence[str] = (), resume: str | None = "auto", progress: bool = True) -> Path:
    """Fine-tune ``init`` as a dual encoder on the training split of ``shards``; return ``out``."""
    cfg = load_config(config_path, overrides)
    D, M, T = cfg["data"], cfg["model"], cfg["train"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if T["threads"]:
        torch.set_num_threads(int(T["threads"]))
    seed = int(cfg["run"]["seed"])
    torch.manual_seed(seed)

    start_from, state = Path(init), {"step": 0, "epoch": 0, "batch": 0, "losses": []}
    if resume not in (None, "none", "no", "false"):
        if resume == "auto":
            found = _steps(out)
            ck = found[-1] if found else None
        else:
            ck = Path(resume)
            if not (ck / "trainer_state.json").exists():
                raise FileNotFoundError(f"{ck}: no trainer_state.json; pass a checkpoints/step-N folder or --resume none")
        if ck is not None:
            start_from = ck
            state = json.loads((ck / "trainer_state.json").read_text("utf-8"))
            print(f"finetune: resuming from {ck} (step {state['step']})")
    settings = EncoderSettings(pooling=M["pooling"], context_turns=int(D["context_turns"]),
                               max_length=int(D["max_length"]), max_turn_tokens=int(D["max_turn_tokens"]),
                               zero_dialog_ids=bool(M["zero_dialog_ids"]))
    enc = Encoder.load(start_from, **{k: getattr(settings, k) for k in vars(settings)})
    enc.path = None
    model = enc.model
    model.train()

    pairs = training_pairs(shards, int(D["context_turns"]), D["sources"], float(D["valid_fraction"]))
    bs = int(T["batch_size"])
    if len(pairs) < 2:
        raise ValueError(f"{shards}: {len(pairs)} training pairs; fine-tuning needs at least 2 "
                         f"(multi-turn conversations in the train split)")
    bs = min(bs, len(pairs))
    print(f"finetune: {len(pairs)} training pairs from {shards}, batch {bs}, init {init}")

    scale_param = None
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": float(T["weight_decay"])},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if T["learn_scale"]:
        scale_param = torch.nn.Parameter(torch.tensor(math.log(float(T["scale"]))))
        groups.append({"params": [scale_param], "weight_decay": 0.0, "lr_mult": 100.0})
    opt = torch.optim.AdamW(groups, lr=float(T["lr"]))
    if state["step"] > 0:
        saved = torch.load(start_from / "optimizer.pt", weights_only=False)
        opt.load_state_dict(saved["optimizer"])
        if scale_param is not None and saved.get("scale") is not None:
            scale_param.data.copy_(saved["scale"])
        torch.set_rng_state(saved["torch_rng"])

    max_steps, t0 = int(T["max_steps"]), time.time()
    budget = float(T["max_minutes"]) * 60
    rng = random.Random(seed + state["step"])
    step, epoch, bi = state["step"], state["epoch"], state["batch"]
    order = batch_order(len(pairs), bs, seed, epoch)
    recent: list[float] = []
    while step < max_steps:
        if bi >= len(order):
            epoch, bi = epoch + 1, 0
            order = batch_order(len(pairs), bs, seed, epoch)
        batch = [pairs[i] for i in order[bi]]
        bi += 1
        ctx_items = [p["context"] for p in batch]
        resp_texts = [p["response"] for p in batch]
        if T["hard_negatives"]:
            for p in batch:
                alts = [t for j, t in enumerate(p["conv_turns"]) if j != p["turn"] and t != p["response"]]
                if alts:
                    resp_texts.append(rng.choice(alts))
        same = torch.tensor([[j != i and resp_texts[j] == resp_texts[i] for j in range(len(resp_texts))]
                             for i in range(len(batch))])
        lr = lr_at(step, float(T["lr"]), int(T["warmup_steps"]), max_steps)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        c = enc.forward(enc.pad(enc.featurize(ctx_items)))
        r = enc.forward(enc.pad(enc.featurize([[("R", t)] for t in resp_texts])))
        scale = scale_param.exp().clamp(max=100.0) if scale_param is not None else float(T["scale"])
        loss = mnr_loss(c, r, scale, same, bool(T["symmetric"]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if T["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(params, float(T["grad_clip"]))
        opt.step()
        step += 1
        recent.append(loss.item())
        stop = budget > 0 and time.time() - t0 > budget
        if progress and (step % int(T["log_every"]) == 0 or step == max_steps or stop):
            print(f"finetune: step {step}/{max_steps} loss {np.mean(recent):.4f} lr {lr:.2e} "
                  f"scale {float(scale):.1f} {time.time() - t0:.0f}s", flush=True)
            state["losses"].append([step, round(float(np.mean(recent)), 5)])
            recent = []
        state.update(step=step, epoch=epoch, batch=bi)
        if stop or step == max_steps or (int(T["save_every"]) and step % int(T["save_every"]) == 0):
            _save_checkpoint(enc, opt, dict(state), scale_param, out, int(T["keep_checkpoints"]))
        if stop:
            print(f"finetune: stopping at step {step}: train.max_minutes={T['max_minutes']} reached")
            break

    model.eval()
    enc.save(out)
    info = {"init": str(init), "shards": str(shards), "steps": step, "pairs": len(pairs),
            "config": cfg, "seconds": round(time.time() - t0, 1),
            "parameters": sum(p.numel() for p in model.parameters()), "losses": state["losses"]}
    if float(D["valid_fraction"]) > 0:
        info["valid"] = validate(enc, shards, cfg)
        print(f"finetune: validation {info['valid']}")
    (out / "finetune.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return out


def validate(enc: Encoder, shards, cfg: dict, max_examples: int = 1000) -> dict:
    """R10@1 / MRR on the validation carve-out of the training split (for tuning; never test)."""
    from retrieval.evaluate import EncoderScorer, RetrievalEvaluator
    from retrieval.examples import Example
    D = cfg["data"]
    pairs = training_pairs(shards, int(D["context_turns"]), D["sources"], float(D["valid_fraction"]), part="valid")
    exs = [Example(p["context"], p["response"]) for p in pairs[:max_examples]]
    if len({e.response for e in exs}) < 100:
        return {"examples": len(exs), "note": "too few distinct validation responses for R100"}
    m = RetrievalEvaluator(exs)(EncoderScorer(enc))
    m["examples"] = len(exs)
    return m
