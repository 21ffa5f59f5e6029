"""Serving benchmark through the real server: `dialogbert serve` (waitress) on loopback at 1, 8
and 32 concurrent clients, beside the bare retriever's throughput in the same run.

    .venv/bin/python bench/server.py                          # on the demo's index (after `make demo`)
    .venv/bin/python bench/server.py --index runs/demo/index --shards runs/demo/shards --requests 200
    .venv/bin/python bench/server.py --grow 100000     # also a copy grown to 100,000 replies
    .venv/bin/python bench/server.py --precisions auto,fp32   # the dialog model's weights as served, and fp32

The bare arm calls ``HybridRetriever.search`` in this process, one context after another (the
work one chat request does, without HTTP, JSON or sessions), and then ``--batch`` contexts a call
(what the server's request batching, bot/batching.py, does when requests overlap): the limit the
server should approach. The server arm starts ``python -m dialogbert.cli serve`` (rate limit off,
``--threads``, ``--batch``)
in a subprocess and sends the same test-split messages from N client threads over HTTP, each
message a new session, so both arms encode the same one-turn contexts. Reports requests/s,
p50/p99 ms per request and the ratio to the bare arm; writes the ``## Serving through the
server`` section of docs/benchmarks.md.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.retrieval import publish  # noqa: E402
from bench.serving import parse_serving_args, shown  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(url: str, messages: list[str], clients: int) -> tuple[float, list[float]]:
    """(requests/s, per-request ms) of ``clients`` threads sending ``messages`` between them, each
    client on one kept-alive connection, as a browser's page sends its messages."""
    import http.client
    from urllib.parse import urlsplit
    where = urlsplit(url)
    ms: list[float] = []
    lock = threading.Lock()
    chunks = [messages[i::clients] for i in range(clients)]

    def client(mine):
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
        for m in mine:
            t = time.perf_counter()
            # a new session each time: the context is the message, as in the bare arm
            conn.request("POST", where.path, json.dumps({"message": m}).encode(), {"Content-Type": "application/json"})
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                raise RuntimeError(f"{url}: HTTP {r.status}: {body[:200]!r}")
            with lock:
                ms.append((time.perf_counter() - t) * 1000)
        conn.close()
    threads = [threading.Thread(target=client, args=(c,)) for c in chunks]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(ms) / (time.perf_counter() - t0), ms


def grown_copy(index_dir: str, replies: int, out: Path) -> Path:
    """A copy of ``index_dir`` grown to ``replies`` stored replies through the product's own `--add`
    path (build_index(add=True), then update_for_index: the n-gram vectors and the TF-IDF cache
    of the grown texts). The new replies are pairs of stored replies joined by a space (seeded):
    real words and lengths, distinct texts, encoded by the index's own model."""
    import random
    import shutil

    from preprocess.schema import Conversation, Turn, write_shard
    from retrieval.index import ResponseIndex, build_index
    from retrieval.ranker import update_for_index
    shutil.copytree(index_dir, out / "index")
    idx = ResponseIndex.load(out / "index")
    texts, seen, rng = idx.texts, set(idx.texts), random.Random(0)
    new = []
    while len(seen) < replies:
        t = f"{rng.choice(texts)} {rng.choice(texts)}"
        if t not in seen and len(t) <= 300:
            seen.add(t)
            new.append(t)
    (out / "shards").mkdir()
    convs = [Conversation(f"grow-{i}", "grow", "ko", [Turn("S1", "?"), Turn("S2", t)]) for i, t in enumerate(new)]
    write_shard(out / "shards" / "shard-00000.jsonl", convs)
    t0 = time.time()
    build_index(idx.info["model"], out / "shards", out / "index", add=True, encoder=idx.encoder, split=None,
                precision="auto")
    update_for_index(out / "index", encoder=idx.encoder)
    count = json.loads((out / "index" / "index_info.json").read_text("utf-8"))["count"]  # less any the PII guard refused
    print(f"grown to {count:,} replies in {time.time() - t0:.0f} s", flush=True)
    return out / "index"


def in_parallel(search, contexts: list, batch: int, workers: int) -> float:
    """Contexts a second of ``workers`` threads, each searching ``batch`` contexts a call from a
    shared list with the cores divided among them, as the server's busy search workers run
    (bot/batching.py); one worker: the library's own thread counts."""
    from bot.batching import set_threads, usable_cores
    calls = [contexts[i:i + batch] for i in range(0, len(contexts), batch)]
    lock = threading.Lock()

    def work():
        if workers > 1:
            set_threads(max(1, usable_cores() // workers))
        while True:
            with lock:
                if not calls:
                    return
                mine = calls.pop()
            search(mine, 20)
    threads = [threading.Thread(target=work) for _ in range(workers)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return len(contexts) / (time.perf_counter() - t)


def measure(index: str, messages: list[str], contexts: list, clients: list[int], threads: int,
            batch: int = 8, precision: str = "auto", wait_ms: float | None = None,
            workers: int = 1) -> tuple[float, float, list]:
    """(the bare retriever's requests/s one at a time and ``batch`` a call on ``workers`` threads,
    [(clients, requests/s, p50 ms, p99 ms)]) on one index, the dialog model's weights at
    ``precision`` in both arms, the server with ``workers`` search workers."""
    from retrieval.ranker import HybridRetriever
    hybrid = HybridRetriever.load(index, precision=precision)
    hybrid.search(contexts[:5], 20)  # warm-up
    t = time.perf_counter()
    for c in contexts:
        hybrid.search([c], 20)
    bare = len(contexts) / (time.perf_counter() - t)
    batched = in_parallel(hybrid.search, contexts, batch, workers)
    del hybrid

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dialogbert.cli", "serve", "--index", index, "--port", str(port),
                             "--threads", str(threads), "--batch", str(batch), "--rate-limit", "",
                             "--precision", precision, "--search-workers", str(workers),
                             *(["--batch-wait-ms", str(wait_ms)] if wait_ms is not None else [])],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("the server exited before it answered /healthz")
                time.sleep(0.5)
        load(base + "/api/chat", messages[:8], 2)  # warm-up
        rows = []
        for c in clients:
            rps, ms = load(base + "/api/chat", messages, c)
            rows.append((c, rps, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))))
            print(f"{c} clients: {rps:.1f} requests/s, p50 {rows[-1][2]:.0f} ms, p99 {rows[-1][3]:.0f} ms", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    return bare, batched, rows


def main(argv=None) -> int:
    def own(p):
        p.add_argument("--requests", type=int, default=200, help="messages sent at each concurrency")
        p.add_argument("--clients", default="1,8,32")
        from bot.server import THREADS
        p.add_argument("--threads", type=int, default=THREADS, help="the server's worker threads (its default)")
        p.add_argument("--batch", type=int, default=8, help="the server's request batching (its default; 1: off)")
        p.add_argument("--batch-wait-ms", type=float, default=None, help="the server's batch wait (default: its own)")
        p.add_argument("--search-workers", default="0",
                       help="the server's search workers, each measured in turn (0: its default, one per core "
                            "up to 4; e.g. 1,0)")
        p.add_argument("--precisions", default="auto",
                       help="the dialog model's weights, each measured in turn (auto: bf16 where native; e.g. auto,fp32)")
        p.add_argument("--grow", type=int, default=0,
                       help="also measure a copy of the index grown to this many replies (e.g. 100000)")
    a = parse_serving_args(__doc__, argv, own)
    if a is None:
        return 2
    import tempfile

    from retrieval.examples import load_examples
    t_all = time.time()
    exs = load_examples(a.shards, "test", max_examples=a.requests)
    contexts = [[e.context[-1]] for e in exs]   # a new session's first message: its newest turn alone
    messages = [c[0][1] for c in contexts]
    clients = [int(x) for x in a.clients.split(",")]
    count = json.loads((Path(a.index) / "index_info.json").read_text("utf-8"))["count"]
    from retrieval.encoder import resolve_precision
    precisions = [(p, resolve_precision(p)) for p in a.precisions.split(",")]
    named = lambda p, r: p if p == r else f"{p} ({r})"  # noqa: E731
    from bot.batching import default_workers
    workers = [int(w) or default_workers() for w in a.search_workers.split(",")]
    arms = [(p, r, w) for p, r in precisions for w in workers]
    results = [(f"`{shown(a.index)}`, {count:,} replies", named(p, r), w,
                *measure(a.index, messages, contexts, clients, a.threads, a.batch, p, a.batch_wait_ms, w)) for p, r, w in arms]
    with tempfile.TemporaryDirectory() as tmp:
        if a.grow > count:
            grown = grown_copy(a.index, a.grow, Path(tmp))
            grown_count = json.loads((grown / "index_info.json").read_text("utf-8"))["count"]
            results += [(f"the same grown to {grown_count:,} replies", named(p, r), w,
                         *measure(str(grown), messages, contexts, clients, a.threads, a.batch, p, a.batch_wait_ms, w))
                        for p, r, w in arms]
    cmd = " ".join(["python bench/server.py", *(argv or sys.argv[1:])])
    lines = [f"Command: `{cmd}` ({time.strftime('%Y-%m-%d', time.gmtime())}; {os.cpu_count()} CPU cores; the server "
             f"with {a.threads} worker threads, request batching up to {a.batch}, rate limit off, each client one "
             f"kept-alive connection; total "
             f"{time.time() - t_all:.0f} s).", "",
             f"{len(messages)} test-split messages at each concurrency, each one a new session (a one-turn context, "
             f"as in the bare arm). The bare arm: `HybridRetriever.search` in-process, one request after another, "
             f"and {a.batch} contexts a call on as many threads as the server has search workers (the cores divided "
             f"among them, as the server's busy workers run), in the same run; each set of weights (`--precision`, the dialog "
             f"model's: auto is bf16 where the CPU computes it natively) in both arms." + (" The grown index: the index's replies plus pairs of them joined by a space, "
                                    "added through `--add` (bench/server.py `grown_copy`)." if a.grow > count else ""), "",
             f"| index | weights | search workers | bare requests/s, one a call | bare, {a.batch} a call per worker | "
             f"clients | requests/s | share of the bare {a.batch} a call | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, weights, w, bare, batched, rows in results:
        lines += [f"| {name} | {weights} | {w} | {bare:.1f} | {batched:.1f} | {c} | {rps:.1f} | {rps / batched:.0%} | "
                  f"{p50:.0f} | {p99:.0f} |" for c, rps, p50, p99 in rows]
    publish("\n".join(lines), a.out, "## Serving through the server", write=not a.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
