"""Encoding a corpus's candidate replies at scale: each of ``world`` workers (processes, machines
or GPUs; torchrun's RANK / WORLD_SIZE when set) encodes its own contiguous share of the filtered,
deduplicated replies into ``OUT/rank-R/`` (float16 vectors and the reply rows), in chunks that a
killed run resumes after; :func:`retrieval.bigindex.open_vectors` then reads every rank's files
in rank order, which is what :func:`retrieval.bigindex.build` streams into the index.

Every worker reads the same shards and keeps the same replies (the filter and the deduplication
are deterministic), so the ranks need no coordination: rank R of W takes rows
``[R * n // W, (R + 1) * n // W)``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from retrieval.bigindex import RANK_INFO, RANK_ROWS, VectorFile, write_json
from retrieval.index import ResponseFilter, collect_responses

def rank_and_world(rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """The worker's rank and the worker count: the arguments, else torchrun's RANK / WORLD_SIZE,
    else (0, 1)."""
    r = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
    w = int(os.environ.get("WORLD_SIZE", 1)) if world is None else int(world)
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"rank {r} of world {w}: a rank must lie in 0 .. world - 1")
    return r, w


def share(n: int, rank: int, world: int) -> tuple[int, int]:
    return rank * n // world, (rank + 1) * n // world


def encode_share(encoder, shards: str | os.PathLike, out: str | os.PathLike, rank: int | None = None,
                 world: int | None = None, split: str | None = "train", chunk: int = 4096,
                 batch_size: int = 64, filt: ResponseFilter | None = None,
                 progress: Callable[[str], None] | None = None) -> dict:
    """Encode this rank's share of the replies of ``shards`` into ``out/rank-R/``; returns what
    was done. A second call after a kill goes on from the last complete chunk."""
    rank, world = rank_and_world(rank, world)
    rows, dropped = collect_responses(shards, filt, split=split)
    lo, hi = share(len(rows), rank, world)
    mine = rows[lo:hi]
    folder = Path(out) / f"rank-{rank}"
    vf = VectorFile(folder, dim=encoder.dim)
    rows_path = folder / RANK_ROWS
    _cut_rows(rows_path, vf.count)  # reply rows past the last complete vector chunk are dropped
    say = progress or (lambda _: None)
    start = vf.count
    for i in range(start, len(mine), chunk):
        part = mine[i:i + chunk]
        vecs = encoder.encode_responses([r["text"] for r in part], batch_size=batch_size)
        with open(rows_path, "a", encoding="utf-8") as f:
            for j, r in enumerate(part):
                f.write(json.dumps(dict(r, id=lo + i + j), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        vf.append(vecs)   # the count moves last: a kill before this line redoes the chunk
        say(f"rank {rank}/{world}: {vf.count:,} / {len(mine):,} replies")
    info = {"rank": rank, "world": world, "rows": [lo, hi], "count": vf.count, "resumed_at": start, **_model_of(encoder),
            "replies_in_corpus": len(rows), "dropped": dropped, "shards": str(shards), "split": split or "all"}
    write_json(folder / RANK_INFO, info)
    return info


def _model_of(encoder) -> dict:
    """The model folder and weights hash the vectors come from: the chat service encodes its
    queries with the same model (retrieval.bigserve), and refuses another."""
    path = getattr(encoder, "path", None)
    try:
        sha = encoder.hash() if path else None
    except FileNotFoundError:  # an encoder object without a weights file
        sha = None
    return {"model": str(Path(path).resolve()) if path else None, "model_sha256": sha}


def _cut_rows(path: Path, keep: int) -> None:
    if not path.is_file():
        return
    with open(path, "rb") as f:
        lines = f.readlines()
    if len(lines) != keep:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(b"".join(lines[:keep]))
        os.replace(tmp, path)


def reply_rows(out: str | os.PathLike) -> list[dict]:
    """The reply rows of every rank, in id order (what the index's ids point at)."""
    rows = []
    for i in range(len(list(Path(out).glob("rank-*")))):
        with open(Path(out) / f"rank-{i}" / RANK_ROWS, encoding="utf-8") as f:
            rows += [json.loads(line) for line in f]
    return rows
