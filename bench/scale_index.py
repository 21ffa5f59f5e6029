"""The reply index at scale (retrieval/bigindex.py): IVF-PQ in RAM, float16 vectors on disk for the
exact re-score; build time, memory per vector, query latency and recall@10 against exact search,
projected to 100 million replies.

    .venv/bin/python bench/scale_index.py --real runs/demo/index --sizes 1000000,10000000
    .venv/bin/python bench/scale_index.py --sizes 200000 --no-write        # a quick look

Vectors: with ``--real``, synthetic vectors drawn from a Gaussian mixture fitted to the demo
index's real reply vectors (256 k-means centres, the real spread around them), normalised, so
they are shaped like the dialog model's embeddings; queries from the same mixture. The real vectors
are measured too: the demo's replies as the database, its real contexts as the queries.
Writes the ``## Index at scale`` section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from retrieval.bigindex import BigIndex, Recipe, VectorFile, build, exact_top, recall_at  # noqa: E402

GiB = 1024 ** 3


def _bench_retrieval():
    """bench/retrieval.py (its vectors and its docs/benchmarks.md writer), loaded by path: as a
    module named ``retrieval`` it would hide the package."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_retrieval", ROOT / "bench" / "retrieval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Shaped:
    """A Gaussian mixture fitted to real vectors: k-means centres (their shares as weights) plus
    the covariance of the vectors around their centre, shared by all components; draws are
    L2-normalised. It keeps the real vectors' coarse clusters and their spread within a cluster."""

    def __init__(self, real: np.ndarray, k: int = 256, seed: int = 0):
        import faiss
        real = np.ascontiguousarray(real, dtype=np.float32)
        self.dim = real.shape[1]
        km = faiss.Kmeans(self.dim, k, niter=20, seed=seed, spherical=False)
        km.train(real)
        _, assign = km.index.search(real, 1)
        assign = assign[:, 0]
        self.centres = km.centroids.astype(np.float32)
        self.weights = np.bincount(assign, minlength=k) / len(real)
        resid = (real - self.centres[assign]).astype(np.float64)
        vals, vecs = np.linalg.eigh(np.cov(resid, rowvar=False))
        self.map = (vecs * np.sqrt(np.clip(vals, 0, None))).T.astype(np.float32)  # z @ map ~ N(0, cov)

    def draw(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        c = rng.choice(len(self.centres), n, p=self.weights)
        x = rng.standard_normal((n, self.dim), dtype=np.float32) @ self.map + self.centres[c]
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def real_vectors(index_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(reply vectors, context vectors) of a `dialogbert index` folder (its Flat indexes)."""
    import faiss
    replies = faiss.read_index(str(index_dir / "faiss.index"))
    contexts = faiss.read_index(str(index_dir / "memory.index"))
    return replies.reconstruct_n(0, replies.ntotal), contexts.reconstruct_n(0, contexts.ntotal)


def write_vectors(folder: Path, n: int, draw, batch: int = 1_000_000) -> VectorFile:
    vf = VectorFile(folder, dim=draw(1, 0).shape[1])
    while vf.count < n:  # resumes a killed run where its file ends
        m = min(batch, n - vf.count)
        vf.append(draw(m, 1000 + vf.count // batch))
        print(f"  vectors {vf.count:,} / {n:,}", flush=True)
    return vf


def latency(bi: BigIndex, queries: np.ndarray, reps: int) -> tuple[float, float]:
    times = []
    for q in queries[:reps]:
        t = time.perf_counter()
        bi.search(q[None, :], 10)
        times.append(time.perf_counter() - t)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def measure(name: str, vf: VectorFile, queries: np.ndarray, recipe: Recipe, out: Path,
            sweep: list[tuple[int, int]], reps: int) -> list[dict]:
    t = time.perf_counter()
    truth = exact_top(vf, queries, 10)
    t_exact = (time.perf_counter() - t) / len(queries)
    done = out / "bigindex.json"
    old = json.loads(done.read_text("utf-8")) if done.is_file() else {}
    built_as = ("nlist", "pq", "train_size", "seed")   # nprobe and refine are search settings
    if {k: old.get("recipe", {}).get(k) for k in built_as} == {k: asdict(recipe)[k] for k in built_as} \
            and old.get("count") == vf.count:
        info = old   # built before with this recipe over these vectors: its build times are reported
        print(f"  reusing {out} (built {info['train_s']} s + {info['add_s']} s)", flush=True)
    else:
        info = build(vf, out, recipe, progress=lambda s: print("  " + s, flush=True))
    bi = BigIndex.load(out)
    rows = []
    for nprobe, refine in sweep:
        bi.set_params(nprobe, refine)
        _, found = bi.search(queries, 10)
        p50, p99 = latency(bi, queries, reps)
        rows.append({"set": name, "vectors": vf.count, "factory": info["factory"], "nprobe": nprobe,
                     "refine": refine, "train_s": info["train_s"], "add_s": info["add_s"],
                     "ram_bytes_per_vector": info["bytes_per_vector_in_ram"],
                     "disk_bytes_per_vector": 2 * vf.dim, "p50_ms": p50, "p99_ms": p99,
                     "exact_ms": t_exact * 1e3, "recall@10": recall_at(found, truth)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| set | vectors | index | nprobe | refine | train s | add s | RAM B/vector | p50 / p99 ms "
            "| exact scan ms | recall@10 |\n|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|\n")
    return head + "".join(
        f"| {r['set']} | {r['vectors']:,} | {r['factory']} | {r['nprobe']} | {r['refine']} | {r['train_s']} "
        f"| {r['add_s']} | {r['ram_bytes_per_vector']} | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} "
        f"| {r['exact_ms']:.0f} | {r['recall@10']:.3f} |\n" for r in rows)


def projection(rows: list[dict], dim: int, target: int = 100_000_000) -> str:
    big = max(rows, key=lambda r: r["vectors"])
    same = [r for r in rows if r["vectors"] == big["vectors"]]
    ok = [r for r in same if r["recall@10"] >= 0.95]
    pick = min(ok, key=lambda r: r["p50_ms"]) if ok else max(same, key=lambda r: r["recall@10"])
    nlist = 65536
    ram = target * big["ram_bytes_per_vector"] + nlist * dim * 4
    return (f"Projected to {target:,} replies with the recipe measured at {big['vectors']:,} "
            f"({pick['factory'].split(',')[1]}, nprobe {pick['nprobe']}, refine {pick['refine']}: recall@10 "
            f"{pick['recall@10']:.3f}): RAM {ram / GiB:.1f} GiB for the codes and ids (measured "
            f"{big['ram_bytes_per_vector']} bytes a vector) plus {nlist:,} centroids; the float16 vectors "
            f"{target * 2 * dim / GiB:.0f} GiB on disk, memory-mapped (each query reads {pick['refine']} rows "
            f"of {2 * dim} bytes). The goal is < 16 GiB of RAM.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--real", type=Path, default=None, help="a `dialogbert index` folder (Flat): its vectors shape the synthetic ones")
    p.add_argument("--sizes", default="1000000", help="comma-separated database sizes")
    p.add_argument("--dim", type=int, default=384, help="dimension without --real")
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--reps", type=int, default=200, help="single-query latencies timed")
    p.add_argument("--nlist", type=int, default=0, help="inverted lists (0: 4 x sqrt(n) rounded to a power of 2, <= 8192)")
    p.add_argument("--pq", default="PQ48", help="the code (faiss factory syntax): PQ48 = 48 bytes a vector, 8 bits per sub-quantiser")
    p.add_argument("--sweep", default="64:200,128:400,128:1000,128:2000", help="nprobe:refine pairs")
    p.add_argument("--work", type=Path, default=Path("/tmp/dialogbert-scale"), help="where the vector files and indexes go")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    import faiss
    br = _bench_retrieval()
    sweep = [tuple(int(v) for v in s.split(":")) for s in a.sweep.split(",")]
    t_all = time.perf_counter()
    rows = []
    if a.real:
        reps, ctxs = real_vectors(a.real)
        shape = Shaped(reps)
        draw = shape.draw
        vf = VectorFile(a.work / "real", dim=reps.shape[1])
        if vf.count == 0:
            vf.append(reps)
        nl = 1 << int(np.log2(max(1, len(reps) // 100)))
        rows += measure("demo replies, real contexts as queries", vf, ctxs[:a.queries], Recipe(nlist=nl, pq=a.pq),
                        a.work / "real-index", sweep, a.reps)
    else:
        def draw(m: int, seed: int) -> np.ndarray:
            return br.embeddings_like(m, a.dim, seed)
    for n in (int(s) for s in a.sizes.split(",")):
        vf = write_vectors(a.work / f"synthetic-{n}", n, draw)
        nl = a.nlist or min(8192, 1 << int(round(np.log2(4 * np.sqrt(n)))))
        rows += measure("shaped like the demo's replies", vf, draw(a.queries, 7), Recipe(nlist=nl, pq=a.pq),
                        a.work / f"index-{n}", sweep, a.reps)
    dim = rows[-1]["disk_bytes_per_vector"] // 2
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    body = (f"Command: `.venv/bin/python bench/scale_index.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
            f"({time.strftime('%Y-%m-%d')}; {os.cpu_count()} CPU cores shared with other jobs, Python "
            f"{platform.python_version()}, faiss {faiss.__version__}; {(time.perf_counter() - t_all) / 60:.0f} min; "
            f"peak RSS {rss:,.0f} MB).\n\n"
            "IVF-PQ codes in RAM, float16 vectors on disk (memory-mapped) re-scoring each query's `refine` "
            "best candidates (`retrieval/bigindex.py`); recall@10 against exact search over the same float16 "
            "vectors; p50 / p99 of one query at a time; `exact scan ms`: the streamed exact search per query "
            "(what the index replaces). RAM B/vector: the faiss index file over the vector count (codes, ids, "
            "centroids).\n\n" + table(rows) + "\n" + projection(rows, dim) + "\n")
    if a.no_write:
        print(body)
    else:
        br.publish(body, a.out, "## Index at scale")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
