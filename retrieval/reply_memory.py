"""The dual encoder's reply memory: each training reply's vector moved towards the contexts it answered.

ChatbotData-like corpora answer one question in many wordings with one reply, and half of their
test replies occur among the training replies. The dialog model learns such a reply's vector from
the few batches that held it; the memory keeps, for every distinct reply of the training pairs,
the mean of the dialog model's own vectors of the contexts it answered, centred on the mean context
of the reply's language (without the centring, every remembered reply of a language gains on every
context of that language, and a reply with no memory loses to them). A reply's served vector is
``normalise(v + weight * row)``; the contexts keep their plain vectors. Every vector is the
fine-tuned model's; nothing else scores.

A reply the memory lacks may **borrow**: the rows of the remembered replies whose plain vectors are
nearest its own (at least ``BORROW_MIN`` cosine, at most ``BORROW_K`` of them, weighted by their
cosine) at ``BORROW_SHARE`` of the weight. A new wording of a remembered answer ("맛있게 드세요!"
beside "맛있게 드세요~") then answers the contexts that one answered. For that the memory keeps each
remembered reply's plain vector too, and :class:`retrieval.encoder.Encoder` reuses those instead of
running the model again (the index encodes exactly these replies).

``weight`` and borrowing are chosen on the fine-tuning's validation carve-out (R10@1 of a small
grid; 0, the plain vectors, where nothing beats them there), with the rows of the pairs less the
carve-out. The memory then holds the carve-out's pairs too (the bot answers with them), and keeps
the rows without them as :attr:`ReplyMemory.fitting`: the ranker is fitted on the carve-out's
contexts, whose own replies must not remember them there (retrieval.ranking.build).

Written by ``dialogbert finetune`` (``train.reply_memory``) into the encoder's folder as
``reply_memory.npz``; :class:`retrieval.encoder.Encoder` loads it and applies it in
``encode_responses``, so the index, the evaluation and the chat service read the same vectors.
Keys are 64-bit hashes of the reply texts (the texts themselves stay in the index only).
(docs/experiments/2026-12-07-reply-memory.md, 2026-12-08-reply-memory-borrowing.md)
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

MEMORY_FILE = "reply_memory.npz"
WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0)   # the grid the validation carve-out chooses from (each with and without borrowing)
BORROW_K = 10        # a reply the memory lacks borrows the rows of at most this many remembered replies ...
BORROW_MIN = 0.85    # ... whose plain vectors are at least this close to its own (cosine) ...
BORROW_SHARE = 0.5   # ... at this share of the weight (a neighbour's contexts are evidence, not the reply's own)
_CHUNK = 1024        # replies compared with the remembered ones at a time (a float32 block of CHUNK x replies)


def text_key(text: str) -> int:
    """A reply's key: the first 8 bytes of its blake2b digest as a signed int64."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def _keys(texts: Sequence[str]) -> np.ndarray:
    return np.array([text_key(t) for t in texts], dtype=np.int64)


class ReplyMemory:
    """``keys`` (int64) and their ``rows``; ``vectors``: the remembered replies' plain vectors
    (float16, computed at ``info["precision"]``), needed to borrow; ``fitting``: the memory of the
    pairs less the validation carve-out (same weight and borrowing), or None."""

    def __init__(self, keys: np.ndarray, rows: np.ndarray, weight: float = 1.0, info: dict | None = None,
                 vectors: np.ndarray | None = None, borrow: bool = False, fitting: "ReplyMemory | None" = None):
        order = np.argsort(keys, kind="stable")
        self.keys = np.asarray(keys, dtype=np.int64)[order]
        self.rows = np.asarray(rows, dtype=np.float16)[order]
        if len(self.keys) != len(self.rows) or (len(self.keys) and self.rows.ndim != 2):
            raise ValueError(f"reply memory: {len(self.keys)} keys but rows of shape {self.rows.shape}")
        if len(np.unique(self.keys)) != len(self.keys):
            raise ValueError("reply memory: duplicate keys")
        self.vectors = None if vectors is None else np.asarray(vectors, dtype=np.float16)[order]
        if self.vectors is not None and self.vectors.shape != self.rows.shape:
            raise ValueError(f"reply memory: vectors of shape {self.vectors.shape} for rows of shape {self.rows.shape}")
        self.weight, self.borrow = float(weight), bool(borrow)
        self.info = dict(info or {})
        self.fitting = fitting

    def __len__(self) -> int:
        return len(self.keys)

    def _find(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(position in keys, found) of each text."""
        return self._find_keys(_keys(texts))

    def lookup(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(rows float32 (n, d), found bool (n,)): each text's own row, zeros where it has none."""
        dim = self.rows.shape[1] if len(self.rows) else 0
        out = np.zeros((len(texts), dim), np.float32)
        at, found = self._find(texts)
        out[found] = self.rows[at[found]]
        return out, found

    def plain(self, texts: Sequence[str], precision: str) -> tuple[np.ndarray, np.ndarray]:
        """(vectors float32 (n, d), found (n,)): the stored plain vectors of the remembered texts,
        none found unless they were computed at ``precision`` (Encoder.vector_precision)."""
        out = np.zeros((len(texts), self.rows.shape[1] if self.rows.ndim == 2 else 0), np.float32)
        if self.vectors is None or self.info.get("precision") != precision:
            return out, np.zeros(len(texts), bool)
        at, found = self._find(texts)
        out[found] = self.vectors[at[found]]
        return out, found

    def borrowed(self, vectors: np.ndarray) -> np.ndarray:
        """(n, d) float32: for each (unit) vector, the cosine-weighted mean row of its ``BORROW_K``
        nearest remembered replies at cosine >= ``BORROW_MIN`` (zeros where none is that close)."""
        out = np.zeros((len(vectors), self.rows.shape[1] if self.rows.ndim == 2 else 0), np.float32)
        if self.vectors is None or not len(self.keys) or not len(vectors):
            return out
        keys_v = self.vectors.astype(np.float32)
        k = min(BORROW_K, len(self.keys))
        for i in range(0, len(vectors), _CHUNK):
            sims = np.asarray(vectors[i:i + _CHUNK], np.float32) @ keys_v.T
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else np.tile(np.arange(k), (len(sims), 1))
            s = np.take_along_axis(sims, top, 1)
            s = np.where(s >= BORROW_MIN, s, 0.0)
            total = s.sum(1, keepdims=True)
            rows = np.einsum("nk,nkd->nd", s, self.rows[top].astype(np.float32))
            out[i:i + _CHUNK] = np.where(total > 0, rows / np.maximum(total, 1e-12), 0.0)
        return out

    def shifts(self, texts: Sequence[str], vectors: np.ndarray, borrow: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(own rows, borrowed rows times ``BORROW_SHARE``) of ``texts`` with plain ``vectors``,
        both (n, d) float32; a text with its own row borrows nothing."""
        own, found = self.lookup(texts)
        lent = np.zeros_like(own)
        if (self.borrow if borrow is None else borrow) and (~found).any():
            lent[~found] = BORROW_SHARE * self.borrowed(np.asarray(vectors)[~found])
        return own, lent

    def expand(self, texts: Sequence[str], vectors: np.ndarray, weight: float | None = None,
               borrow: bool | None = None) -> np.ndarray:
        """``vectors`` (n, d, L2-normalised, in the order of ``texts``) with each remembered reply's
        row (and, borrowing, each other reply's borrowed row) added at ``weight`` (the memory's own
        by default) and normalised again."""
        w = self.weight if weight is None else float(weight)
        if w == 0 or not len(self.keys) or not len(texts):
            return vectors
        own, lent = self.shifts(texts, vectors, borrow)
        moved = own.any(1) | lent.any(1)
        if not moved.any():
            return vectors
        out = np.array(vectors, dtype=np.float32, copy=True)
        out[moved] += w * (own[moved] + lent[moved])
        out[moved] /= np.linalg.norm(out[moved], axis=1, keepdims=True).clip(min=1e-12)
        return out

    # ---- files --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """``folder/reply_memory.npz``, written atomically."""
        folder = Path(folder)
        arrays = {"keys": self.keys, "rows": self.rows, "weight": np.float32(self.weight),
                  "borrow": np.bool_(self.borrow), "info": np.array(json.dumps(self.info, ensure_ascii=False))}
        if self.vectors is not None:
            arrays["vectors"] = self.vectors
        if self.fitting is not None:
            arrays.update(fitting_keys=self.fitting.keys, fitting_rows=self.fitting.rows)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".reply_memory.", suffix=".npz")
        os.close(fd)
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, folder / MEMORY_FILE)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return folder / MEMORY_FILE

    @classmethod
    def load(cls, folder: str | Path) -> "ReplyMemory | None":
        p = Path(folder) / MEMORY_FILE
        if not p.exists():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                weight, info = float(z["weight"]), json.loads(str(z["info"]))
                borrow = bool(z["borrow"]) if "borrow" in z.files else False
                vectors = z["vectors"] if "vectors" in z.files else None
                mem = cls(z["keys"], z["rows"], weight, info, vectors, borrow)
                if "fitting_keys" in z.files:
                    fk = z["fitting_keys"]
                    fv = None
                    if mem.vectors is not None:  # the carve-out adds replies, never removes one
                        at, found = mem._find_keys(fk)
                        if not found.all():
                            raise ValueError("fitting keys missing from the memory")
                        fv = mem.vectors[at]
                    mem.fitting = cls(fk, z["fitting_rows"], weight, info, fv, borrow)
                return mem
        except (ValueError, KeyError, OSError) as e:
            raise ValueError(f"{p}: not a reply memory written by `dialogbert finetune` ({e}); "
                             f"delete it or rerun the fine-tuning") from e

    def _find_keys(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in :attr:`keys`, found) of each key."""
        if not len(self.keys) or not len(keys):
            return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
        at = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
        return at, self.keys[at] == keys


def _rows(C: np.ndarray, langs: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """(distinct keys, float16 rows, {language: pairs}): per key the mean of its contexts' vectors
    less the mean context of its reply's language."""
    names, counts = np.unique(langs, return_counts=True)
    centred = np.empty_like(C)
    for lang in names:
        sel = langs == lang
        centred[sel] = C[sel] - C[sel].mean(0)
    uniq, inv = np.unique(keys, return_inverse=True)
    sums = np.zeros((len(uniq), C.shape[1]), np.float64)
    np.add.at(sums, inv, centred)
    rows = sums / np.bincount(inv, minlength=len(uniq))[:, None]
    return uniq, rows.astype(np.float16), {str(k): int(c) for k, c in zip(names, counts)}


def plain_vectors(encoder, memory: ReplyMemory | None, texts: Sequence[str], **kw) -> np.ndarray:
    """The encoder's own (memory-free) vectors of reply ``texts``: those ``memory`` stores at the
    encoder's ``vector_precision`` read, the others computed."""
    if memory is None:
        return encoder.encode_responses(texts, reply_memory=False, **kw)
    vecs, found = memory.plain(texts, getattr(encoder, "vector_precision", None))
    todo = np.flatnonzero(~found)
    if len(todo):
        vecs[todo] = encoder.encode_responses([texts[i] for i in todo], reply_memory=False, **kw)
    return vecs


def build(encoder, contexts: Sequence, replies: Sequence[str], batch_size: int = 64,
          show_progress: bool | None = None, carve_out: int = 0, vectors: bool = True,
          context_vectors: np.ndarray | None = None) -> ReplyMemory:
    """The memory of (context, reply) pairs, the contexts encoded by ``encoder``: per distinct
    reply, the mean of its contexts' vectors less the mean context vector of the reply's language
    (preprocess.pipeline.detect_lang). The last ``carve_out`` pairs are the validation carve-out's:
    the memory holds every pair, its ``fitting`` memory the others. ``vectors``: keep each
    remembered reply's plain vector (to borrow, and for the encoder to reuse). ``context_vectors``:
    the contexts already encoded (then ``contexts`` is not read)."""
    from preprocess.pipeline import detect_lang
    if context_vectors is None and len(contexts) != len(replies):
        raise ValueError(f"reply memory: {len(contexts)} contexts but {len(replies)} replies")
    if not 0 <= carve_out <= len(replies):
        raise ValueError(f"reply memory: a carve-out of {carve_out} of {len(replies)} pairs")
    if not len(replies):
        return ReplyMemory(np.zeros(0, np.int64), np.zeros((0, encoder.dim), np.float16), 0.0, {"pairs": 0})
    C = context_vectors if context_vectors is not None else \
        encoder.encode_contexts(list(contexts), batch_size=batch_size, show_progress=show_progress)
    if len(C) != len(replies):
        raise ValueError(f"reply memory: {len(C)} context vectors but {len(replies)} replies")
    langs = np.array([detect_lang([r]) for r in replies])
    keys = _keys(replies)
    uniq, rows, languages = _rows(C, langs, keys)
    info = {"pairs": len(replies), "replies": int(len(uniq)), "languages": languages}
    V = None
    if vectors:
        text_of = dict(zip(keys.tolist(), replies))
        V = encoder.encode_responses([text_of[k] for k in uniq.tolist()], batch_size=batch_size,
                                     show_progress=show_progress, reply_memory=False)
        info["precision"] = getattr(encoder, "vector_precision", None)
    mem = ReplyMemory(uniq, rows, 1.0, info, V)
    if carve_out:
        n = len(replies) - carve_out
        fk, frows, _ = _rows(C[:n], langs[:n], keys[:n])
        at, _ = mem._find_keys(fk)
        mem.fitting = ReplyMemory(fk, frows, 1.0, {"pairs": n, "replies": int(len(fk))},
                                  None if V is None else mem.vectors[at])
        mem.info["carve_out_pairs"] = carve_out
    return mem


def choose_weight(encoder, memory: ReplyMemory, evaluator, weights: Sequence[float] = WEIGHTS,
                  batch_size: int = 64, context_vectors: np.ndarray | None = None) -> dict:
    """R10@1 and MRR of each weight, with and without borrowing where the memory can, on
    ``evaluator``'s examples (retrieval.evaluate.RetrievalEvaluator over the validation carve-out),
    with the rows of the pairs less the carve-out (``memory.fitting`` where there is one); sets the
    memory's weight and borrowing (and its fitting memory's) to the best (the smallest weight and
    no borrowing on a tie: 0, the plain vectors, unless something does better) and returns the
    table. The candidates are scored from the encoder's own reply vectors (those the memory stores
    where it has them); ``context_vectors``: the evaluator's contexts already encoded."""
    from retrieval.examples import distinct
    view = memory.fitting or memory
    can_borrow = view.vectors is not None
    C = context_vectors if context_vectors is not None else \
        encoder.encode_contexts(evaluator.contexts, batch_size=batch_size)
    flat, idx = distinct(evaluator.candidates.texts)
    plain = plain_vectors(encoder, memory, flat, batch_size=batch_size)  # the carve-out's replies: stored
    own, lent = view.shifts(flat, plain, borrow=can_borrow)

    class Fixed:
        def __init__(self, R):
            self.R = R / np.linalg.norm(R, axis=1, keepdims=True).clip(min=1e-12)

        def score(self, contexts, candidates):
            return np.einsum("md,mnd->mn", C, self.R[idx])

    table, options = {}, []
    for w in weights:
        for borrow in ((False, True) if can_borrow and w else (False,)):
            name = f"{w}" + (" borrowing" if borrow else "")
            scores = evaluator(Fixed(plain + w * (own + lent if borrow else own)))
            table[name] = {k: round(float(v), 4) for k, v in scores.items() if k in ("R10@1", "MRR")}
            options.append((w, borrow, name))
    w, borrow, _ = max(options, key=lambda o: (table[o[2]]["R10@1"], table[o[2]]["MRR"], -o[0], -o[1]))
    for m in (memory, memory.fitting):
        if m is not None:
            m.weight, m.borrow = float(w), borrow
    memory.info["validation"] = table
    return table
