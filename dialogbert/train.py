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

Here: the LR schedule, the log, the evaluation and the loop. The model a run starts from (fresh or
``model.init_from``, its tokenizer, the MLM bias) is built in dialogbert.model_init; the
checkpoint folders and RNG state in dialogbert.checkpoints (shared with fine-tuning). Both are
importable from here as before.
"""
from __future__ import annotations

import csv
import io
import math
import os
import shutil
import time
from pathlib import Path

import torch

from dialogbert.checkpoints import (CKPT_RE, STATE_FILE, find_resume, list_checkpoints,  # noqa: F401
                                    publish_checkpoint, rng_state, seed_everything, set_rng_state)
from dialogbert.config import load_config, save_config
from dialogbert.data import PretrainStream, eval_batches
from dialogbert.engine import Engine, dist_env, make_engine
from dialogbert.model_init import (ARCH_KEYS, PASS_KEYS, build_model, copy_compatible_weights,  # noqa: F401
                                   init_output_bias, pick_tokenizer, unigram_log_probs)
from dialogbert.modeling import DialogBertForPreTraining

LOG_COLUMNS = ("step", "lr", "loss", "mlm_loss", "next_turn_loss", "grad_norm", "tokens_per_s", "elapsed_s",
               "eval_mlm_loss", "eval_mlm_acc", "eval_next_turn_loss", "eval_next_turn_acc")


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
