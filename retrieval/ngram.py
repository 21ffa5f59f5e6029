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
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from preprocess.schema import atomic_write_text
from retrieval.index import NGRAM_DIR
from retrieval.towers import SETTINGS, StoredReplyEncoder, fit_and_save, train_in_batches

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


class NgramEncoder(StoredReplyEncoder):
    """The table holds a row for each feature bucket seen in training (``rows``, sorted bucket
    ids); a bucket never seen gets a fixed random vector drawn from (seed, bucket), like the
    untrained rows of a full table, so its memory is the trained rows only. ``name``: its row in
    an evaluation report."""

    name = "n-gram dual encoder (the ranker's)"
    subdir, label = NGRAM_DIR, "n-gram"

    def __init__(self, settings: NgramSettings | None = None, rows: np.ndarray | None = None,
                 table: torch.Tensor | None = None):
        self.settings = s = settings or NgramSettings()
        self.dim = s.dim
        self._unseen: dict[int, np.ndarray] = {}
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

    def encode_contexts(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts)

    encode_replies = encode_contexts  # one table for both

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
        weight = torch.nn.Parameter(self.table)
        opt = torch.optim.SparseAdam([weight], lr=s.lr)
        F = torch.nn.functional

        def vectors(ix):
            return tuple(F.normalize(F.embedding_bag(flat, weight, offsets, mode="sum", sparse=True), dim=-1)
                         for flat, offsets in (_packed([feats[i][side] for i in ix]) for side in (0, 1)))
        trained = train_in_batches(pairs, s, vectors, s.scale, opt, desc="n-gram encoder", show_progress=show_progress,
                                   progress_from=200, window=50)
        # what is served is what is stored: the rows rounded to float16 now
        self.table = weight.detach().half().float()
        s.trained = {**trained, "rows": int(len(self.rows))}
        return s.trained

    # ---- storage --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``folder/ngram/``; settings.json last, so a half-written folder is never read."""
        d = self.saving(folder)
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
    return fit_and_save(lambda: NgramEncoder(settings), training_texts(shards, fraction, sources), index_dir,
                        "n-gram encoder")
