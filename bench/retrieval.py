"""Retrieval benchmark: encoder throughput and FAISS index build / memory / latency / recall.

    .venv/bin/python bench/retrieval.py                      # 100k and 1M vectors, d=256
    .venv/bin/python bench/retrieval.py --sizes 100000 --no-write

Vectors imitate sentence embeddings (a random map of a 24-d Gaussian plus noise, normalised),
so that recall against exact search means something (uniform random vectors in 256-d have no
neighbours worth finding); queries come from the same distribution. Recall@10 is measured against Flat (exact) search.
Writes only the ``## Retrieval`` section of docs/benchmarks.md (re-read just before writing).
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from retrieval.index import _faiss, make_index, set_search_params  # noqa: E402

# PQ32np: plain PQ32 from the factory also runs polysemous training, minutes on a busy CPU
DEFAULT_FACTORIES = "Flat,IVF1024,PQ32x4fs,IVF4096,PQ32np,HNSW32"


def embeddings_like(n: int, d: int, seed: int, latent: int = 24) -> np.ndarray:
    """Synthetic sentence-embedding-like vectors: a random linear map of a 24-dimensional
    Gaussian (sentence embeddings have a low intrinsic dimension) plus a little isotropic noise,
    L2-normalised. Same map for database and queries (seeded by ``latent``), different draws."""
    A = np.random.default_rng(12345).standard_normal((latent, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    step = 200_000
    for i in range(0, n, step):
        m = min(step, n - i)
        out[i:i + m] = rng.standard_normal((m, latent)).astype(np.float32) @ A
        out[i:i + m] += 0.5 * rng.standard_normal((m, d)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def split_factories(s: str) -> list[str]:
    """'Flat,IVF1024,PQ32x4fs,HNSW32' -> ['Flat', 'IVF1024,PQ32x4fs', 'HNSW32'] (an IVF part takes
    the following encoding part)."""
    parts, out = s.split(","), []
    for p in parts:
        if out and out[-1].startswith("IVF") and "," not in out[-1] and not p.startswith(("IVF", "HNSW", "Flat")):
            out[-1] += "," + p
        else:
            out.append(p)
    return out


def timings(fn, reps: int) -> tuple[float, float]:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(ts, 50)), float(np.percentile(ts, 99))


def bench_index(factory: str, xb: np.ndarray, xq: np.ndarray, gt: np.ndarray, k: int = 10) -> dict:
    faiss = _faiss()
    t = time.perf_counter()
    index = make_index(factory, xb.shape[1], xb)
    index.add(xb)
    build = time.perf_counter() - t
    set_search_params(index, nprobe=16, ef_search=64)
    mem_mb = faiss.serialize_index(index).nbytes / 2**20
    _, I = index.search(xq, k)
    recall = float(np.mean([len(set(I[i]) & set(gt[i])) / k for i in range(len(xq))]))
    one = timings(lambda: index.search(xq[:1], k), 100 if factory != "Flat" else 20)
    i64 = iter(range(10**9))
    b64 = timings(lambda: index.search(xq[(next(i64) * 64) % (len(xq) - 64):][:64], k), 20 if factory != "Flat" else 5)
    return {"factory": factory, "n": len(xb), "build_s": build, "mem_mb": mem_mb, "recall10": recall,
            "q1_p50": one[0], "q1_p99": one[1], "q64_p50": b64[0], "q64_p99": b64[1]}


def bench_encoder(n: int = 1000) -> dict:
    """Sentences/s of the tiny DialogBert (hidden 128, 2 layers, as configs/tiny.toml)."""
    import csv

    import torch

    from dialogbert.modeling import DialogBertConfig, DialogBertModel
    from dialogbert.tokenizer import train_tokenizer
    from preprocess.schema import Conversation, Turn, write_shard
    from retrieval.encoder import Encoder

    with open(ROOT / "data/sample/chatbotdata-ko/ChatbotData.csv", encoding="utf-8") as f:
        rows = [r for _, r in zip(range(3000), csv.DictReader(f))]
    with tempfile.TemporaryDirectory() as tmp:
        write_shard(Path(tmp) / "s.jsonl", [Conversation(str(i), "bench", "ko", [Turn("S1", r["Q"]), Turn("S2", r["A"])])
                                            for i, r in enumerate(rows)])
        tok = train_tokenizer(tmp, None, vocab_size=4000)
    torch.manual_seed(0)
    cfg = DialogBertConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=512, max_position_embeddings=128, max_turns=8, num_speakers=4,
                           pad_token_id=tok.pad_token_id)
    enc = Encoder(DialogBertModel(cfg).eval(), tok)
    texts = [r["Q"] for r in rows][:n]
    ctxs = [[("S1", r["Q"]), ("S2", r["A"]), ("S1", r["Q"])] for r in rows][:n]
    enc.encode_responses(texts[:64])
    t = time.perf_counter()
    enc.encode_responses(texts, batch_size=64)
    resp = len(texts) / (time.perf_counter() - t)
    t = time.perf_counter()
    enc.encode_contexts(ctxs, batch_size=64)
    ctx = len(ctxs) / (time.perf_counter() - t)
    params = sum(p.numel() for p in enc.model.parameters())
    return {"responses_per_s": resp, "contexts_per_s": ctx, "params": params, "n": n}


def publish(body: str, path, heading: str, write: bool = True) -> None:
    """Print a benchmark's section and (``write``) put it under ``heading`` in ``path``."""
    print(body)
    if write:
        update_section(Path(path), body, heading=heading)
        print(f"updated the {heading} section of {path}")


def update_section(path: Path, body: str, heading: str = "## Retrieval") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text("utf-8") if path.exists() else "# Benchmarks\n"
    section = f"{heading}\n\n{body.strip()}\n"
    pat = re.compile(rf"^{re.escape(heading)}\s*\n.*?(?=^## |\Z)", re.S | re.M)
    if pat.search(text):
        text = pat.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, "utf-8")
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated vector counts")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--factories", default=DEFAULT_FACTORIES)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--hnsw-max", type=int, default=200_000,
                   help="skip HNSW above this size (its build is minutes per million on 2 cores)")
    p.add_argument("--threads", type=int, default=1,
                   help="faiss/torch threads (1 on a shared CPU: OpenMP spin-waits when oversubscribed)")
    p.add_argument("--no-encoder", action="store_true")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    a = p.parse_args(argv)
    faiss = _faiss()
    faiss.omp_set_num_threads(a.threads)
    import torch
    torch.set_num_threads(a.threads)
    t_all = time.time()
    lines = []
    enc = None if a.no_encoder else bench_encoder()
    if enc:
        print(f"encoder: {enc}", flush=True)
    results, skipped = [], []
    for n in [int(x) for x in a.sizes.split(",") if x]:
        xb = embeddings_like(n, a.dim, seed=0)
        xq = embeddings_like(a.queries, a.dim, seed=1)
        exact = faiss.IndexFlatIP(a.dim)
        exact.add(xb)
        _, gt = exact.search(xq, 10)
        del exact
        for f in split_factories(a.factories):
            if f.startswith("HNSW") and n > a.hnsw_max:
                skipped.append(f"{f} at {n:,} (--hnsw-max {a.hnsw_max:,})")
                continue
            r = bench_index(f, xb, xq, gt)
            results.append(r)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    cmd = " ".join(["python bench/retrieval.py", *[x if "," not in x else f'"{x}"' for x in (argv or sys.argv[1:])]])
    lines.append(f"Command: `{cmd}` ({time.strftime('%Y-%m-%d', time.gmtime())}; {os.cpu_count()} CPU cores "
                 f"shared with other jobs, {a.threads} thread(s), Python {platform.python_version()}, faiss {faiss.__version__}; "
                 f"total {time.time() - t_all:.0f} s).")
    if enc:
        lines += ["", f"Encoder throughput, tiny DialogBert ({enc['params'] / 1e6:.1f}M parameters, hidden 128, "
                      f"2 layers), batch 64, {enc['n']} ChatbotData lines: **{enc['responses_per_s']:.0f} "
                      f"responses/s**, **{enc['contexts_per_s']:.0f} 3-turn contexts/s**."]
    lines += ["", f"FAISS, d={a.dim}, inner product on normalised synthetic embedding-like vectors (24-d latent + noise), top-10, "
                  f"{a.queries} queries; IVF nprobe=16, HNSW efSearch=64; "
                  f"`faiss.cvar.distance_compute_blas_threshold = 20`; recall@10 against exact search.", "",
              "| vectors | index | build s | memory MB | 1 query p50 / p99 ms | 64 queries p50 / p99 ms | recall@10 |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['n']:,} | {r['factory']} | {r['build_s']:.1f} | {r['mem_mb']:.0f} | "
                     f"{r['q1_p50']:.2f} / {r['q1_p99']:.2f} | {r['q64_p50']:.1f} / {r['q64_p99']:.1f} | "
                     f"{r['recall10']:.3f} |")
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped) + "."]
    body = "\n".join(lines)
    print(body)
    if not a.no_write:
        update_section(Path(a.out), body)
        print(f"updated the ## Retrieval section of {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
