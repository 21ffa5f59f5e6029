"""Dual-encoder fine-tuning step benchmark: fp32 against bf16 autocast, length-sorted chunks, the
attention kernel and frozen lower layers.

    .venv/bin/python bench/finetune.py                       # the demo's base and shards (after `make demo`)
    .venv/bin/python bench/finetune.py --base runs/demo/base --steps 8 --no-write

Every arm trains the same model (the demo's warm-started DialogBERT, ``configs/finetune_e5.toml``'s
input settings) on the SAME batches of training pairs (the first ``--steps`` batches of the demo's
first epoch, bucketed by context length as it trains), forward + backward + AdamW, as
``retrieval.finetune`` steps them:

* the reference: fp32, every parameter trained (the demo's recipe before 2026-12-06);
* ``train.precision=bf16``: the matmuls autocast to bfloat16 (weights, AdamW and the cosines fp32);
* bf16 with ``train.length_chunk=16`` (``--chunk``): a step's contexts and replies sorted by length
  and run 16 at a time, each chunk padded to its own longest row (the demo's recipe);
* the same with torch's fused SDPA attention kernel, which the encoder used on a CPU before
  ``dialogbert.modeling.attention_for_device`` chose BERT's plain matmuls there (``attention``;
  every arm trains without dropout, as the recipe does: with dropout SDPA takes another kernel);
* ``train.freeze_layers=6`` (``--freeze``), fp32 and bf16: the embeddings and the bottom six layers fixed.

Reports seconds per step (the first step of each arm is warm-up and not counted) and the speed-up
against the reference in the same run. bf16 pays only where the hardware has it
(``retrieval.encoder.resolve_precision``); this machine's answer is printed. Writes the
``## Fine-tuning`` section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.retrieval import publish  # noqa: E402
from bench.serving import shown  # noqa: E402

HEADING = "## Fine-tuning"


def arms(freeze: int, chunk: int) -> list[tuple[str, str, int, int, str]]:
    """(name, precision, frozen layers, train.length_chunk, attention kernel) of each arm."""
    return [("fp32, every layer trained, fused SDPA attention (the reference)", "fp32", 0, 0, "sdpa"),
            ("bf16 autocast (contexts and replies as two padded blocks), SDPA", "bf16", 0, 0, "sdpa"),
            (f"bf16 + contexts and replies {chunk} at a time by length, SDPA", "bf16", 0, chunk, "sdpa"),
            (f"bf16 + {chunk} at a time + BERT's plain attention matmuls (the demo's recipe)", "bf16", 0, chunk, "eager"),
            (f"fp32, embeddings + bottom {freeze} layers frozen, plain attention", "fp32", freeze, 0, "eager"),
            (f"bf16 + bottom {freeze} layers frozen, plain attention", "bf16", freeze, 0, "eager")]


def step_seconds(base: str, batches: list, precision: str, freeze: int, chunk: int, attention: str) -> float:
    """Mean seconds of a training step after the first, for one arm on a fresh copy of ``base``."""
    import torch

    from dialogbert.engine import param_groups
    from retrieval.encoder import Encoder, autocast
    from retrieval.finetune import dual_loss, freeze_bottom, load_config, set_dropout
    cfg = load_config(ROOT / "configs" / "finetune_e5.toml", [f"train.length_chunk={chunk}"])
    D, M = cfg.data, cfg.model
    enc = Encoder.load(base, strict_kind=False, pooling=M.pooling, context_turns=D.context_turns,
                       max_length=D.max_length, max_turn_tokens=D.max_turn_tokens,
                       context_prefix=M.context_prefix, response_prefix=M.response_prefix)
    model = enc.model
    model.set_attn_implementation(attention)
    model.train()
    if M.dropout >= 0:
        set_dropout(model, M.dropout)  # as the recipe trains (no dropout); SDPA's CPU kernel depends on it
    freeze_bottom(model, freeze)
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-6)
    rng = random.Random(0)  # dual_loss draws negatives only when the recipe asks for extra ones
    times = []
    for batch in batches:
        t = time.perf_counter()
        with autocast(precision, "cpu"):
            loss, _ = dual_loss(enc, batch, None, cfg.train, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return sum(times[1:]) / len(times[1:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=str(ROOT / "runs" / "demo" / "base"))
    p.add_argument("--shards", default=str(ROOT / "runs" / "demo" / "shards"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="steps an arm (the first is warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--freeze", type=int, default=6, help="bottom layers the frozen arms fix")
    p.add_argument("--chunk", type=int, default=16, help="train.length_chunk of the chunked arm")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    a = p.parse_args(argv)
    for folder, what, there in ((a.base, "model", Path(a.base, "config.json").exists()),
                                (a.shards, "shards", any(Path(a.shards).rglob("*.jsonl")))):
        if not there:
            print(f"{folder}: no {what} there; run `make demo` first", file=sys.stderr)
            return 2
    if a.steps < 2:
        print("--steps must be >= 2 (the first step is warm-up)", file=sys.stderr)
        return 2
    import torch

    from retrieval.encoder import resolve_precision
    from retrieval.finetune import load_config, training_pairs
    from retrieval.losses import batch_order
    torch.set_num_threads(a.threads)
    t_all = time.time()
    D, T = (c := load_config(ROOT / "configs" / "finetune_e5.toml")).data, c.train
    pairs = training_pairs(a.shards, D.context_turns, (), D.valid_fraction)
    lengths = [sum(len(t) for _, t in p["context"][-D.context_turns:]) for p in pairs]
    batches = [[pairs[i] for i in b] for b in
               batch_order(len(pairs), a.batch_size, 0, 0, lengths, T.length_window)[:a.steps]]
    rows = [(name, step_seconds(a.base, batches, precision, freeze, chunk, attention))
            for name, precision, freeze, chunk, attention in arms(a.freeze, a.chunk)]
    base = rows[0][1]
    cmd = " ".join(["python bench/finetune.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [f"Command: `{cmd}` ({time.strftime('%Y-%m-%d', time.gmtime())}; {os.cpu_count()} CPU cores, "
             f"{a.threads} thread(s), {platform.processor() or platform.machine()}, Python "
             f"{platform.python_version()}, torch {torch.__version__}; `precision=auto` resolves to "
             f"**{resolve_precision('auto')}** here; total {time.time() - t_all:.0f} s).", "",
             f"Base `{shown(a.base)}`, {a.steps - 1} timed steps of {a.batch_size} training pairs from "
             f"`{shown(a.shards)}`: the first batches of the demo's first epoch (batches of similar context "
             f"length, `train.length_window={T.length_window}`), the same batches for every arm, each at "
             f"the recipe's dropout (`model.dropout = {c.model.dropout:g}`).", "",
             "| arm | s / step | pairs / s | speed-up |", "|---|---|---|---|"]
    for name, sec in rows:
        lines.append(f"| {name} | {sec:.2f} | {a.batch_size / sec:.1f} | {base / sec:.2f}x |")
    lines += ["", "What the arms give in R10@1 for the same minutes: "
              "docs/experiments/2026-12-06-bf16-and-more-steps.md (bf16 kept, frozen layers not); "
              "the chunks change no vector or gradient (tests/test_losses.py), only the padding; nor does the "
              "attention kernel (tests/test_encoder_packing.py), only the time."]
    publish("\n".join(lines), a.out, HEADING, write=not a.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
