"""Serving benchmark: what the ranker costs per chat request, against the dual encoder alone.

    .venv/bin/python bench/serving.py                         # on the demo's index (after `make demo`)
    .venv/bin/python bench/serving.py --index runs/demo/index --shards runs/demo/shards --queries 300

Both arms answer the same test-split contexts one request at a time, as the chat service does:
``ResponseIndex.search`` (encode the context, one FAISS search) and ``HybridRetriever.search``
(the same, plus the context memory's dense and lexical neighbours, the stored vectors of ~70
candidates, and the fitted ranker's features). Reports p50/p99 milliseconds per request and the
ratio, how often the two agree on the first reply, and the chat service's start-up with and
without the index folder's cached TF-IDF. With ``--bigindex DIR`` (the same replies through
`dialogbert encode` and `dialogbert bigindex`) a third arm: ``BigRetriever.search``, what the chat
service serves from a bigindex. Writes the ``## Serving`` section of docs/benchmarks.md.

    .venv/bin/python bench/serving.py --bigindex runs/bigindex
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


def shown(path: str) -> str:
    """The index path as the docs show it: relative to the repository when inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def per_request(fn, contexts) -> tuple[list[float], list]:
    ms, out = [], []
    for ctx in contexts:
        t = time.perf_counter()
        out.append(fn([ctx])[0])
        ms.append((time.perf_counter() - t) * 1000)
    return ms, out


def chat_batch_arms(index, contexts, size: int = 8, k: int = 50, reps: int = 3) -> list[str]:
    """The chat path's two shortcuts on calls of ``size`` contexts (what the service's batcher
    hands the retriever under load), each beside the long way in this run, the arms taking turns
    ``reps`` times (the median reported): the dialog model's contexts packed into one row
    (``Encoder.forward_packed``) against the padded batch, and a Flat index's search as one matrix
    product (``ResponseIndex.search_vectors``) against faiss's own search, ``k`` replies (the
    ranker's pool)."""
    enc = index.encoder
    batches = [contexts[i:i + size] for i in range(0, len(contexts) - size + 1, size)]
    vectors = [enc.encode_contexts(b) for b in batches]

    def encode(packed: bool):
        enc.pack_tokens = type(enc).pack_tokens if packed else 0
        return [enc.encode_contexts(b) for b in batches]

    arms = {"packed": lambda: encode(True), "padded": lambda: encode(False)}
    flat = index.flat_vectors() is not None
    if flat:
        arms["product"] = lambda: [index.search_vectors(q, k) for q in vectors]
        arms["faiss"] = lambda: [index.index.search(q, min(k, index.index.ntotal)) for q in vectors]
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    out: dict[str, list] = {}
    for _ in range(reps):
        for name, fn in arms.items():
            t = time.perf_counter()
            out[name] = fn()
            seconds[name].append(time.perf_counter() - t)
    del enc.pack_tokens  # the class's budget again
    rate = {name: len(batches) * size / float(np.median(s)) for name, s in seconds.items()}
    cos = min(float((a * b).sum(1).min()) for a, b in zip(out["packed"], out["padded"]))
    lines = ["", f"A call of {size} contexts, {len(batches)} calls ({enc.weights_precision} weights; "
                 f"contexts a second, median of {reps}):", "",
             "| step | the chat path | contexts/s | the long way | contexts/s | speed-up |", "|---|---|---|---|---|---|",
             f"| dialog model | packed into one row | {rate['packed']:.0f} | padded batch | {rate['padded']:.0f} | "
             f"**{rate['packed'] / rate['padded']:.2f}x** |"]
    if flat:
        same = float(np.mean([np.array_equal(a[1], b[1]) for a, b in zip(out["product"], out["faiss"])]))
        same_set = float(np.mean([all(set(x) == set(y) for x, y in zip(a[1], b[1]))
                                  for a, b in zip(out["product"], out["faiss"])]))
        gap = max(float(np.abs(a[0] - b[0]).max()) for a, b in zip(out["product"], out["faiss"]))
        lines.append(f"| Flat search, top {k} | one matrix product | {rate['product']:.0f} | faiss `search` | "
                     f"{rate['faiss']:.0f} | **{rate['product'] / rate['faiss']:.2f}x** |")
    lines += ["", f"Packed and padded vectors agree to cosine {cos:.5f} at worst"
              + (f"; the two searches return the same {k} replies for {same_set:.0%} of the calls, in the same "
                 f"order for {same:.0%} (the rest swap replies whose scores differ by rounding: the largest score "
                 f"difference is {gap:.1e})." if flat else ".")]
    return lines


def startup(index_dir: str) -> tuple[float, float]:
    """Seconds for HybridRetriever.load on a copy of the index folder: without the fitted TF-IDF
    cache (``lexical/``: fit and transform in memory, as every start did before the cache), then
    with the cache that `dialogbert index` wrote (the chat service only reads it)."""
    import shutil
    import tempfile

    from retrieval.ranker import HybridRetriever, LexicalCache
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "index"
        shutil.copytree(index_dir, d, ignore=shutil.ignore_patterns(LexicalCache.DIR))
        times = []
        for _ in range(2):
            t = time.perf_counter()
            HybridRetriever.load(d)
            times.append(time.perf_counter() - t)
            if (Path(index_dir) / LexicalCache.DIR).is_dir() and not (d / LexicalCache.DIR).exists():
                shutil.copytree(Path(index_dir) / LexicalCache.DIR, d / LexicalCache.DIR)
    return times[0], times[1]


def parse_serving_args(doc: str, argv, add) -> argparse.Namespace | None:
    """The serving benchmarks' arguments: --index and --shards (the demo's by default), ``add(p)``'s
    own, --no-write and --out; None (after saying why) when the index is not there."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--index", default=str(ROOT / "runs" / "demo" / "index"))
    p.add_argument("--shards", default=str(ROOT / "runs" / "demo" / "shards"))
    add(p)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    a = p.parse_args(argv)
    if not (Path(a.index) / "index_info.json").exists():
        print(f"{a.index}: no index there; run `make demo` (or `dialogbert index`) first", file=sys.stderr)
        return None
    return a


def _own_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--k", type=int, default=20, help="replies per request (the chat service's TOP_K)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="the dialog model's weights in every arm, as `dialogbert serve --precision` (default auto)")
    p.add_argument("--bigindex", default=None,
                   help="also a bigindex of the same replies (`dialogbert encode` + `dialogbert bigindex`), "
                        "served by the dialog model alone (retrieval.bigserve.BigRetriever)")


def main(argv=None) -> int:
    a = parse_serving_args(__doc__, argv, _own_args)
    if a is None:
        return 2
    import torch

    from retrieval.examples import load_examples
    from retrieval.index import ResponseIndex
    from retrieval.ranker import HybridRetriever

    torch.set_num_threads(a.threads)
    from retrieval.index import _faiss
    _faiss().omp_set_num_threads(a.threads)
    t_all = time.time()
    plain = ResponseIndex.load(a.index)
    plain.encoder.for_inference(a.precision)  # every arm runs the weights the chat service runs
    hybrid = HybridRetriever.load(a.index, precision=a.precision, index=plain)  # the same model, loaded once
    contexts = [e.context for e in load_examples(a.shards, "test", max_examples=a.queries)]
    for fn in (plain.search, hybrid.search):  # warm-up
        fn(contexts[:5], a.k)
    ms_plain, out_plain = per_request(lambda c: plain.search(c, a.k), contexts)
    ms_hybrid, out_hybrid = per_request(lambda c: hybrid.search(c, a.k), contexts)
    same = float(np.mean([bool(x and y and x[0][1]["id"] == y[0][1]["id"]) for x, y in zip(out_plain, out_hybrid)]))
    p50 = (np.percentile(ms_plain, 50), np.percentile(ms_hybrid, 50))
    p99 = (np.percentile(ms_plain, 99), np.percentile(ms_hybrid, 99))
    info = plain.info
    big_lines, big_note = [], ""
    if a.bigindex:
        from retrieval.bigserve import BigRetriever
        big = BigRetriever.load(a.bigindex, info["model"], precision=a.precision)
        big.search(contexts[:5], a.k)
        ms_big, out_big = per_request(lambda c: big.search(c, a.k), contexts)
        agree = float(np.mean([bool(x and y and x[0][1]["text"] == y[0][1]["text"]) for x, y in zip(out_plain, out_big)]))
        r = big.index.recipe
        big_lines = [f"| dialog model over the bigindex (`BigRetriever.search`: {big.index.info['factory']}, nprobe "
                     f"{r.nprobe}, refine {r.refine}) | {np.percentile(ms_big, 50):.1f} | {np.percentile(ms_big, 99):.1f} |"]
        big_note = (f" The bigindex (`{shown(a.bigindex)}`, the same {len(big.rows):,} replies as float16 rows) gives "
                    f"the Flat index's first reply for {agree:.0%} of the contexts.")
    batch_lines = chat_batch_arms(plain, contexts)
    cold, warm = startup(a.index)
    cmd = " ".join(["python bench/serving.py", *(argv or sys.argv[1:])])
    lines = [f"Command: `{cmd}` ({time.strftime('%Y-%m-%d', time.gmtime())}; {os.cpu_count()} CPU cores, "
             f"{a.threads} thread(s), Python {platform.python_version()}; total {time.time() - t_all:.0f} s).", "",
             f"Index `{shown(a.index)}`: {info['count']:,} replies, {info.get('memory', 0):,} memory contexts, "
             f"{info['factory']}, encoder `{Path(info['model']).name}` ({plain.encoder.weights_precision} weights); ranker features "
             f"{', '.join(hybrid.ranker.active)}. {len(contexts)} test contexts, one request each, top {a.k}.", "",
             "| retriever | p50 ms | p99 ms |", "|---|---|---|",
             f"| dual encoder alone (`ResponseIndex.search`) | {p50[0]:.1f} | {p99[0]:.1f} |",
             f"| ranker (`HybridRetriever.search`) | {p50[1]:.1f} | {p99[1]:.1f} |", *big_lines, "",
             f"The ranker costs **{p50[1] / p50[0]:.1f}x** the dual encoder's p50 per request; the two pick the same "
             f"first reply for {same:.0%} of the contexts." + big_note, *batch_lines, "",
             f"Start-up (`HybridRetriever.load` on a copy of the folder): {cold:.1f} s when the ranker's TF-IDF is "
             f"fitted, {warm:.1f} s when it is read from the index folder's `lexical/` cache that `dialogbert index` "
             f"wrote (**{cold / warm:.1f}x** faster)."]
    publish("\n".join(lines), a.out, "## Serving", write=not a.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
