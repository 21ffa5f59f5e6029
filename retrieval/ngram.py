"""A bag-of-n-grams dual encoder: the ranker's ``ngram`` feature.

A text is the sum of learned vectors of its hashed character 1-3-grams (the text framed by
``^`` and ``$``, spaces as ``_``) and of its whitespace words, L2-normalised. One table serves
contexts (their newest turn) and replies, so a reply that repeats the context's words scores
high before any training, and training with in-batch negatives (the symmetric
multiple-negatives ranking loss of the transformer dual encoder, fixed scale 10) adds which
words answer which. This is the StarSpace / fastText family of models (Wu et al. 2017; Joulin
et al. 2017): sparse updates only, so it trains in 0.4-1.5 minutes per 10k pairs on one CPU
core (measured: ChatbotData's 8.5k pairs in 20 s, the demo's 37k in 3.3 min, chit-chat's 106k
in 16 min), and it sees every syllable n-gram of Korean text, where a small WordPiece
vocabulary trained on little data splits words into pieces a 1-5M-parameter transformer has
not learnt.

Measured on the ChatbotData validation carve-out (897 examples, never the test split; one
standard error ~0.017, and seed to seed the encoder alone moves by ~0.02): this encoder alone
scores R10@1 0.68 (256 dimensions, 5 epochs; 0.70 at 512), against 0.55-0.56 for the fine-tuned
tiny and small transformers. At 256 dimensions, separate context and reply tables scored
0.56-0.60, a scale of 20 or 40 0.64-0.67, 1-4-grams 0.61, no word features 0.65. Rows for n-grams that training never
saw keep seeded random vectors: an unseen n-gram shared by context and reply still matches
(zeroing those rows lost 0.016). In the ranker, fitted on one half of the carve-out and scored
on the other (five splits), it lifts R10@1 from 0.695 to 0.727 (0.729 at 512 dimensions; on
the test split the ranker scored no better at 512, so 256 it is). On ChatbotData test it alone
scores 0.674.

``dialogbert index`` trains it on the same training pairs the dual encoder was fine-tuned on
(the training split less the validation carve-out) and stores it in the index folder's
``ngram/``: settings.json, the trained rows' bucket ids and their vectors in float16 (69,529
rows, 35 MB, for ChatbotData; 20 s of training on one core), and the stored replies' own
vectors (replies.npy, float16, memory-mapped when served: 2 bytes x dim per reply, 19 MB for
the demo's 38k replies), so a chat request hashes only its context (:meth:`attach_replies`).

    enc = NgramEncoder(NgramSettings())
    enc.fit([(context_text, reply), ...])
    enc.encode(["text", ...])  # (n, dim) float32, L2-normalised
"""
from __future__ import annotations

import json
import os
import random
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from preprocess.schema import atomic_write_text
from retrieval.index import NGRAM_DIR

SETTINGS = "settings.json"
REPLIES = "replies.npy"        # the stored replies' vectors, float16, in the index's row order
REPLIES_KEY = "replies.json"   # which replies those are: their count and texts_sha256, the dimension
REPLY_CHUNK = 100_000          # replies encoded (or copied) at a time when writing replies.npy
MAX_PAIRS = 500_000  # training pairs kept (a uniform sample beyond: reservoir sampling); their hashed
                     # features stay in RAM during training (~250 MB at this many), and max_minutes
                     # stops the epochs of a sample this big on one CPU core anyway


@dataclass
class NgramSettings:
    buckets: int = 1 << 18     # hashed feature rows
    dim: int = 256
    orders: tuple[int, ...] = (1, 2, 3)  # character n-gram lengths
    words: bool = True         # whitespace words as features too
    scale: float = 10.0        # logit scale of the in-batch loss (1 / temperature)
    seed: int = 0              # the table's random initialisation (and the batch order)
    epochs: int = 5
    batch_size: int = 128
    lr: float = 3e-3
    max_minutes: float = 20.0  # training stops after this long, whatever the epoch
    trained: dict = field(default_factory=dict)  # what training measured (pairs, steps, loss, minutes)

    @classmethod
    def from_dict(cls, d: dict) -> "NgramSettings":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "orders" in known:
            known["orders"] = tuple(int(n) for n in known["orders"])
        return cls(**known)


def grams(text: str, orders: Sequence[int] = (1, 2, 3), words: bool = True) -> list[str]:
    """The feature strings of a text: its character n-grams framed by ^ and $, spaces as _, plus
    its whitespace words (prefixed ``w:``). Never empty (an empty text still has ``^$``)."""
    t = " ".join(text.split())
    s = "^" + t.replace(" ", "_") + "$"
    out = [s[i:i + n] for n in orders for i in range(len(s) - n + 1)]
    if words:
        out.extend("w:" + w for w in t.split())
    return out


class NgramEncoder:
    """The table holds a row for each feature bucket seen in training (``rows``, sorted bucket
    ids); a bucket never seen gets a fixed random vector drawn from (seed, bucket), like the
    untrained rows of a full table, so its memory is the trained rows only. ``name``: its row in
    an evaluation report."""

    name = "n-gram dual encoder (the ranker's)"

    def __init__(self, settings: NgramSettings | None = None, rows: np.ndarray | None = None,
                 table: torch.Tensor | None = None):
        self.settings = s = settings or NgramSettings()
        self.dim = s.dim
        self._unseen: dict[int, np.ndarray] = {}
        self.replies: np.ndarray | None = None  # attach_replies: the stored replies' vectors
        self.set_rows(np.zeros(0, np.int64) if rows is None else rows, table)

    def set_rows(self, rows: np.ndarray, table: torch.Tensor | None = None) -> None:
        s = self.settings
        self.rows = np.asarray(rows, dtype=np.int64)
        if table is None:
            g = torch.Generator().manual_seed(s.seed)
            table = torch.empty(len(self.rows), s.dim).normal_(0.0, 0.1, generator=g)
        self.table = table
        self.lookup = np.full(s.buckets, -1, dtype=np.int64)
        self.lookup[self.rows] = np.arange(len(self.rows))

    def ids(self, text: str) -> list[int]:
        s = self.settings
        return [zlib.crc32(g.encode("utf-8")) % s.buckets for g in grams(text, s.orders, s.words)]

    def unseen_vector(self, bucket: int) -> np.ndarray:
        v = self._unseen.get(bucket)
        if v is None:
            if len(self._unseen) > 200_000:
                self._unseen.clear()
            v = (np.random.default_rng((self.settings.seed, bucket)).standard_normal(self.dim) * 0.1).astype(np.float32)
            self._unseen[bucket] = v
        return v

    def _bags(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """(flat table rows, offsets) of the texts' trained features, and each text's unseen buckets."""
        trained, unseen = [], []
        for t in texts:
            ids = np.asarray(self.ids(t), dtype=np.int64)
            rows = self.lookup[ids]
            trained.append(rows[rows >= 0])
            unseen.append(ids[rows < 0].tolist())
        return (*_packed(trained), unseen)

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        flat, offsets, unseen = self._bags(texts)
        # the sum, not the mean, of the feature vectors: the same direction, and it splits into
        # trained and unseen parts
        v = torch.nn.functional.embedding_bag(flat, self.table, offsets, mode="sum")
        for i, bs in enumerate(unseen):
            if bs:
                v[i] = v[i] + torch.from_numpy(np.sum([self.unseen_vector(b) for b in bs], axis=0))
        return torch.nn.functional.normalize(v, dim=-1)

    def encode(self, texts: Sequence[str], batch_size: int = 4096) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                out[i:i + batch_size] = self._embed(texts[i:i + batch_size]).numpy()
        return out

    def score(self, contexts, candidates: Sequence[Sequence[str]], rows=None) -> np.ndarray:
        """(m, n) cosines of each context's newest turn (as the ranker's lexical features read it)
        and its candidates, each distinct candidate text encoded once: the protocol's scorer
        interface, so ``dialogbert eval`` reports this encoder on its own too. ``rows`` (m, n):
        the candidates' rows in the index's store, when they are stored replies (the chat
        service); their vectors are then read from :meth:`attach_replies`' store."""
        from retrieval.baselines import context_text
        from retrieval.index import MEMORY_TEXT_TURNS
        Q = self.encode([context_text(c, MEMORY_TEXT_TURNS) for c in contexts])
        rows = None if rows is None or self.replies is None else np.asarray(rows, dtype=np.int64)
        if rows is not None and rows.shape == (len(contexts), len(candidates[0]) if len(candidates) else 0) \
                and (rows.size == 0 or (rows.min() >= 0 and rows.max() < len(self.replies))):
            R = np.asarray(self.replies[rows.ravel()], dtype=np.float32).reshape(*rows.shape, self.dim)
        else:  # not stored replies (or rows this store does not have): hashed
            from retrieval.examples import distinct
            uniq, idx = distinct(candidates)
            R = self.encode(uniq)[idx]
        return np.einsum("md,mnd->mn", Q, R)

    def attach_replies(self, folder: str | Path, texts: Sequence[str]) -> None:
        """Give :meth:`score` the vectors of an index's stored replies (``texts``, in row order):
        ``folder/ngram/replies.npy``, memory-mapped, so a chat request reads its ~70 candidates'
        rows instead of hashing their n-grams (a quarter of a request's time on the demo index).
        The file is written when missing (``dialogbert index`` does it after training, and
        ``--add`` appends the new replies' vectors). The key, replies.json, names the texts the
        vectors are of (their count and sha256): a store that has grown gets the new rows
        appended here, vectors of other texts are recomputed, and :meth:`save` of a (re)trained
        table removes them. Where the folder is read-only they are kept in RAM instead, with a
        note."""
        d = Path(folder) / NGRAM_DIR
        old = self._stored(d, texts)
        have = 0 if old is None else len(old)
        if old is not None and have == len(texts):
            self.replies = old
            return
        t0, tmp = time.time(), None
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
            self.replies = np.load(d / REPLIES, mmap_mode="r")
        except OSError as e:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            print(f"ranker: could not store the n-gram reply vectors in {d} ({e}); they are kept in RAM")
            self.replies = np.zeros((len(texts), self.dim), np.float16)
            self._fill(self.replies, texts, old, have)
        print(f"ranker: n-gram vectors of {len(texts) - have} stored replies in {time.time() - t0:.1f} s"
              + (f" ({have} kept)" if have else ""))

    def _stored(self, d: Path, texts: Sequence[str]) -> np.ndarray | None:
        """``d/replies.npy`` memory-mapped when its key says it holds this table's vectors of
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
            out[i:i + REPLY_CHUNK] = self.encode(texts[i:i + REPLY_CHUNK]).astype(np.float16)

    def fit(self, pairs: Sequence[tuple[str, str]], show_progress: bool | None = None) -> dict:
        """Train on (context text, reply) pairs with in-batch negatives; a batch's other pairs
        with the same reply text are no negatives. The table gets a row for every feature
        bucket of the pairs. Returns what training measured (also kept in ``settings.trained``)."""
        s = self.settings
        if len(pairs) < 2:
            raise ValueError(f"the n-gram encoder needs at least 2 training pairs, got {len(pairs)}")
        seen = np.zeros(s.buckets, dtype=bool)
        feats = []  # each pair's (context, reply) feature buckets, hashed once for all epochs
        for c, r in pairs:
            fc, fr = np.asarray(self.ids(c), np.int32), np.asarray(self.ids(r), np.int32)
            seen[fc] = seen[fr] = True
            feats.append((fc, fr))
        self.set_rows(np.flatnonzero(seen))
        lookup = self.lookup.astype(np.int32)
        feats = [(lookup[fc], lookup[fr]) for fc, fr in feats]  # buckets -> table rows
        reply_id: dict[str, int] = {}
        rid = np.array([reply_id.setdefault(r, len(reply_id)) for _, r in pairs])
        weight = torch.nn.Parameter(self.table)
        opt = torch.optim.SparseAdam([weight], lr=s.lr)
        bs = min(s.batch_size, len(pairs))
        steps_per_epoch = len(pairs) // bs
        total = s.epochs * steps_per_epoch
        if show_progress is None:
            show_progress = total >= 200
        bar = None
        if show_progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, desc="n-gram encoder", unit="step")
        F = torch.nn.functional
        t0, step, losses, stopped = time.time(), 0, [], False
        for epoch in range(s.epochs):
            order = list(range(len(pairs)))
            random.Random(s.seed * 1_000_003 + epoch).shuffle(order)
            for b in range(steps_per_epoch):
                ix = order[b * bs:(b + 1) * bs]
                a, r = (F.normalize(F.embedding_bag(flat, weight, offsets, mode="sum", sparse=True), dim=-1)
                        for flat, offsets in (_packed([feats[i][side] for i in ix]) for side in (0, 1)))
                logits = a @ r.T * s.scale
                same = torch.from_numpy(rid[ix][:, None] == rid[ix][None, :])
                logits = logits.masked_fill(same & ~torch.eye(len(ix), dtype=torch.bool), -1e4)
                y = torch.arange(len(ix))
                loss = (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
                step += 1
                if bar is not None:
                    bar.update(1)
                    if step % 50 == 0:
                        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
                if time.time() - t0 > s.max_minutes * 60:
                    stopped = True
                    break
            if stopped:
                break
        if bar is not None:
            bar.close()
        # what is served is what is stored: the rows rounded to float16 now
        self.table = weight.detach().half().float()
        s.trained = {"pairs": len(pairs), "steps": step, "epochs": round(step / max(1, steps_per_epoch), 2),
                     "final_loss": round(float(np.mean(losses[-50:])), 4) if losses else None,
                     "minutes": round((time.time() - t0) / 60, 2), "rows": int(len(self.rows)),
                     "stopped_by_time": stopped}
        return s.trained

    # ---- storage --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``folder/ngram/``; settings.json last, so a half-written folder is never read."""
        d = Path(folder) / NGRAM_DIR
        d.mkdir(parents=True, exist_ok=True)
        (d / SETTINGS).unlink(missing_ok=True)
        for name in (REPLIES_KEY, REPLIES):  # another table's reply vectors: attach_replies recomputes
            (d / name).unlink(missing_ok=True)
        np.save(d / "rows.npy", self.rows.astype(np.int32))
        np.save(d / "vectors.npy", self.table.numpy().astype(np.float16))
        atomic_write_text(d / SETTINGS, json.dumps(asdict(self.settings), indent=1) + "\n")
        return d

    @classmethod
    def load(cls, folder: str | Path) -> "NgramEncoder | None":
        """The encoder in ``folder/ngram/``, or None when there is none."""
        d = Path(folder) / NGRAM_DIR
        if not (d / SETTINGS).exists():
            return None
        try:
            settings = NgramSettings.from_dict(json.loads((d / SETTINGS).read_text("utf-8")))
            rows = np.load(d / "rows.npy")
            vecs = np.load(d / "vectors.npy")
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{d} is damaged ({e}); rebuild it with `dialogbert index`") from e
        if vecs.shape != (len(rows), settings.dim) or (len(rows) and (rows.min() < 0 or rows.max() >= settings.buckets)):
            raise ValueError(f"{d}: rows.npy ({len(rows)}) and vectors.npy {vecs.shape} do not match "
                             f"settings.json (dim {settings.dim}, {settings.buckets} buckets); rebuild it "
                             f"with `dialogbert index`")
        return cls(settings, rows, torch.from_numpy(vecs.astype(np.float32)))


def _packed(arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """embedding_bag's (flat ids, offsets) of a list of id arrays."""
    offsets = np.zeros(len(arrays), dtype=np.int64)
    np.cumsum([len(a) for a in arrays[:-1]], out=offsets[1:])
    flat = np.concatenate(arrays) if len(arrays) else np.zeros(0)
    return torch.from_numpy(flat.astype(np.int64)), torch.from_numpy(offsets)


def training_texts(shards, fraction: float, sources: Iterable[str] | None = None,
                   max_pairs: int = MAX_PAIRS, turns: int = 1) -> list[tuple[str, str]]:
    """(newest ``turns`` context turns as text, reply) of the TRAIN split, less the validation
    carve-out ``fraction`` (the ranker is fitted on it); a uniform sample of ``max_pairs``
    beyond that many (examples.uniform_sample), in shard order."""
    from retrieval.baselines import context_text
    from retrieval.examples import train_examples, uniform_sample
    return uniform_sample(((context_text(ex.context, turns), ex.response)
                           for ex in train_examples(shards, fraction, False, turns, sources)), max_pairs)


def train_for_index(index_dir: str | Path, shards, fraction: float, sources: Iterable[str] | None = None,
                    settings: NgramSettings | None = None) -> NgramEncoder | None:
    """Train the n-gram encoder on the index's training pairs and save it in ``index_dir/ngram/``;
    None (and nothing saved) when the shards hold fewer than 100 training pairs."""
    pairs = training_texts(shards, fraction, sources)
    if len(pairs) < 100:
        print(f"ranker: only {len(pairs)} training pairs: no n-gram encoder")
        return None
    enc = NgramEncoder(settings)
    t = enc.fit(pairs)
    enc.save(index_dir)
    print(f"ranker: n-gram encoder trained on {t['pairs']} pairs ({t['steps']} steps, {t['minutes']} min, "
          f"final loss {t['final_loss']}, {t['rows']} feature rows)")
    return enc
