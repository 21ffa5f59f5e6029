"""Pretraining: MLM + next-turn prediction, one flat loop for torch, torchrun and deepspeed.

    pretrain("configs/tiny.toml", ["train.max_steps=200"])            # one process
    torchrun --nproc_per_node 2 -m dialogbert.cli pretrain --config configs/tiny.toml
    deepspeed --module dialogbert.cli pretrain --config configs/tiny.toml --deepspeed configs/ds_zero2.json

The loop (nanoGPT's shape): at the top of each step, evaluate every ``eval_every`` steps and
checkpoint every ``save_every``; then set the LR (a pure function of the step), run
``grad_accum`` micro-batches, step; stop at ``max_steps`` (the last step is always evaluated
and saved).

A run folder::

    <out>/config.resolved.toml     the config after overrides, paths absolute
    <out>/log.csv                  step, lr, losses, tokens/s, eval metrics
    <out>/curves.png  <out>/tb/    plots (refreshed at each eval) and TensorBoard events
    <out>/checkpoints/step-N/      config.json + model.safetensors (+ tokenizer): from_pretrained
                                   works on it; config.resolved.toml; trainer_state.pt (step,
                                   optimizer, RNG, data position per rank, the log so far);
                                   deepspeed/ (deepspeed's own state, deepspeed runs only)

A checkpoint is written to ``checkpoints/.tmp-step-N`` and renamed when complete, so a killed run
never leaves half of one; ``resume="auto"`` continues from the newest complete one, on the same
loss curve (same batches, masks, dropout and optimizer state).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dialogbert.config import Config, load_config, save_config
from dialogbert.data import PretrainStream, eval_batches
from dialogbert.engine import Engine, dist_env, make_engine
from dialogbert.modeling import DialogBertConfig, DialogBertForPreTraining
from dialogbert.tokenizer import adopt_tokenizer, load_tokenizer

LOG_COLUMNS = ("step", "lr", "loss", "mlm_loss", "next_turn_loss", "grad_norm", "tokens_per_s", "elapsed_s",
               "eval_mlm_loss", "eval_mlm_acc", "eval_next_turn_loss", "eval_next_turn_acc")
CKPT_RE = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.pt"


# ------------------------------------------------------------------------------ the schedule
def lr_at(step: int, train) -> float:
    """Linear warm-up over ``warmup_steps`` (step 0 gets lr/warmup), then cosine decay to
    ``lr * min_lr_ratio`` at ``max_steps``. ``step`` = optimizer steps taken before this one."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    min_lr = train.lr * train.min_lr_ratio
    span = max(1, train.max_steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (train.lr - min_lr)


# ------------------------------------------------------------------------------- the model
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


# ------------------------------------------------------------------------ checkpoints & state
def list_checkpoints(out: str | os.PathLike, state_file: str = STATE_FILE) -> list[tuple[int, Path]]:
    """Complete checkpoints (step-N with a trainer state, ``state_file``), oldest first. Shared with
    fine-tuning (retrieval.finetune), whose state file is trainer_state.json."""
    root = Path(out) / "checkpoints"
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = CKPT_RE.match(p.name)
            if m and (p / state_file).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def find_resume(out: Path, resume: str | None, state_file: str = STATE_FILE) -> Path | None:
    """The checkpoint to resume from: None for "none" (or no checkpoint yet with "auto"), the
    newest complete one for "auto", else the step-N folder named (which must be complete)."""
    if resume in (None, "", "none", "no", "false"):
        return None
    if resume == "auto":
        ckpts = list_checkpoints(out, state_file)
        return ckpts[-1][1] if ckpts else None
    path = Path(resume)
    if not (path / state_file).is_file():
        raise FileNotFoundError(f"resume={resume}: not a complete checkpoint (no {state_file}); use "
                                f"auto, none or a checkpoints/step-N folder")
    return path


def publish_checkpoint(tmp: Path, final: Path, keep: int, state_file: str = STATE_FILE) -> Path:
    """Rename the complete checkpoint ``tmp`` to ``final`` (<out>/checkpoints/step-N), replacing
    one there, then remove all but the newest ``keep`` (0: keep all): a killed run never leaves
    half a checkpoint where list_checkpoints looks."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in list_checkpoints(final.parent.parent, state_file)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------- logging
def write_log_csv(path: Path, rows: list[dict]) -> None:
    from preprocess.schema import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in LOG_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def _fmt(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.6g}")


@torch.no_grad()
def evaluate(engine: Engine, batches: list[dict]) -> dict[str, float]:
    """MLM loss and accuracy over masked tokens, next-turn loss and accuracy, on fixed batches."""
    module = engine.module
    was_training = module.training
    module.eval()
    mlm_loss = mlm_correct = mlm_n = 0.0
    nt_loss = nt_correct = nt_n = 0.0
    for b in batches:
        out = engine.eval_forward(b)
        if "labels" in b:
            labels = b["labels"].to(out.prediction_logits.device)
            gold = labels[labels.ne(-100)]
            n = gold.numel()
            if n:
                mlm_loss += float(out.mlm_loss) * n
                mlm_correct += float((out.prediction_logits.argmax(-1) == gold).sum())
                mlm_n += n
        if "next_turn_label" in b:
            gold = b["next_turn_label"].to(out.next_turn_logits.device)
            nt_loss += float(out.next_turn_loss) * gold.numel()
            nt_correct += float((out.next_turn_logits.argmax(-1) == gold).sum())
            nt_n += gold.numel()
    module.train(was_training)
    res: dict[str, float] = {}
    if mlm_n:
        res.update(eval_mlm_loss=mlm_loss / mlm_n, eval_mlm_acc=mlm_correct / mlm_n)
    if nt_n:
        res.update(eval_next_turn_loss=nt_loss / nt_n, eval_next_turn_acc=nt_correct / nt_n)
    return res


def _after_step(step: int) -> None:
    """Called after every optimizer step (tests replace it to simulate a crash)."""


def _say(msg: str, main: bool) -> None:
    if main:
        from tqdm.auto import tqdm
        tqdm.write(f"[pretrain] {msg}")


# ------------------------------------------------------------------------------- the loop
def pretrain(config_path: str | os.PathLike | None, overrides=(), deepspeed_config: str | None = None,
             resume: str = "auto") -> Path:
    """Pretrain from a TOML config (+ dotted overrides); returns the final checkpoint folder."""
    cfg = load_config(config_path, list(overrides))
    t, d = cfg.train, cfg.data
    rank, _, world_size = dist_env()
    main = rank == 0
    if t.num_threads > 0:
        torch.set_num_threads(t.num_threads)
    if not d.shards:
        raise ValueError("data.shards is empty: point it at a shard folder (from `dialogbert preprocess`)")
    out = Path(cfg.run.out)
    ckpt_root = out / "checkpoints"

    tokenizer, tok_from = pick_tokenizer(cfg)
    seed_everything(cfg.run.seed)  # same initial weights on every rank
    adopted = bool(cfg.model.init_from) and tok_from == cfg.model.init_from  # its own tokenizer, grown
    model, init_report = build_model(cfg, len(tokenizer), tokenizer.pad_token_id, grow_vocab=adopted)
    resume_from = find_resume(out, resume)
    data_cfg = cfg.data_config()
    fresh_head = init_report is None or not any(k.startswith("cls.predictions.bias")
                                                for k in init_report["copied"] + init_report["resized"])
    if fresh_head and data_cfg.mlm and resume_from is None:
        # a fresh MLM head (a fresh model, or a sentence encoder without one): start it at the
        # unigram prior (before the engine takes the parameters: DeepSpeed keeps its own master
        # copy of them)
        init_output_bias(model, unigram_log_probs(d.shards, tokenizer, data_cfg, seed=cfg.run.seed))
    engine = make_engine(model, t, deepspeed_config, micro_batch=d.batch_size)
    main = engine.is_main
    seed_everything(cfg.run.seed + 1000 * rank)  # dropout differs across ranks
    stream = PretrainStream(d.shards, tokenizer, data_cfg, split="train", seed=cfg.run.seed, rank=rank,
                            world_size=world_size)
    held_out = eval_batches(d.shards, tokenizer, data_cfg, split="test", max_examples=t.eval_examples)

    step, log = 0, []
    if resume_from is not None:
        state = torch.load(resume_from / STATE_FILE, map_location="cpu", weights_only=False)
        saved_model = state.get("config", {}).get("model", {})
        now = cfg.to_dict()["model"]
        diff = {k: (saved_model[k], now[k]) for k in ARCH_KEYS + ("max_turns", "num_speakers")
                if k in saved_model and saved_model[k] != now[k]}
        if diff:
            raise ValueError(f"{resume_from}: the model differs from the checkpoint's (saved, now): {diff}; "
                             f"use the run's config, another run.out, or --resume none")
        if state.get("engine_kind") != engine.kind:
            raise ValueError(f"{resume_from} was written by the {state.get('engine_kind')} engine; resume it "
                             f"with the same engine ({'with' if state.get('engine_kind') == 'deepspeed' else 'without'}"
                             f" --deepspeed) or start over with --resume none")
        engine.load(resume_from, state)
        per_rank = state["ranks"]
        if len(per_rank) == world_size:
            stream.load_state_dict(per_rank[rank]["stream"])
            set_rng_state(per_rank[rank]["rng"])
        else:
            _say(f"world size changed ({len(per_rank)} -> {world_size}): the data stream restarts", main)
        step, log = int(state["step"]), list(state["log"])
        _say(f"resumed from {resume_from} at step {step}", main)

    writer = bar = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.resolved.toml")
        if init_report is not None:
            _say(f"init_from {cfg.model.init_from}: {len(init_report['copied'])} tensors copied, resized "
                 f"{init_report['resized']}, new {init_report['new']}, ignored {init_report['ignored']}", main)
        if t.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out / "tb"), purge_step=step if step else None)
        from tqdm.auto import tqdm
        bar = tqdm(total=t.max_steps, initial=step, disable=not t.progress, desc="pretrain", dynamic_ncols=True)
        n_params = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())  # ZeRO-3: partitioned
        _say(f"{engine.kind} engine, {world_size} process(es), {engine.device}, {engine.precision}, "
             f"{n_params / 1e6:.2f}M parameters, tokenizer {tok_from} ({len(tokenizer)} tokens), "
             f"{len(held_out)} eval batches", main)

    def record(row: dict) -> None:
        log.append(row)
        if main:
            write_log_csv(out / "log.csv", log)
            if writer is not None:
                for k, v in row.items():
                    if k != "step" and v is not None:
                        writer.add_scalar(k, v, row["step"])

    def save(step: int) -> Path:
        final, tmp = ckpt_root / f"step-{step}", ckpt_root / f".tmp-step-{step}"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        engine.barrier()
        engine_state = engine.save(tmp)
        ranks = engine.all_gather_object({"stream": stream.state_dict(), "rng": rng_state()})
        full = engine.export_state_dict(tmp)
        if main:
            if full is None:
                engine.module.save_pretrained(tmp)
            else:  # consolidated fp32 weights into a plain CPU copy of the model
                export = DialogBertForPreTraining(engine.module.config)
                export.load_state_dict(full, strict=False)
                export.tie_weights()
                export.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            save_config(cfg, tmp / "config.resolved.toml")
            torch.save({"step": step, "engine_kind": engine.kind, "engine": engine_state, "ranks": ranks,
                        "log": log, "config": cfg.to_dict(), "world_size": world_size}, tmp / STATE_FILE)
            publish_checkpoint(tmp, final, t.keep_checkpoints)
        engine.barrier()
        return final

    try:
        it = iter(stream)
        start_step = step
        win = {"loss": 0.0, "mlm_loss": 0.0, "next_turn_loss": 0.0, "n": 0, "tokens": 0, "t0": time.perf_counter()}
        t_start = time.perf_counter()
        last_ckpt = resume_from
        while True:
            fresh = step != start_step or start_step == 0  # on resume, step N was evaluated and saved already
            paused = time.perf_counter()  # eval and checkpoint time stays out of tokens/s
            if fresh and (step % t.eval_every == 0 or step == t.max_steps):
                metrics = evaluate(engine, held_out)
                record({"step": step, **{k: _fmt(v) for k, v in metrics.items()}})
                if main:
                    _say(f"step {step}: " + ", ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items()), main)
                    if t.plot:
                        from dialogbert.plots import plot_curves
                        plot_curves(out / "log.csv", out / "curves.png")
            if fresh and step > 0 and (step % t.save_every == 0 or step == t.max_steps):
                last_ckpt = save(step)
            if step >= t.max_steps:
                break
            win["t0"] += time.perf_counter() - paused

            lr = lr_at(step, t)
            engine.set_lr(lr)
            for _ in range(t.grad_accum):
                batch = next(it)
                win["tokens"] += int(batch["attention_mask"].sum())
                out_ = engine.forward(batch)
                engine.backward(out_.loss)
                engine.step()
                for k in ("loss", "mlm_loss", "next_turn_loss"):
                    v = getattr(out_, k)
                    if v is not None:
                        win[k] += float(v.detach()) / t.grad_accum
            win["n"] += 1
            step += 1
            _after_step(step)
            if bar is not None:
                bar.update(1)

            if step % t.log_every == 0 or step == t.max_steps:
                dt = time.perf_counter() - win["t0"]
                tokens = engine.all_reduce_sum(win["tokens"])
                n = win["n"] * world_size  # losses: the mean over the window and over ranks
                mean = {k: engine.all_reduce_sum(win[k]) / n for k in ("loss", "mlm_loss", "next_turn_loss")}
                row = {"step": step, "lr": _fmt(lr), "loss": _fmt(mean["loss"]),
                       "mlm_loss": _fmt(mean["mlm_loss"]) if cfg.objectives.mlm else None,
                       "next_turn_loss": _fmt(mean["next_turn_loss"]) if cfg.objectives.next_turn else None,
                       "grad_norm": _fmt(engine.grad_norm), "tokens_per_s": round(tokens / max(dt, 1e-9), 1),
                       "elapsed_s": round(time.perf_counter() - t_start, 2)}
                record(row)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")
                win = {"loss": 0.0, "mlm_loss": 0.0, "next_turn_loss": 0.0, "n": 0, "tokens": 0,
                       "t0": time.perf_counter()}

    finally:  # also on an interrupt: flush TensorBoard, free the process group
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        engine.close()
    final = ckpt_root / f"step-{t.max_steps}"
    if last_ckpt is not None and not final.exists():
        final = Path(last_ckpt)
    if main:
        _say(f"done: {final}", main)
    return final
