"""A reply index for tens of millions of replies: IVF-PQ codes in RAM, the exact vectors in a
float16 file on disk that only re-scores each query's best candidates.

An exact (Flat) index keeps 4 x d bytes per reply in RAM: 154 GB for 100 million replies of
d=384. Here RAM holds the coarse centroids and the inverted lists (a product-quantisation
code of a few dozen bytes and an 8-byte id per reply); the float16 vectors (2 x d bytes per reply)
stay in ``vectors.f16``, memory-mapped, and a search reads ``refine`` rows of it per query to
replace the approximate scores by exact ones. Vectors are appended in batches (the encoder's
output streams in), the quantiser trains on a sample, and the codes are added in batches, so no
step holds all vectors in RAM. Measured in bench/scale_index.py (docs/scaling.md).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from preprocess.schema import atomic_write_text

VECTORS, VECTORS_INFO, CODES, INFO = "vectors.f16", "vectors.json", "ivfpq.index", "bigindex.json"
RANK_INFO, RANK_ROWS = "rank.json", "replies.jsonl"  # beside each rank's vectors (retrieval/bulk.py)


def write_json(path: Path, obj: dict) -> None:
    """``obj`` as indented JSON, written atomically (a reader never sees half of it)."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


class VectorFile:
    """Float16 row vectors appended to ``DIR/vectors.f16``; ``DIR/vectors.json`` records how many
    rows are complete. A run killed while appending resumes at the recorded count: rows written
    after it are cut off when the file is opened again."""

    def __init__(self, folder: str | os.PathLike, dim: int | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        info = self.folder / VECTORS_INFO
        if info.is_file():
            meta = json.loads(info.read_text("utf-8"))
            if dim is not None and dim != meta["dim"]:
                raise ValueError(f"{info}: holds vectors of dim {meta['dim']}, not {dim}")
            self.dim, self.count = int(meta["dim"]), int(meta["count"])
        elif dim is None:
            raise FileNotFoundError(f"{info}: no vector file here (give dim to start one)")
        else:
            self.dim, self.count = int(dim), 0
        path = self.folder / VECTORS
        row = 2 * self.dim
        if path.exists() and path.stat().st_size != self.count * row:
            with open(path, "r+b") as f:
                f.truncate(self.count * row)  # the rows after the last recorded count are incomplete
        self._commit()

    def _commit(self) -> None:
        write_json(self.folder / VECTORS_INFO, {"dim": self.dim, "count": self.count, "dtype": "float16"})

    def append(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch)
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise ValueError(f"a batch of shape {batch.shape}; this file holds rows of dim {self.dim}")
        with open(self.folder / VECTORS, "ab") as f:
            f.write(np.ascontiguousarray(batch, dtype=np.float16).tobytes())
            f.flush()
            os.fsync(f.fileno())
        self.count += len(batch)
        self._commit()

    def array(self) -> np.ndarray:
        """The rows, memory-mapped read-only: (count, dim) float16."""
        if self.count == 0:
            return np.zeros((0, self.dim), np.float16)
        return np.memmap(self.folder / VECTORS, dtype=np.float16, mode="r", shape=(self.count, self.dim))

    def batches(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 rows) in order, ``size`` rows at a time."""
        a = self.array()
        for i in range(0, self.count, size):
            yield i, np.asarray(a[i:i + size], dtype=np.float32)


class VectorSet:
    """Several vector files read as one, in order (the ranks of one encoding): ``count``,
    ``dim``, ``batches`` and ``array()[ids]`` as a :class:`VectorFile` offers them."""

    def __init__(self, files: Sequence[VectorFile]):
        if not files:
            raise ValueError("no vector files")
        dims = {f.dim for f in files}
        if len(dims) != 1:
            raise ValueError(f"vector files of different dims {sorted(dims)}")
        self.files, self.dim = list(files), dims.pop()
        self.offsets = np.cumsum([0] + [f.count for f in self.files])
        self.count = int(self.offsets[-1])
        self.folder = self.files[0].folder.parent

    def batches(self, size: int):
        for f, off in zip(self.files, self.offsets):
            for i, rows in f.batches(size):
                yield int(off) + i, rows

    def array(self) -> "_Rows":
        return _Rows(self)


class _Rows:
    """``rows[ids]`` over a :class:`VectorSet` (ids sorted or not; float16 out)."""

    def __init__(self, vs: VectorSet):
        self.vs, self.maps = vs, [f.array() for f in vs.files]

    def __len__(self) -> int:
        return self.vs.count

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(self.vs.count)]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, ids) -> np.ndarray:
        if isinstance(ids, slice):
            ids = np.arange(*ids.indices(self.vs.count))
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim == 0:
            return self[ids[None]][0]
        which = np.searchsorted(self.vs.offsets, ids, side="right") - 1
        out = np.empty((len(ids), self.vs.dim), np.float16)
        for k in np.unique(which):
            sel = which == k
            out[sel] = self.maps[k][ids[sel] - self.vs.offsets[k]]
        return out


def _ranks(out: Path) -> VectorSet:
    """Every rank's vectors under ``out`` (rank-0, rank-1, ...), each checked complete."""
    infos = sorted(out.glob(f"rank-*/{RANK_INFO}"))
    if not infos and not any(out.glob("rank-*")):
        raise FileNotFoundError(f"{out}: neither {VECTORS_INFO} nor rank-N folders (run `dialogbert encode` first)")
    world = json.loads(infos[0].read_text("utf-8"))["world"] if infos else len(list(out.glob("rank-*"))) + 1
    files = []
    for i in range(world):
        p = out / f"rank-{i}"
        info = json.loads((p / RANK_INFO).read_text("utf-8")) if (p / RANK_INFO).is_file() else None
        vf = VectorFile(p) if (p / VECTORS_INFO).is_file() else None
        if info is None or vf is None or vf.count != info["rows"][1] - info["rows"][0]:
            raise ValueError(f"{p}: rank {i} is missing or unfinished; run its `dialogbert encode --rank {i} "
                             f"--world {world}` (again: it resumes)")
        if info["world"] != world:
            raise ValueError(f"{p}: encoded in a world of {info['world']}, the other ranks in one of {world}: "
                             f"encode every rank with the same --world")
        files.append(vf)
    return VectorSet(files)


def open_vectors(folder: str | os.PathLike) -> VectorFile | VectorSet:
    """A folder's vectors: one vector file, or the ``rank-N`` folders of a sharded encoding."""
    folder = Path(folder)
    if (folder / VECTORS_INFO).is_file():
        return VectorFile(folder)
    return _ranks(folder)


@dataclass
class Recipe:
    """What the index is: ``nlist`` inverted lists, a ``pq`` code (faiss factory syntax: ``PQ48`` is
    48 sub-quantisers of 8 bits, 48 bytes a vector; at the same 48 bytes it found more true
    neighbours than the SIMD-scanned ``PQ96x4fs`` in bench/scale_index.py), trained on
    ``train_size`` sampled vectors; searched with ``nprobe`` lists and ``refine`` exact re-scores."""
    nlist: int = 4096
    pq: str = "PQ48"
    train_size: int = 200_000
    nprobe: int = 128
    refine: int = 2000
    seed: int = 0

    @property
    def factory(self) -> str:
        return f"IVF{self.nlist},{self.pq}"


def _faiss():
    from retrieval.index import _faiss as load
    return load()


def build(vectors: VectorFile | VectorSet, out: str | os.PathLike, recipe: Recipe = Recipe(), batch: int = 500_000,
          progress: Callable[[str], None] | None = None) -> dict:
    """Train the IVF-PQ index on a sample of ``vectors`` and add every row in batches; writes
    ``out/ivfpq.index`` and ``out/bigindex.json`` (the recipe, the counts, the timings)."""
    faiss = _faiss()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n, d = vectors.count, vectors.dim
    if n < recipe.nlist * 39:
        raise ValueError(f"{n} vectors are too few for {recipe.nlist} lists (faiss wants >= 39 a list); "
                         f"use nlist <= {max(1, n // 39)}")
    say = progress or (lambda _: None)
    t0 = time.perf_counter()
    rng = np.random.default_rng(recipe.seed)
    sample = np.sort(rng.choice(n, min(recipe.train_size, n), replace=False))
    x = np.asarray(vectors.array()[sample], dtype=np.float32)
    index = faiss.index_factory(d, recipe.factory, faiss.METRIC_INNER_PRODUCT)
    say(f"training {recipe.factory} on {len(x):,} of {n:,} vectors")
    index.train(x)
    t_train = time.perf_counter() - t0
    del x
    for i, rows in vectors.batches(batch):
        index.add(rows)
        say(f"added {i + len(rows):,} / {n:,}")
    t_add = time.perf_counter() - t0 - t_train
    tmp = out / f".{CODES}.tmp-{os.getpid()}"
    faiss.write_index(index, str(tmp))
    os.replace(tmp, out / CODES)
    info = {"recipe": asdict(recipe), "factory": recipe.factory, "count": n, "dim": d,
            "vectors": str(Path(vectors.folder).resolve()), "train_s": round(t_train, 1),
            "add_s": round(t_add, 1), "index_bytes": (out / CODES).stat().st_size}
    info["bytes_per_vector_in_ram"] = round(info["index_bytes"] / n, 1)
    write_json(out / INFO, info)
    return info


class BigIndex:
    """Search: the IVF-PQ index proposes ``refine`` candidates a query, the float16 vectors on disk
    score them exactly, the best ``k`` come back (inner product, highest first)."""

    def __init__(self, index, vectors: np.ndarray, recipe: Recipe, info: dict | None = None):
        self.index, self.vectors, self.recipe, self.info = index, vectors, recipe, info or {}
        self.folder: Path | None = None
        self.set_params(recipe.nprobe, recipe.refine)

    @classmethod
    def load(cls, folder: str | os.PathLike, vectors: str | os.PathLike | None = None, mmap: bool = True) -> "BigIndex":
        """``mmap``: the inverted lists are memory-mapped, not read into this process, so several
        serving processes on one machine share them (and the vectors) through the page cache."""
        folder = Path(folder)
        info = json.loads((folder / INFO).read_text("utf-8"))
        faiss = _faiss()
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(folder / CODES), flags)
        big = cls(index, open_vectors(vectors or info["vectors"]).array(), Recipe(**info["recipe"]), info)
        big.folder = folder
        return big

    def set_params(self, nprobe: int, refine: int) -> None:
        faiss = _faiss()
        faiss.extract_index_ivf(self.index).nprobe = nprobe
        self.nprobe, self.refine = nprobe, refine

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        _, cand = self.index.search(q, max(k, self.refine))
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        for r in range(len(q)):
            c = cand[r][cand[r] >= 0]
            if len(c) == 0:
                continue
            c = np.sort(c)  # ascending offsets: the disk reads go forward
            s = np.asarray(self.vectors[c], dtype=np.float32) @ q[r]
            top = np.argsort(-s, kind="stable")[:k]
            scores[r, :len(top)], ids[r, :len(top)] = s[top], c[top]
        return scores, ids


def exact_top(vectors: VectorFile | VectorSet, queries: np.ndarray, k: int = 10, batch: int = 500_000) -> np.ndarray:
    """The exact top-``k`` ids of each query, streaming the float16 rows ``batch`` at a time (the
    reference the recall of :class:`BigIndex` is measured against)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for start, rows in vectors.batches(batch):
        s = q @ rows.T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cs = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
        ci = np.concatenate([best_i, part + start], axis=1)
        order = np.argsort(-cs, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cs, order, 1), np.take_along_axis(ci, order, 1)
    return best_i


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k ids among the k found."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))
