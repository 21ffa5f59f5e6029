"""Fine-tuning for response selection: the dual encoder, and the cross-encoder re-ranker.

``model.kind = "dual"`` (default): in-batch negatives (Henderson et al. 2017, "Efficient Natural
Language Response Suggestion for Smart Reply"; sentence-transformers'
MultipleNegativesRankingLoss). One encoder (shared weights) embeds contexts and responses;
scores = scale * cosine matrix, labels = the diagonal, cross-entropy (both directions when
``symmetric``). In-batch entries whose response text equals the positive's are masked out (they
are not negatives). Optional hard negatives: another turn of the same conversation as an extra
response column.

``model.kind = "cross"``: the re-ranker (retrieval.rerank): the pretrained next-turn head scores
each context with its true response and ``group_size - 1`` negatives drawn from the training
responses (one from the same conversation with ``hard_negatives``); listwise cross-entropy.
Start it from a pretraining checkpoint, whose next-turn head already knows the task.

Pairs come from the TRAIN split only (each turn t >= 1 with up to 5 turns of context, as the
protocol's examples). ``init`` may be a dialogbert checkpoint or a plain BERT folder (e.g.
all-MiniLM-L6-v2). The config (retrieval.finetune_config) is typed like pretraining's: a TOML
file, then ``section.key=value`` overrides, unknown keys rejected; the learning rate follows
``dialogbert.train.lr_at`` (warm-up, cosine decay). Output: ``out/`` in HF format with the
tokenizer and ``retrieval.json``; checkpoints in ``out/checkpoints/step-N`` (weights, optimizer,
trainer state) let the same command resume after an interruption.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dialogbert.engine import param_groups
from dialogbert.checkpoints import find_resume, publish_checkpoint
from dialogbert.train import lr_at
from preprocess.schema import atomic_write_text
from retrieval.encoder import Encoder, EncoderSettings, autocast, resolve_precision
from retrieval.examples import train_examples
from retrieval.finetune_config import FinetuneConfig, FtTrain, load_config, source_weights
from retrieval.losses import batch_order, duplicate_mask, in_batch_loss
from retrieval.rerank import CrossEncoder, listwise_loss
from retrieval.reply_memory import MEMORY_FILE
from retrieval.word_rows import BaseRateRows, rows_without_hangul

def set_dropout(model: torch.nn.Module, rate: float) -> int:
    """Every dropout module of ``model`` (embeddings, attention probabilities, hidden states) at
    ``rate``; returns how many. transformers' attention reads its module's ``p`` on every call."""
    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p, n = float(rate), n + 1
    return n


def freeze_bottom(model: torch.nn.Module, layers: int) -> int:
    """Stop training the embeddings (the word memory too) and the bottom ``layers`` transformer layers of a BERT-shaped
    ``model`` (a DialogBERT, a plain BertModel, or the cross-encoder's ``bert``); return how many
    parameters stay trainable. Autograd then ends at layer ``layers``: a step costs the forward of
    every layer but the backward of the top ones only."""
    if layers > 0:
        total = int(getattr(model.config, "num_hidden_layers", 0))
        if layers >= total:
            raise ValueError(f"train.freeze_layers={layers}: the model has {total} layers; at least one must train")
        frozen = ("embeddings.", "turn_embeddings.", "word_memory.") + tuple(f"encoder.layer.{i}." for i in range(layers))
        for name, p in model.named_parameters():
            if name.removeprefix("bert.").startswith(frozen):
                p.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---- data -----------------------------------------------------------------------------------
def training_pairs(shards, context_turns: int = 5, sources: Sequence[str] = (),
                   valid_fraction: float = 0.0) -> list[dict]:
    """(context, response) pairs of the TRAIN split, less the validation carve-out, read by
    retrieval.examples.train_examples (the one reader, which the ranker's encoders use too); each
    with its conversation's turn texts (``conv_turns``) for the hard negatives."""
    return [{"context": ex.context, "response": ex.response, "speaker": ex.speaker, "conv_turns": ex.turns,
             "turn": ex.turn, "source": ex.source} for ex in train_examples(shards, valid_fraction, False, context_turns, sources)]


# ---- checkpoints: pretraining's folder helpers (dialogbert.checkpoints), with a JSON trainer state ----
STATE = "trainer_state.json"


def _save_checkpoint(enc: Encoder, opt, state: dict, scale_param, out: Path, keep: int,
                     sampler: random.Random | None = None) -> Path:
    ck = out / "checkpoints" / f"step-{state['step']}"
    tmp = ck.with_name(ck.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    enc.save(tmp)
    torch.save({"optimizer": opt.state_dict(),
                "scale": None if scale_param is None else scale_param.detach().cpu(),
                "torch_rng": torch.get_rng_state(),
                "sampler_rng": None if sampler is None else sampler.getstate()}, tmp / "optimizer.pt")
    (tmp / STATE).write_text(json.dumps(state, indent=2) + "\n", "utf-8")
    return publish_checkpoint(tmp, ck, keep, STATE)


# ---- the loop -------------------------------------------------------------------------------
# Not pretraining's loop (dialogbert.train.pretrain): that one streams MLM/next-turn batches through
# an Engine (torch or deepspeed, several ranks) and saves the stream's position per rank; this one
# steps one process over a list of pairs with its own negative sampler. They share the schedule
# (lr_at), the parameter groups and the checkpoint folders (find_resume, publish_checkpoint).
def _sample_negatives(rng: random.Random, pool: list[str], true: str, k: int, same_conv: list[str]) -> list[str]:
    """k texts from ``pool`` other than ``true`` (the first from ``same_conv`` when given)."""
    out = [rng.choice(same_conv)] if same_conv and k else []
    while len(out) < k:
        t = pool[rng.randrange(len(pool))]
        if t != true:
            out.append(t)
    return out


def finetune(init: str | Path, shards: str | Path, out: str | Path, config_path: str | Path | None = None,
             overrides: Sequence[str] = (), resume: str | None = "auto", progress: bool = True) -> Path:
    """Fine-tune ``init`` on the training split of ``shards``, as a dual encoder
    (``model.kind = "dual"``) or as the cross-encoder re-ranker (``"cross"``); return ``out``."""
    cfg = load_config(config_path, overrides)
    D, M, T = cfg.data, cfg.model, cfg.train
    cross = M.kind == "cross"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if T.threads:
        torch.set_num_threads(int(T.threads))
    seed = int(cfg.run.seed)
    torch.manual_seed(seed)

    start_from, state = Path(init), {"step": 0, "epoch": 0, "batch": 0, "losses": []}
    ck = find_resume(out, resume, STATE)
    if ck is not None:
        start_from = ck
        state = json.loads((ck / STATE).read_text("utf-8"))
        print(f"finetune: resuming from {ck} (step {state['step']})")
    settings = EncoderSettings(pooling=M.pooling, context_turns=D.context_turns, max_length=D.max_length,
                               max_turn_tokens=D.max_turn_tokens, zero_dialog_ids=M.zero_dialog_ids,
                               context_prefix=M.context_prefix, response_prefix=M.response_prefix)
    enc = (CrossEncoder if cross else Encoder).load(start_from, strict_kind=False, reply_memory=False, **asdict(settings))
    enc.path = None
    model = enc.model
    model.train()
    if M.dropout >= 0:
        set_dropout(model, M.dropout)
    device = next(model.parameters()).device.type
    precision = resolve_precision(T.precision, device)

    pairs = training_pairs(shards, D.context_turns, D.sources, D.valid_fraction)
    bs = T.batch_size
    if len(pairs) < 2:
        raise ValueError(f"{shards}: {len(pairs)} training pairs; fine-tuning needs at least 2 "
                         f"(multi-turn conversations in the train split)")
    bs = min(bs, len(pairs))
    pool = sorted({p["response"] for p in pairs})
    if cross and len(pool) < 2:
        raise ValueError(f"{shards}: the re-ranker needs at least 2 distinct training responses")
    print(f"finetune: {M.kind} model, {len(pairs)} training pairs from {shards}, batch {bs}, {precision}"
          + (f" x {T.group_size} candidates" if cross else "") + f", init {init}")

    trainable = freeze_bottom(model, T.freeze_layers)
    if T.freeze_layers:
        print(f"finetune: embeddings and the bottom {T.freeze_layers} layers frozen; "
              f"{trainable / 1e6:.1f}M of {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters train")
    scale_param = None
    groups = param_groups(model, T.weight_decay, word_lr_mult=T.word_lr_mult, memory_lr_mult=T.memory_lr_mult)
    held = None
    words = model.get_input_embeddings().weight
    if T.word_lr_hangul_only and T.word_lr_mult != 1.0 and words.requires_grad:
        held = BaseRateRows(words, rows_without_hangul(enc.tokenizer, words.shape[0]), T.word_lr_mult)
        print(f"finetune: word rows with Hangul at {T.word_lr_mult:g}x the rate, the other "
              f"{len(held.rows)} of {words.shape[0]} at the base rate")
    if T.learn_scale and not cross:
        scale_param = torch.nn.Parameter(torch.tensor(math.log(T.scale)))
        groups.append({"params": [scale_param], "weight_decay": 0.0, "lr_mult": 100.0})
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=T.lr)
    rng = random.Random(seed + state["step"])  # the negatives
    if state["step"] > 0:
        saved = torch.load(start_from / "optimizer.pt", weights_only=False)
        opt.load_state_dict(saved["optimizer"])
        if scale_param is not None and saved.get("scale") is not None:
            scale_param.data.copy_(saved["scale"])
        torch.set_rng_state(saved["torch_rng"])
        if saved.get("sampler_rng") is not None:  # continue the saved stream (older checkpoints: reseeded)
            rng.setstate(saved["sampler_rng"])

    max_steps, t0 = T.max_steps, time.time()
    budget = T.max_minutes * 60
    spent = float(state.get("seconds", 0.0))  # training time of the runs this one resumes
    step, epoch, bi = state["step"], state["epoch"], state["batch"]
    lengths = [sum(len(t) for _, t in p["context"][-D.context_turns:]) for p in pairs] if T.length_window else None
    corpus = [p["source"] for p in pairs] if D.batch_by_source else None
    if D.topic_batches:
        from retrieval.topics import topic_labels
        corpus = topic_labels([p["context"][-1][1] for p in pairs], [p["source"] for p in pairs], D.topic_batches, seed)
        print(f"finetune: batches from {len(set(corpus))} topic clusters of about {D.topic_batches} pairs")
    weights = None
    if D.source_weights:
        by_source, present = source_weights(D.source_weights), {p["source"] for p in pairs}
        if set(by_source) - present:
            raise ValueError(f"data.source_weights names {sorted(set(by_source) - present)}, which have no training "
                             f"pairs in {shards}; its corpora: {sorted(present)}")
        weights = [by_source.get(p["source"], 1.0) for p in pairs]
        per_epoch: dict[str, float] = {}
        for w, p in zip(weights, pairs):
            per_epoch[p["source"]] = per_epoch.get(p["source"], 0.0) + w
        print("finetune: pairs an epoch " + ", ".join(f"{s} {per_epoch[s]:.0f}" for s in sorted(per_epoch)))
    order = batch_order(len(pairs), bs, seed, epoch, lengths, T.length_window, corpus, weights)
    recent: list[float] = []
    while step < max_steps:
        if bi >= len(order):
            epoch, bi = epoch + 1, 0
            order = batch_order(len(pairs), bs, seed, epoch, lengths, T.length_window, corpus, weights)
        batch = [pairs[i] for i in order[bi]]
        bi += 1
        lr = lr_at(step, T)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        with autocast(precision, device):
            if cross:
                loss = _cross_loss(enc, batch, pool, T, rng)
                scale = 1.0
            else:
                loss, scale = dual_loss(enc, batch, scale_param, T, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if T.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, T.grad_clip)
        if held is not None:
            held.before_step()
        opt.step()
        if held is not None:
            held.after_step()
        step += 1
        recent.append(loss.item())
        stop = budget > 0 and spent + time.time() - t0 > budget
        if step % T.log_every == 0 or step == max_steps or stop:
            if progress:
                print(f"finetune: step {step}/{max_steps} loss {np.mean(recent):.4f} lr {lr:.2e} "
                      + ("" if cross else f"scale {float(scale):.1f} ") + f"{time.time() - t0:.0f}s", flush=True)
            state["losses"].append([step, round(float(np.mean(recent)), 5)])
            recent = []
        state.update(step=step, epoch=epoch, batch=bi, seconds=round(spent + time.time() - t0, 1))
        if stop or step == max_steps or (T.save_every and step % T.save_every == 0):
            _save_checkpoint(enc, opt, dict(state), scale_param, out, T.keep_checkpoints, rng)
        if stop:
            print(f"finetune: stopping at step {step}: train.max_minutes={T.max_minutes} reached")
            break

    model.eval()
    enc.save(out)
    info = {"init": str(init), "shards": str(shards), "kind": M.kind, "steps": step, "pairs": len(pairs),
            "config": cfg.to_dict(), "precision": precision, "seconds": round(time.time() - t0, 1),
            "parameters": sum(p.numel() for p in model.parameters()), "losses": state["losses"]}
    if D.valid_fraction > 0:
        info["valid"] = validate(enc, shards, cfg)
        print(f"finetune: validation {info['valid']}")
    (out / MEMORY_FILE).unlink(missing_ok=True)  # a memory of other weights (an earlier run into this folder)
    if T.reply_memory and not cross:
        info["reply_memory"] = write_reply_memory(enc, pairs, shards, cfg, out, progress)
    atomic_write_text(out / "finetune.json", json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return out


def write_reply_memory(enc: Encoder, pairs: list[dict], shards, cfg: FinetuneConfig, out: Path,
                       progress: bool = True) -> dict:
    """The fine-tuned model's reply memory (retrieval.reply_memory) of its training ``pairs`` and
    the validation carve-out's pairs, its weight and borrowing chosen on the whole carve-out with
    the rows of ``pairs`` alone (weight 1 without a carve-out), written to ``out``; its summary."""
    from retrieval.evaluate import RetrievalEvaluator
    from retrieval.examples import train_examples
    from retrieval.reply_memory import build, choose_weight
    t0 = time.time()
    enc.for_inference(cfg.train.precision)  # the weights as the index and the chat service read them
    D = cfg.data
    carve = list(train_examples(shards, D.valid_fraction, True, D.context_turns, D.sources or None)) \
        if D.valid_fraction > 0 else []
    C = enc.encode_contexts([p["context"] for p in pairs] + [e.context for e in carve], show_progress=progress)
    memory = build(enc, None, [p["response"] for p in pairs] + [e.response for e in carve], show_progress=progress,
                   carve_out=len(carve), context_vectors=C)
    # chosen on the whole carve-out (its contexts encoded above): the weights' and borrowing's differences there
    # are a few thousandths, below the noise of a 1,000-example sample (docs/experiments/2026-12-08-reply-memory-borrowing.md)
    if len({e.response for e in carve}) >= 100:
        table = choose_weight(enc, memory, RetrievalEvaluator(carve, n=100), context_vectors=C[len(pairs):])
        if progress:
            print("finetune: reply memory, validation R10@1 by weight: "
                  + ", ".join(f"{w} {m['R10@1']:.3f}" for w, m in table.items())
                  + f"; weight {memory.weight:g}" + (", borrowing" if memory.borrow else ""))
    memory.info["seconds"] = round(time.time() - t0, 1)
    memory.save(out)
    if progress:
        print(f"finetune: reply memory of {memory.info['replies']} replies ({memory.info['pairs']} pairs, "
              f"{len(carve)} of them the validation carve-out's) -> {out / MEMORY_FILE} ({memory.info['seconds']:.0f} s)")
    return {**memory.info, "weight": memory.weight, "borrow": memory.borrow}


def dual_loss(enc: Encoder, batch: list[dict], scale_param, T: FtTrain, rng: random.Random):
    """The in-batch loss of one batch of pairs (and the scale it used): a step's forward."""
    ctx_items = [p["context"] for p in batch]
    resp_texts = [p["response"] for p in batch]
    if T.hard_negatives:
        for p in batch:
            alts = [t for j, t in enumerate(p["conv_turns"]) if j != p["turn"] and t != p["response"]]
            if alts:
                resp_texts.append(rng.choice(alts))
    if T.copy_negatives:  # the newest context turn, repeated, as a wrong reply
        resp_texts += [p["context"][-1][1] for p in batch if p["context"][-1][1] != p["response"]]
    if T.contrast_negatives:  # the same words, the meaning turned: only reading the reply tells them apart
        from retrieval.adversarial import negate, shift_tense
        for p in batch:
            if T.contrast_share < 1.0 and rng.random() >= T.contrast_share:
                continue
            first, second = (negate, shift_tense) if rng.random() < 0.5 else (shift_tense, negate)
            turned = first(p["response"]) or second(p["response"])
            if turned and turned != p["response"]:
                resp_texts.append(turned)
    same = duplicate_mask(resp_texts[:len(batch)], resp_texts)
    ctx_feats, resp_feats = enc.context_features(ctx_items), enc.response_features(resp_texts)
    if T.length_chunk > 0:  # contexts and replies together, in length-sorted chunks
        both = enc.forward_sorted(ctx_feats + resp_feats, T.length_chunk)
        c, r = both[:len(ctx_feats)], both[len(ctx_feats):]
    else:  # two padded blocks: the contexts, the replies
        c, r = enc.forward(enc.pad(ctx_feats)), enc.forward(enc.pad(resp_feats))
    scale = scale_param.exp().clamp(max=100.0) if scale_param is not None else T.scale
    with torch.autocast(c.device.type, enabled=False):  # the cosines in fp32 under bf16 autocast: scale 20 magnifies rounding
        logits = scale * c.float() @ r.float().T
    return in_batch_loss(logits, same, T.symmetric), scale


def _cross_loss(enc: CrossEncoder, batch: list[dict], pool: list[str], T: FtTrain, rng: random.Random):
    """Listwise: each context against its true response and group_size - 1 negatives (with
    ``copy_negatives`` the first is the context's newest turn, as in the dual loss)."""
    g = T.group_size
    contexts, cands = [], []
    for p in batch:
        same_conv = [t for j, t in enumerate(p["conv_turns"]) if j != p["turn"] and t != p["response"]] \
            if T.hard_negatives else []
        copy = [p["context"][-1][1]] if T.copy_negatives and p["context"][-1][1] != p["response"] else []
        contexts += [p["context"]] * g
        cands += [p["response"]] + copy + _sample_negatives(rng, pool, p["response"], g - 1 - len(copy), same_conv)
    scores = enc.forward(enc.pad(enc.pair_features(contexts, cands)))
    return listwise_loss(scores.view(len(batch), g))


def validate(enc: Encoder, shards, cfg: FinetuneConfig, max_examples: int = 1000) -> dict:
    """R10@1 / MRR on the validation carve-out of the training split (for tuning; never test).
    The re-ranker is scored on 10 candidates per example (R100 would cost 100 passes each)."""
    from retrieval.evaluate import EncoderScorer, RetrievalEvaluator
    from retrieval.examples import validation_examples
    D = cfg.data
    cross = isinstance(enc, CrossEncoder)
    exs = validation_examples(shards, D.valid_fraction, max_examples // 2 if cross else max_examples,
                              context_turns=D.context_turns, sources=D.sources or None)
    n = 10 if cross else 100
    if len({e.response for e in exs}) < n:
        return {"examples": len(exs), "note": f"too few distinct validation responses for R{n}"}
    m = RetrievalEvaluator(exs, n=n)(enc if cross else EncoderScorer(enc))
    m["examples"] = len(exs)
    return m
