"""N-gram encoder training benchmark: RowAdam against torch's SparseAdam, and the cost of heads.

    .venv/bin/python bench/ngram.py                          # the demo's shards (after `make demo`)
    .venv/bin/python bench/ngram.py --shards SH/chatbotdata-ko --epochs 5 --no-write

The same training pairs (``retrieval.ngram.training_texts``: the training split less the 10%
validation carve-out, as ``dialogbert index`` trains on) go through three arms, one thread each:

* the reference: one head updated by ``torch.optim.SparseAdam`` from ``embedding_bag(...,
  sparse=True)`` gradients, which is how the encoder trained before RowAdam;
* ``NgramEncoder(NgramSettings(heads=1)).fit``: the same model, updated by ``RowAdam``;
* ``NgramEncoder(NgramSettings(heads=4)).fit``: the default, four heads.

Reports seconds, steps per second, the speed-up against the reference, the final loss, and how
far the one-head RowAdam table ends from the reference's (the same arithmetic: float rounding
only). Writes the ``## N-gram encoder training`` section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.retrieval import publish  # noqa: E402
from bench.serving import shown  # noqa: E402

HEADING = "## N-gram encoder training"


def sparse_adam_reference(pairs, settings):
    """One head trained as before RowAdam: the whole table a Parameter, sparse embedding_bag
    gradients, torch.optim.SparseAdam. Returns (encoder, what train_in_batches measured)."""
    import torch

    from retrieval.ngram import NgramEncoder, _packed
    from retrieval.towers import train_in_batches
    enc = NgramEncoder(settings)
    feats = enc.table_rows(pairs)
    weight = torch.nn.Parameter(enc.table)
    opt = torch.optim.SparseAdam([weight], lr=settings.lr)
    F = torch.nn.functional

    def vectors(ix):
        return tuple(F.normalize(F.embedding_bag(flat, weight, offsets, mode="sum", sparse=True), dim=-1)
                     for flat, offsets in (_packed([feats[i][side] for i in ix]) for side in (0, 1)))
    trained = train_in_batches(pairs, settings, vectors, settings.scale, opt, show_progress=False, window=50)  # as fit
    enc.table = weight.detach()
    return enc, trained


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", default=str(ROOT / "runs" / "demo" / "shards"))
    p.add_argument("--sources", default=None, help="comma-separated corpus sources to train on (default: all)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    a = p.parse_args(argv)
    if not (Path(a.shards) / "manifest.json").exists():
        print(f"{a.shards}: no shards there; run `make demo` (or `dialogbert preprocess`) first", file=sys.stderr)
        return 2
    import torch

    from retrieval.ngram import NgramEncoder, NgramSettings, training_texts
    torch.set_num_threads(a.threads)
    t_all = time.time()
    pairs = training_texts(a.shards, 0.1, a.sources.split(",") if a.sources else None)
    rows = []
    t = time.perf_counter()
    ref, ref_trained = sparse_adam_reference(pairs, NgramSettings(heads=1, epochs=a.epochs))
    rows.append(("one head, SparseAdam (the reference)", time.perf_counter() - t, ref_trained))
    one = NgramEncoder(NgramSettings(heads=1, epochs=a.epochs))
    t = time.perf_counter()
    trained = one.fit(pairs, show_progress=False)
    rows.append(("one head, RowAdam", time.perf_counter() - t, trained))
    four = NgramEncoder(NgramSettings(heads=4, epochs=a.epochs))
    t = time.perf_counter()
    trained = four.fit(pairs, show_progress=False)
    rows.append(("4 heads (the default), RowAdam", time.perf_counter() - t, trained))
    gap = float((one.table.float() - ref.table.half().float()).abs().max())
    cmd = " ".join(["python bench/ngram.py", *(argv if argv is not None else sys.argv[1:])])
    base = rows[0][1]
    lines = [f"Command: `{cmd}` ({time.strftime('%Y-%m-%d', time.gmtime())}; {os.cpu_count()} CPU cores, "
             f"{a.threads} thread(s), Python {platform.python_version()}, torch {torch.__version__}; "
             f"total {time.time() - t_all:.0f} s).", "",
             f"Shards `{shown(a.shards)}`: {len(pairs):,} training pairs, {len(one.rows):,} feature rows, "
             f"{a.epochs} epoch(s) of {rows[0][2]['steps']} steps of {NgramSettings().batch_size} pairs.", "",
             "| arm | seconds | steps/s | speed-up | final loss |", "|---|---|---|---|---|"]
    for name, sec, tr in rows:
        lines.append(f"| {name} | {sec:.1f} | {tr['steps'] / sec:.1f} | {base / sec:.2f}x | {tr['final_loss']} |")
    lines += ["", f"RowAdam's one-head table ends within {gap:.1e} of SparseAdam's (both rounded to float16): "
              f"the same updates. Four heads cost **{rows[2][1] / rows[1][1]:.1f}x** one head's RowAdam time, "
              f"**{rows[2][1] / base:.1f}x** the old one-head SparseAdam time."]
    publish("\n".join(lines), a.out, HEADING, write=not a.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
