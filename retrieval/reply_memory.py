"""The dual encoder's reply memory: each training reply's vector moved towards the contexts it answered.

ChatbotData-like corpora answer one question in many wordings with one reply, and half of their
test replies occur among the training replies. The dialog model learns such a reply's vector from
the few batches that held it; the memory keeps, for every distinct reply of the fine-tuning pairs,
the mean of the dialog model's own vectors of the contexts it answered, centred on the mean context
of the reply's language (without the centring, every remembered reply of a language gains on every
context of that language, and a reply with no memory loses to them). A reply's served vector is
``normalise(v + weight * row)``: replies the model never saw keep their plain vectors, and so do
the contexts. Every vector is the fine-tuned model's; nothing else scores.

``weight`` is chosen on the fine-tuning's validation carve-out (R10@1 of a small grid); 0 where no
weight beats the plain vectors there, and the memory then changes nothing.

Written by ``dialogbert finetune`` (``train.reply_memory``) into the encoder's folder as
``reply_memory.npz``; :class:`retrieval.encoder.Encoder` loads it and applies it in
``encode_responses``, so the index, the evaluation and the chat service read the same vectors.
Keys are 64-bit hashes of the reply texts (the texts themselves stay in the index only).
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
WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0)   # the grid the validation carve-out chooses from


def text_key(text: str) -> int:
    """A reply's key: the first 8 bytes of its blake2b digest as a signed int64."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


class ReplyMemory:
    def __init__(self, keys: np.ndarray, rows: np.ndarray, weight: float = 1.0, info: dict | None = None):
        order = np.argsort(keys, kind="stable")
        self.keys = np.asarray(keys, dtype=np.int64)[order]
        self.rows = np.asarray(rows, dtype=np.float16)[order]
        if len(self.keys) != len(self.rows) or (len(self.keys) and self.rows.ndim != 2):
            raise ValueError(f"reply memory: {len(self.keys)} keys but rows of shape {self.rows.shape}")
        if len(np.unique(self.keys)) != len(self.keys):
            raise ValueError("reply memory: duplicate keys")
        self.weight = float(weight)
        self.info = dict(info or {})

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(rows float32 (n, d), found bool (n,)): each text's row, zeros where it has none."""
        dim = self.rows.shape[1] if len(self.rows) else 0
        out = np.zeros((len(texts), dim), np.float32)
        found = np.zeros(len(texts), bool)
        if not len(self.keys) or not len(texts):
            return out, found
        k = np.array([text_key(t) for t in texts], dtype=np.int64)
        at = np.searchsorted(self.keys, k).clip(max=len(self.keys) - 1)
        found = self.keys[at] == k
        out[found] = self.rows[at[found]]
        return out, found

    def expand(self, texts: Sequence[str], vectors: np.ndarray, weight: float | None = None) -> np.ndarray:
        """``vectors`` (n, d, L2-normalised, in the order of ``texts``) with each remembered
        reply's row added at ``weight`` (the memory's own by default) and normalised again."""
        w = self.weight if weight is None else float(weight)
        if w == 0 or not len(self.keys):
            return vectors
        rows, found = self.lookup(texts)
        if not found.any():
            return vectors
        out = np.array(vectors, dtype=np.float32, copy=True)
        out[found] += w * rows[found]
        out[found] /= np.linalg.norm(out[found], axis=1, keepdims=True).clip(min=1e-12)
        return out

    # ---- files --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """``folder/reply_memory.npz``, written atomically."""
        folder = Path(folder)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".reply_memory.", suffix=".npz")
        os.close(fd)
        try:
            np.savez(tmp, keys=self.keys, rows=self.rows, weight=np.float32(self.weight),
                     info=np.array(json.dumps(self.info, ensure_ascii=False)))
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
                return cls(z["keys"], z["rows"], float(z["weight"]), json.loads(str(z["info"])))
        except (ValueError, KeyError, OSError) as e:
            raise ValueError(f"{p}: not a reply memory written by `dialogbert finetune` ({e}); "
                             f"delete it or rerun the fine-tuning") from e


def build(encoder, contexts: Sequence, replies: Sequence[str], batch_size: int = 64,
          show_progress: bool | None = None) -> ReplyMemory:
    """The memory of (context, reply) pairs, the contexts encoded by ``encoder``: per distinct
    reply, the mean of its contexts' vectors less the mean context vector of the reply's language
    (preprocess.pipeline.detect_lang)."""
    from preprocess.pipeline import detect_lang
    if len(contexts) != len(replies):
        raise ValueError(f"reply memory: {len(contexts)} contexts but {len(replies)} replies")
    if not len(replies):
        return ReplyMemory(np.zeros(0, np.int64), np.zeros((0, encoder.dim), np.float16), 0.0, {"pairs": 0})
    C = encoder.encode_contexts(list(contexts), batch_size=batch_size, show_progress=show_progress)
    langs = np.array([detect_lang([r]) for r in replies])
    names, counts = np.unique(langs, return_counts=True)
    centred = np.empty_like(C)
    for lang in names:
        sel = langs == lang
        centred[sel] = C[sel] - C[sel].mean(0)
    keys = np.array([text_key(r) for r in replies], dtype=np.int64)
    uniq, inv = np.unique(keys, return_inverse=True)
    sums = np.zeros((len(uniq), C.shape[1]), np.float64)
    np.add.at(sums, inv, centred)
    rows = sums / np.bincount(inv, minlength=len(uniq))[:, None]
    return ReplyMemory(uniq, rows.astype(np.float16), 1.0,
                       {"pairs": len(replies), "replies": int(len(uniq)),
                        "languages": {str(k): int(c) for k, c in zip(names, counts)}})


def choose_weight(encoder, memory: ReplyMemory, evaluator, weights: Sequence[float] = WEIGHTS,
                  batch_size: int = 64) -> dict:
    """R10@1 and MRR of each weight on ``evaluator``'s examples (retrieval.evaluate.RetrievalEvaluator
    over the validation carve-out); sets ``memory.weight`` to the best one (the smallest on a tie:
    0, the plain vectors, unless a weight does better) and returns the table. The candidates are
    scored from the encoder's own reply vectors, without any memory it already has."""
    from retrieval.examples import distinct
    C = encoder.encode_contexts(evaluator.contexts, batch_size=batch_size)
    flat, idx = distinct(evaluator.candidates.texts)
    plain = encoder.encode_responses(flat, batch_size=batch_size, reply_memory=False)

    class Fixed:
        def __init__(self, R):
            self.R = R

        def score(self, contexts, candidates):
            return np.einsum("md,mnd->mn", C, self.R[idx])

    table = {}
    for w in weights:
        table[str(w)] = {k: round(float(v), 4) for k, v in evaluator(Fixed(memory.expand(flat, plain, w))).items()
                         if k in ("R10@1", "MRR")}
    best = max(weights, key=lambda w: (table[str(w)]["R10@1"], table[str(w)]["MRR"], -w))
    memory.weight = float(best)
    memory.info["validation"] = table
    return table
