"""What the ranker's own dual encoders share (``ngram``, retrieval.ngram; ``use``, retrieval.use):
scoring a context's newest turn against candidate texts, and the stored replies' vectors.

A subclass names its folder inside the index (``subdir``), its dimension (``dim``) and two
encoders, ``encode_contexts`` and ``encode_replies`` (one function where contexts and replies
share a table). It scores like the protocol's scorers, so ``dialogbert eval`` reports it alone,
and :meth:`attach_replies` gives the chat service the stored replies' vectors, so a request
encodes only its context.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from preprocess.schema import atomic_write_text

SETTINGS = "settings.json"     # an encoder folder's settings, written last by a save
REPLIES = "replies.npy"        # the stored replies' vectors, float16, in the index's row order
REPLIES_KEY = "replies.json"   # which replies those are: their count and texts_sha256, the dimension
TRAINED_ON = "trained_on.json" # what the saved encoder was trained on (training_key): kept when unchanged
REPLY_CHUNK = 100_000          # replies encoded (or copied) at a time when writing replies.npy
MIN_PAIRS = 100                # fewer training pairs than this: the encoder is left out of the ranker


class StoredReplyEncoder:
    subdir = ""        # the folder inside an index that holds it
    label = "encoder"  # how progress lines name it
    dim = 0

    replies: np.ndarray | None = None  # attach_replies: the stored replies' vectors

    def encode_contexts(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def encode_replies(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def saving(self, folder: str | Path) -> Path:
        """``folder/subdir``, made ready for a save: its settings.json removed first (a save
        writes it last, so a half-written folder is never read) and the old reply vectors with it
        (they belong to another fit: :meth:`attach_replies` recomputes)."""
        d = Path(folder) / self.subdir
        d.mkdir(parents=True, exist_ok=True)
        (d / SETTINGS).unlink(missing_ok=True)
        (d / TRAINED_ON).unlink(missing_ok=True)  # fit_and_save writes it after the save
        self.drop_replies(folder)
        return d

    def drop_replies(self, folder: str | Path) -> None:
        """Remove ``folder/subdir``'s reply vectors: they belong to another table (a new fit)."""
        for name in (REPLIES_KEY, REPLIES):
            (Path(folder) / self.subdir / name).unlink(missing_ok=True)

    def score(self, contexts, candidates: Sequence[Sequence[str]], rows=None) -> np.ndarray:
        """(m, n) cosines of each context's newest turn (as the ranker's lexical features read it)
        and its candidates, each distinct candidate text encoded once: the protocol's scorer
        interface. ``rows`` (m, n): the candidates' rows in the index's store, when they are stored
        replies (the chat service); their vectors are then read from :meth:`attach_replies`' store."""
        from retrieval.baselines import context_text
        from retrieval.index import MEMORY_TEXT_TURNS
        Q = self.encode_contexts([context_text(c, MEMORY_TEXT_TURNS) for c in contexts])
        rows = None if rows is None or self.replies is None else np.asarray(rows, dtype=np.int64)
        if rows is not None and rows.shape == (len(contexts), len(candidates[0]) if len(candidates) else 0) \
                and (rows.size == 0 or (rows.min() >= 0 and rows.max() < len(self.replies))):
            R = np.asarray(self.replies[rows.ravel()], dtype=np.float32).reshape(*rows.shape, self.dim)
        else:  # not stored replies (or rows this store does not have): encoded
            from retrieval.examples import distinct
            uniq, idx = distinct(candidates)
            R = self.encode_replies(uniq)[idx]
        return np.einsum("md,mnd->mn", Q, R)

    def attach_replies(self, folder: str | Path, texts: Sequence[str], write: bool = True) -> None:
        """Give :meth:`score` the vectors of an index's stored replies (``texts``, in row order):
        ``folder/subdir/replies.npy``, memory-mapped, so a chat request reads its ~70 candidates'
        rows instead of encoding them. The file is written when missing (``dialogbert index`` does
        it after training, and ``--add`` appends the new replies' vectors). The key, replies.json,
        names the texts the vectors are of (their count and sha256): a store that has grown gets
        the new rows appended here, vectors of other texts are recomputed, and saving a (re)trained
        encoder removes them (:meth:`drop_replies`). Where the folder is read-only, or ``write``
        is false (the chat service and ``eval``, which only read an index folder), they are kept
        in RAM instead."""
        d = Path(folder) / self.subdir
        old = self._stored(d, texts)
        have = 0 if old is None else len(old)
        if old is not None and have == len(texts):
            self.replies = old
            return
        t0 = time.time()
        self.replies = self._store(d, texts, old, have) if write else None
        if self.replies is None:  # in RAM: this process only
            self.replies = np.zeros((len(texts), self.dim), np.float16)
            self._fill(self.replies, texts, old, have)
        print(f"ranker: {self.label} vectors of {len(texts) - have} stored replies in {time.time() - t0:.1f} s"
              + (f" ({have} kept)" if have else ""))

    def _store(self, d: Path, texts: Sequence[str], old, have: int) -> np.ndarray | None:
        """``d/replies.npy`` (the ``have`` rows of ``old`` kept, the rest encoded) and its key,
        written atomically, memory-mapped back; None, with a note, where ``d`` cannot be written."""
        tmp = None
        try:
            d.mkdir(parents=True, exist_ok=True)
            (d / REPLIES_KEY).unlink(missing_ok=True)  # no key while the vectors change
            tmp = d / f".{REPLIES}.tmp-{os.getpid()}.npy"  # one per writing process (the umask's mode)
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(texts), self.dim))
            self._fill(out, texts, old, have)
            out.flush()
            del out
            tmp.replace(d / REPLIES)
            from retrieval.index import texts_sha256
            atomic_write_text(d / REPLIES_KEY, json.dumps({"count": len(texts), "dim": self.dim,
                                                           "texts_sha256": texts_sha256(texts)}) + "\n")
            return np.load(d / REPLIES, mmap_mode="r")
        except OSError as e:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            print(f"ranker: could not store the {self.label} reply vectors in {d} ({e}); they are kept in RAM")
            return None

    def _stored(self, d: Path, texts: Sequence[str]) -> np.ndarray | None:
        """``d/replies.npy`` memory-mapped when its key says it holds this encoder's vectors of
        ``texts[:count]`` (a store that may have grown since); None when absent, other or damaged."""
        from retrieval.index import texts_sha256
        try:
            key = json.loads((d / REPLIES_KEY).read_text("utf-8"))
            count = int(key["count"])
            if key["dim"] != self.dim or count > len(texts) or key["texts_sha256"] != texts_sha256(
                    texts if count == len(texts) else texts[:count]):
                return None
            old = np.load(d / REPLIES, mmap_mode="r")
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return old if old.shape == (count, self.dim) else None

    def _fill(self, out: np.ndarray, texts: Sequence[str], old: np.ndarray | None, have: int) -> None:
        """Rows [0, have) of ``out`` from ``old``, the rest encoded from ``texts``; in chunks."""
        for i in range(0, have, REPLY_CHUNK):
            out[i:min(have, i + REPLY_CHUNK)] = old[i:min(have, i + REPLY_CHUNK)]
        for i in range(have, len(texts), REPLY_CHUNK):
            out[i:i + REPLY_CHUNK] = self.encode_replies(texts[i:i + REPLY_CHUNK]).astype(np.float16)


def in_batch_loss(a, r, scale: float, rid: np.ndarray):
    """The symmetric multiple-negatives ranking loss (retrieval.losses) of context vectors ``a``
    against reply vectors ``r`` (row i is pair i) at logit ``scale``; pairs with the same reply id
    (``rid``) are no negatives of each other. (batch, heads, dim) vectors: one logit matrix per
    head, the mean of each head's own loss, so the heads train as independently as separate models."""
    import torch

    from retrieval import losses
    if a.dim() == 2:
        a, r = a[:, None], r[:, None]
    logits = torch.einsum("bhd,chd->hbc", a, r) * scale  # (heads, batch, batch)
    return losses.in_batch_loss(logits, losses.duplicate_mask(rid))


CALIBRATION_STEPS = 20  # steps timed before a learning-rate schedule is fitted to max_minutes


def train_in_batches(pairs: Sequence[tuple[str, str]], settings, vectors, scale: float, opt, lr_at=None,
                     desc: str = "training", show_progress: bool | None = None, progress_from: int = 50,
                     window: int = 20) -> dict:
    """The ranker's own encoders' training loop: ``settings.epochs`` shuffles (seeded by
    ``settings.seed``) of the pairs in batches of ``settings.batch_size``; ``vectors(ix)`` gives
    the batch's (context, reply) vectors, :func:`in_batch_loss` is stepped by ``opt``; a pair's
    in-batch twins by reply text are no negatives. Stops after ``settings.max_minutes``.

    ``lr_at(step, total)``: the learning rate's factor at a step of ``total`` (a schedule that
    decays to the end). Where the first CALIBRATION_STEPS steps show that all the epochs would
    not fit in ``max_minutes``, ``total`` becomes the steps that do, so a run the clock stops
    still ends its schedule (``planned_steps`` in what is returned). A progress bar from
    ``progress_from`` steps (unless ``show_progress`` says), with the mean loss of the last
    ``window`` steps, which is also the final loss reported. Returns what it measured: pairs,
    steps, planned steps, epochs, final loss, minutes.

    Not fine-tuning's loop (retrieval.finetune): these are small models fed from numpy (hashed
    rows with a row-sparse optimiser, the USE towers on a frozen table) that train on a time
    budget with the schedule fitted to it, and are retrained rather than resumed (fit_and_save
    keeps one trained on the same pairs); they share its loss (retrieval.losses) and its
    batches (losses.batch_order: the same seeded shuffle)."""
    from retrieval.losses import batch_order
    s = settings
    reply_id: dict[str, int] = {}
    rid = np.array([reply_id.setdefault(r, len(reply_id)) for _, r in pairs])
    bs = min(s.batch_size, len(pairs))
    steps_per_epoch = len(pairs) // bs
    total = s.epochs * steps_per_epoch
    bar = None
    if show_progress if show_progress is not None else total >= progress_from:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=desc, unit="step")
    base_lr = [g["lr"] for g in opt.param_groups]
    planned = total
    t0, step, losses, stopped = time.time(), 0, [], False
    for epoch in range(s.epochs):
        for ix in batch_order(len(pairs), bs, s.seed, epoch):
            if lr_at is not None:
                for g, lr in zip(opt.param_groups, base_lr):
                    g["lr"] = lr * lr_at(step, planned)
            loss = in_batch_loss(*vectors(ix), scale, rid[ix])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if lr_at is not None and step == CALIBRATION_STEPS < planned:
                fits = int(s.max_minutes * 60 / ((time.time() - t0) / step))
                if fits < planned:
                    planned = max(step + 1, fits)
                    if bar is not None:
                        bar.total = planned
                        bar.refresh()
            if bar is not None:
                bar.update(1)
                if step % window == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-window:]):.3f}")
            if time.time() - t0 > s.max_minutes * 60:
                stopped = True
                break
        if stopped:
            break
    if bar is not None:
        bar.close()
    return {"pairs": len(pairs), "steps": step, "planned_steps": planned, "epochs": round(step / max(1, steps_per_epoch), 2),
            "final_loss": round(float(np.mean(losses[-window:])), 4) if losses else None,
            "minutes": round((time.time() - t0) / 60, 2), "stopped_by_time": stopped}


def training_key(pairs: Sequence[tuple[str, str]], settings) -> dict:
    """What an encoder trained on ``pairs`` with ``settings`` depends on: the pairs' count and
    sha256 (index.texts_sha256) and the settings less what training records."""
    from dataclasses import asdict

    from retrieval.index import texts_sha256
    kept = {k: v for k, v in asdict(settings).items() if k not in ("trained", "analyser", "base_sha256")}
    return {"pairs": len(pairs), "pairs_sha256": texts_sha256([c for c, _ in pairs], [r for _, r in pairs]),
            "settings": json.loads(json.dumps(kept))}


def fit_and_save(cls, settings, pairs: Sequence[tuple[str, str]], index_dir: str | Path, what: str,
                 verb: str = "trained") -> StoredReplyEncoder | None:
    """``cls(settings)`` trained on an index's training ``pairs`` and saved in ``index_dir``
    (``dialogbert index``), or the one already there when its TRAINED_ON key says it was trained
    on the same pairs with the same settings (an index rebuilt over the same shards keeps it);
    None, and the folder removed, when there are fewer than MIN_PAIRS. ``what`` names it in the
    lines printed."""
    d = Path(index_dir) / cls.subdir
    if len(pairs) < MIN_PAIRS:
        print(f"ranker: only {len(pairs)} training pairs: no {what}")
        shutil.rmtree(d, ignore_errors=True)
        return None
    key = training_key(pairs, settings)
    try:
        same = json.loads((d / TRAINED_ON).read_text("utf-8")) == key
    except (OSError, ValueError):
        same = False
    if same:
        try:
            enc = cls.load(index_dir)
        except ValueError as e:  # damaged, or trained with another analyser / release: retrained
            print(f"ranker: the {what} in {d} cannot be kept ({e})")
            enc = None
        if enc is not None:
            print(f"ranker: {what} kept ({d}: trained on the same {len(pairs)} pairs with the same settings)")
            return enc
    enc = cls(settings)
    t = enc.fit(pairs)
    enc.save(index_dir)
    atomic_write_text(d / TRAINED_ON, json.dumps(key, indent=1) + "\n")
    rows = f", {t['rows']} feature rows" if "rows" in t else ""
    print(f"ranker: {what} {verb} on {t['pairs']} pairs ({t['steps']} steps, {t['minutes']} min, "
          f"final loss {t['final_loss']}{rows})")
    return enc
