"""The chat service's retriever over a bigindex (retrieval/bigindex.py): replies by the million.

``dialogbert encode`` writes each rank's float16 vectors and reply rows, ``dialogbert bigindex``
the IVF-PQ codes; ``dialogbert serve --index BIGINDEX`` answers from them with the dialog model
alone (the context encoded, the codes proposing, the float16 vectors re-scoring exactly). Neither
the vectors nor the reply texts are held in RAM: a reply row is read from its rank's
``replies.jsonl`` at the byte offset that ``replies.offsets.npy`` (written once beside it) gives,
and the codes and vectors are memory-mapped, so several serving processes on one machine share
them through the page cache. The replies were filtered for personal data when they were encoded
(retrieval.index.ResponseFilter); the chat service checks each one again before it is sent.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from retrieval.bigindex import INFO, RANK_INFO, RANK_ROWS, BigIndex

OFFSETS = "replies.offsets.npy"  # int64 byte offsets of each row of replies.jsonl, then its size


def line_offsets(path: Path) -> np.ndarray:
    """Where each line of ``path`` starts, then the file's size (``len`` = lines + 1)."""
    starts, pos = [], 0
    with open(path, "rb") as f:
        for line in f:
            starts.append(pos)
            pos += len(line)
    starts.append(pos)
    return np.asarray(starts, np.int64)


def _offsets(rank_dir: Path, count: int) -> np.ndarray:
    """The rank's offset table: read when it matches replies.jsonl (its rows and size), else
    computed and written (atomically) for the next start."""
    rows, table = rank_dir / RANK_ROWS, rank_dir / OFFSETS
    if not rows.is_file():
        raise FileNotFoundError(f"{rows} is missing: the reply texts of this rank's vectors (run its "
                                f"`dialogbert encode` again: it resumes)")
    size = rows.stat().st_size
    if table.is_file():
        try:
            off = np.load(table, mmap_mode="r")
            if len(off) == count + 1 and int(off[-1]) == size:
                return off
        except (OSError, ValueError):
            pass  # damaged: computed again
    off = line_offsets(rows)
    if len(off) != count + 1:
        raise ValueError(f"{rows}: {len(off) - 1} reply rows for {count} vectors: the rank is unfinished "
                         f"or was changed after encoding; run its `dialogbert encode` again")
    tmp = table.with_name(f".{table.name}.tmp-{os.getpid()}.npy")
    try:
        np.save(tmp, off)
        os.replace(tmp, table)
    except OSError as e:  # a read-only folder: the table lives in memory only
        print(f"bigserve: could not save {table} ({e}); it is computed at every start")
    return off


class ReplyRows:
    """The reply rows of every rank of an encoding, read by global id (the bigindex's ids)."""

    def __init__(self, vectors_folder: str | os.PathLike):
        folder = Path(vectors_folder)
        infos = sorted(folder.glob(f"rank-*/{RANK_INFO}"), key=lambda p: int(p.parent.name.split("-")[1]))
        if not infos:
            raise FileNotFoundError(f"{folder}: no rank-N/{RANK_INFO}: the chat service needs the reply rows "
                                    f"that `dialogbert encode` writes beside the vectors")
        self.infos = [json.loads(p.read_text("utf-8")) for p in infos]
        self.paths = [p.parent / RANK_ROWS for p in infos]
        self.offsets = [_offsets(p.parent, int(i["count"])) for p, i in zip(infos, self.infos)]
        self.starts = np.cumsum([0] + [len(o) - 1 for o in self.offsets])
        self._fds = [os.open(p, os.O_RDONLY) for p in self.paths]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"reply {i} of {len(self)}")
        r = int(np.searchsorted(self.starts, i, side="right")) - 1
        j = i - int(self.starts[r])
        lo, hi = int(self.offsets[r][j]), int(self.offsets[r][j + 1])
        return json.loads(os.pread(self._fds[r], hi - lo, lo))  # pread: safe from several threads

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __del__(self) -> None:  # a retriever replaced by a live reload lets go of its files
        if getattr(self, "_fds", None):
            self.close()


class BigRetriever:
    """``search(contexts, k)`` as the chat service asks it (retrieval.ranker.HybridRetriever's
    shape): the k best (score, reply row) of each context, by the dialog model's cosine."""

    def __init__(self, encoder, index: BigIndex, rows: ReplyRows):
        if len(rows) != index.index.ntotal:
            raise ValueError(f"{index.folder}: the index holds {index.index.ntotal:,} vectors but the encoding's "
                             f"reply rows are {len(rows):,}: build the bigindex again from these vectors")
        self.encoder, self.index, self.rows = encoder, index, rows  # /api/info reads index.info and index.folder

    @classmethod
    def load(cls, folder: str | os.PathLike, model_dir: str | os.PathLike | None = None,
             precision: str = "auto") -> "BigRetriever":
        """A bigindex folder and the dialog model its vectors were encoded with (``model_dir``, else
        the one rank.json records); a model of another size or hash is refused. ``precision``: the
        model's weights at inference (Encoder.for_inference)."""
        from retrieval.encoder import Encoder
        from retrieval.index import IndexMismatchError
        folder = Path(folder)
        info = json.loads((folder / INFO).read_text("utf-8"))
        rows = ReplyRows(info["vectors"])
        recorded = rows.infos[0].get("model")
        model = model_dir or recorded
        if not model:
            raise ValueError(f"{folder}: its vectors do not record the model that encoded them: pass --model DIR")
        encoder = Encoder.load(model)
        if int(encoder.dim) != int(info["dim"]):
            raise IndexMismatchError(f"{folder}: vectors of dimension {info['dim']}, but the model {model} "
                                     f"produces {encoder.dim}: serve it with the model that encoded them")
        want = rows.infos[0].get("model_sha256")
        if want and encoder.path is not None and encoder.hash() != want:
            raise IndexMismatchError(f"{folder}: encoded with model sha256 {want[:12]}..., but {model} has "
                                     f"sha256 {encoder.hash()[:12]}...: serve it with the model that encoded it "
                                     f"({recorded})")
        encoder.for_inference(precision)
        big = BigIndex.load(folder)
        big.info.update(dimension=info["dim"], model=str(model), model_sha256=want)  # /api/info's names
        return cls(encoder, big, rows)

    def search(self, contexts: Sequence, k: int = 5) -> list[list[tuple[float, dict]]]:
        C = self.encoder.encode_contexts(list(contexts))
        S, I = self.index.search(C, k)
        return [[(float(s), self.rows[int(i)]) for s, i in zip(S[r], I[r]) if i >= 0] for r in range(len(C))]


def is_bigindex(folder: str | os.PathLike) -> bool:
    return (Path(folder) / INFO).is_file()
