"""A bag-of-n-grams dual encoder: the ranker's ``ngram`` feature.

A text is the sum of learned vectors of its hashed character 1-3-grams (the text framed by
``^`` and ``$``, spaces as ``_``) and of its whitespace words, L2-normalised; one table serves
contexts (their newest turn) and replies, trained with in-batch negatives (the StarSpace /
fastText family: Wu et al. 2017; Joulin et al. 2017). It sees every syllable n-gram of Korean
text, where a small WordPiece vocabulary trained on little data splits words into pieces.
Korean morphemes and their nearest morphemes under the Kiwi analyser's embeddings are features
too (``NgramSettings.morphemes``, retrieval.morphemes), so a synonym the training pairs never
used still reaches trained rows. ``heads`` independently initialised tables are trained side by
side and served as one vector whose cosine is the mean of theirs: most of a row stays its random
start, and averaging removes that noise. Only the rows a batch touches are updated (RowAdam).

``dialogbert index`` trains it on the dual encoder's training pairs (the training split less the
validation carve-out) into the index folder's ``ngram/`` (settings.json, the trained rows and
their float16 vectors, and the stored replies' vectors, so a chat request hashes only its
context). The measurements behind these choices: docs/experiments/2026-12-06-ranker-own-encoders.md.

    enc = NgramEncoder(NgramSettings())
    enc.fit([(context_text, reply), ...])
    enc.encode(["text", ...])  # (n, heads * dim) float32, L2-normalised
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
from retrieval.morphemes import EXPAND, MIN_SIMILARITY
from retrieval.towers import SETTINGS, StoredReplyEncoder, fit_and_save, train_in_batches

NGRAM_DIR = "ngram"  # its folder in the index folder
HASH_CHUNK = 4096  # pairs whose texts go through the morpheme analyser at once when training
MAX_PAIRS = 500_000  # training pairs kept (a uniform sample beyond: reservoir sampling); their hashed
                     # features stay in RAM during training (~250 MB at this many), and max_minutes
                     # stops the epochs of a sample this big on one CPU core anyway


@dataclass
class NgramSettings:
    buckets: int = 1 << 18     # hashed feature rows
    dim: int = 256             # each head's dimension
    heads: int = 4             # independently initialised tables, trained side by side (see NgramEncoder)
    orders: tuple[int, ...] = (1, 2, 3)  # character n-gram lengths
    words: bool = True         # whitespace words as features too
    scale: float = 10.0        # logit scale of the in-batch loss (1 / temperature)
    seed: int = 0              # the table's random initialisation (and the batch order)
    epochs: int = 5
    batch_size: int = 128
    lr: float = 3e-3
    max_minutes: float = 20.0  # training stops after this long, whatever the epoch
    morphemes: bool = True     # Korean morphemes and their pretrained neighbours as features too (retrieval.morphemes)
    expand: int = EXPAND       # nearest morphemes added for each content morpheme (retrieval.morphemes)
    min_similarity: float = MIN_SIMILARITY  # ... whose CoNg cosine is at least this
    analyser: str = ""         # the morpheme analyser's version the table was trained with (set by fit)
    trained: dict = field(default_factory=dict)  # what training measured (pairs, steps, loss, minutes)

    def __post_init__(self):
        if self.heads < 1 or self.dim < 1:
            raise ValueError(f"the n-gram encoder needs at least one head and dimension, "
                             f"got heads={self.heads}, dim={self.dim}")

    @classmethod
    def from_dict(cls, d: dict) -> "NgramSettings":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known.setdefault("heads", 1)  # a folder saved before heads existed holds one
        known.setdefault("morphemes", False)  # ... and no morphemes
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
    untrained rows of a full table, so its memory is the trained rows only. ``table``: a float32
    tensor while training, float16 once trained (a memory-mapped array when loaded: encoding
    reads only the rows its texts use). ``name``: its row in an evaluation report."""

    name = "n-gram dual encoder (the ranker's)"
    subdir, label = NGRAM_DIR, "n-gram"

    def __init__(self, settings: NgramSettings | None = None, rows: np.ndarray | None = None,
                 table: torch.Tensor | np.ndarray | None = None):
        self.settings = s = settings or NgramSettings()
        self.dim = s.dim * s.heads  # the vector's width: the heads side by side
        self._unseen: dict[int, np.ndarray] = {}
        self.morphemes, self.analyser = None, ""
        if s.morphemes:
            from retrieval.morphemes import Morphemes, version
            self.analyser = version()  # raises where the analyser is missing, naming the fix
            if s.analyser and s.analyser != self.analyser:
                raise ValueError(f"this n-gram encoder was trained with kiwipiepy {s.analyser}, but {self.analyser} "
                                 f"is installed: its morphemes may differ; install kiwipiepy=={s.analyser} or "
                                 f"rebuild the index with `dialogbert index`")
            self.morphemes = Morphemes(s.expand, s.min_similarity)
        self.set_rows(np.zeros(0, np.int64) if rows is None else rows, table)

    def set_rows(self, rows: np.ndarray, table: torch.Tensor | np.ndarray | None = None) -> None:
        s = self.settings
        self.rows = np.asarray(rows, dtype=np.int64)
        if table is None:
            g = torch.Generator().manual_seed(s.seed)
            table = torch.empty(len(self.rows), self.dim).normal_(0.0, 0.1, generator=g)
        self.table = table
        self.lookup = np.full(s.buckets, -1, dtype=np.int64)
        self.lookup[self.rows] = np.arange(len(self.rows))

    def ids_of(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's feature buckets: its n-grams (:func:`grams`) and, with
        ``settings.morphemes``, its morphemes and their neighbours (retrieval.morphemes)."""
        s = self.settings
        extra = self.morphemes.features(texts) if self.morphemes is not None else [[] for _ in texts]
        return [[zlib.crc32(g.encode("utf-8")) % s.buckets for g in grams(t, s.orders, s.words) + m]
                for t, m in zip(texts, extra)]

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
        for ids in self.ids_of(texts):
            ids = np.asarray(ids, dtype=np.int64)
            rows = self.lookup[ids]
            trained.append(rows[rows >= 0])
            unseen.append(ids[rows < 0].tolist())
        return (*_packed(trained), unseen)

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        flat, offsets, unseen = self._bags(texts)
        # the sum, not the mean, of the feature vectors: the same direction, and it splits into
        # trained and unseen parts
        rows, local = np.unique(flat.numpy(), return_inverse=True)
        v = torch.nn.functional.embedding_bag(torch.from_numpy(local.reshape(-1)), self._gather(rows), offsets, mode="sum")
        for i, bs in enumerate(unseen):
            if bs:
                v[i] = v[i] + torch.from_numpy(np.sum([self.unseen_vector(b) for b in bs], axis=0))
        return self._joined(v)

    def _gather(self, rows: np.ndarray) -> torch.Tensor:
        """The table's ``rows`` as float32."""
        if isinstance(self.table, np.ndarray):  # loaded: memory-mapped float16
            return torch.from_numpy(np.asarray(self.table[rows], dtype=np.float32))
        return self.table[torch.from_numpy(rows)].float()

    def _heads(self, v: torch.Tensor) -> torch.Tensor:
        """(n, heads * dim) sums -> (n, heads, dim), each head L2-normalised."""
        return torch.nn.functional.normalize(v.view(len(v), self.settings.heads, self.settings.dim), dim=-1)

    def _joined(self, v: torch.Tensor) -> torch.Tensor:
        """The served vector: the normalised heads side by side over sqrt(heads), a unit vector whose
        dot product with another is the mean of the heads' cosines."""
        return self._heads(v).flatten(1) / self.settings.heads ** 0.5

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
        feats = self.table_rows(pairs)
        opt = RowAdam(self.table, lr=s.lr)
        F = torch.nn.functional

        def vectors(ix):  # (batch, heads, dim): each head has its own loss
            sides = [_packed([feats[i][side] for i in ix]) for side in (0, 1)]
            rows, local = np.unique(np.concatenate([flat.numpy() for flat, _ in sides]), return_inverse=True)
            leaf = opt.gather(rows)  # the batch's rows only: a dense gradient of len(rows) x width
            local = torch.from_numpy(local.reshape(-1))
            n0 = len(sides[0][0])
            return tuple(self._heads(F.embedding_bag(ids, leaf, offsets, mode="sum"))
                         for ids, (_, offsets) in ((local[:n0], sides[0]), (local[n0:], sides[1])))
        trained = train_in_batches(pairs, s, vectors, s.scale, opt, desc="n-gram encoder", show_progress=show_progress,
                                   progress_from=200, window=50)
        # what is served is what is stored: the rows rounded to float16 now
        self.table = self.table.half()
        s.trained = {**trained, "rows": int(len(self.rows))}
        s.analyser = self.analyser  # "" without morphemes
        return s.trained

    def table_rows(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each pair's (context, reply) feature rows, hashed once for all epochs; the table is
        made anew (set_rows) with a row for every feature bucket of the pairs."""
        seen = np.zeros(self.settings.buckets, dtype=bool)
        feats = []
        for i in range(0, len(pairs), HASH_CHUNK):
            chunk = pairs[i:i + HASH_CHUNK]
            ids = self.ids_of([c for c, _ in chunk] + [r for _, r in chunk])
            for fc, fr in zip(ids[:len(chunk)], ids[len(chunk):]):
                fc, fr = np.asarray(fc, np.int32), np.asarray(fr, np.int32)
                seen[fc] = seen[fr] = True
                feats.append((fc, fr))
        self.set_rows(np.flatnonzero(seen))
        lookup = self.lookup.astype(np.int32)
        return [(lookup[fc], lookup[fr]) for fc, fr in feats]  # buckets -> table rows

    # ---- storage --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``folder/ngram/``; settings.json last, so a half-written folder is never read."""
        d = self.saving(folder)
        table = self.table if isinstance(self.table, np.ndarray) else self.table.numpy()
        for name, arr in (("rows.npy", self.rows.astype(np.int32)), ("vectors.npy", table.astype(np.float16))):
            tmp = d / f".{name}.tmp.npy"  # then renamed: a loaded table may be mapped from the old file
            np.save(tmp, arr)
            tmp.replace(d / name)
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
            vecs = np.load(d / "vectors.npy", mmap_mode="r")
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{d} is damaged ({e}); rebuild it with `dialogbert index`") from e
        if vecs.shape != (len(rows), settings.dim * settings.heads) or (len(rows) and (rows.min() < 0 or rows.max() >= settings.buckets)):
            raise ValueError(f"{d}: rows.npy ({len(rows)}) and vectors.npy {vecs.shape} do not match "
                             f"settings.json (dim {settings.dim} x {settings.heads} heads, {settings.buckets} buckets); rebuild it "
                             f"with `dialogbert index`")
        enc = cls(settings, rows, vecs)
        if enc.morphemes is not None:
            enc.morphemes.load()
        return enc


class RowAdam:
    """Adam on the rows of a table that a batch touches, the others left as they are (lazy Adam,
    the update of torch's SparseAdam): :meth:`gather` gives the batch's rows as a dense leaf
    tensor, the loss's backward fills its gradient, :meth:`step` updates those rows' moments and
    values in place. Same arithmetic as SparseAdam without its sparse gradient, whose
    coalescing and masking took most of a step (measured on ChatbotData's pairs: 1.6x faster
    at one head of 256 dimensions, 2.3x at five).
    The table is updated in place."""

    def __init__(self, table: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.table, self.betas, self.eps = table, betas, eps
        self.param_groups = [{"lr": lr}]
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(table), torch.zeros_like(table)
        self.steps, self.rows, self.leaf, self._buf = 0, None, None, None

    def gather(self, rows: np.ndarray) -> torch.Tensor:
        """The table's ``rows`` (distinct ids) as a leaf tensor to compute the loss with."""
        self.rows = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        self.leaf = self.table[self.rows].requires_grad_()
        return self.leaf

    def zero_grad(self) -> None:
        pass  # each gather makes a fresh leaf

    @torch.no_grad()
    def step(self) -> None:
        g, r = self.leaf.grad, self.rows
        b1, b2 = self.betas
        self.steps += 1
        if self._buf is None or len(self._buf[0]) < len(r):  # reused: fresh memory each step costs more
            self._buf = tuple(torch.empty(max(len(r), 1024) * 5 // 4, self.table.shape[1]) for _ in range(2))
        m, v = (torch.index_select(state, 0, r, out=buf[:len(r)])
                for state, buf in zip((self.exp_avg, self.exp_avg_sq), self._buf))
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        self.exp_avg.index_copy_(0, r, m)
        self.exp_avg_sq.index_copy_(0, r, v)
        step_size = self.param_groups[0]["lr"] * (1 - b2 ** self.steps) ** 0.5 / (1 - b1 ** self.steps)
        self.table.index_add_(0, r, m.div_(v.sqrt_().add_(self.eps)), alpha=-step_size)
        self.leaf = None


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
    """Train the n-gram encoder on the index's training pairs and save it in ``index_dir/ngram/``
    (kept when trained on the same pairs: towers.fit_and_save); None (and nothing saved) when the
    shards hold fewer than 100 training pairs."""
    return fit_and_save(NgramEncoder, settings or NgramSettings(), training_texts(shards, fraction, sources),
                        index_dir, "n-gram encoder")
