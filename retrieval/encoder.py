"""Encode contexts and responses into L2-normalised float32 vectors.

Works with a dialogbert checkpoint (speaker ids in ``token_type_ids``, ``turn_ids``) and with
a plain BERT folder such as all-MiniLM-L6-v2 (no turn ids; token types all 0). Every input goes
through :func:`dialogbert.features.encode_dialog`, the one formatting function, so a context
looks the same in fine-tuning, indexing, evaluation and serving.

``encode`` works like sentence-transformers' ``SentenceTransformer.encode``: sort by length,
batch under ``torch.inference_mode()``, restore the order, return float32 ``(n, d)``.

Settings that must match between fine-tuning and serving (pooling, context turns, lengths,
whether speaker/turn ids are zeroed) live in ``retrieval.json`` beside the weights.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from dialogbert.features import encode_dialog, pad_batch, turn_text

SETTINGS_FILE = "retrieval.json"
Turns = Sequence[tuple[str, str]]


@dataclass
class EncoderSettings:
    pooling: str = "mean"           # "mean" over non-pad tokens, or "cls"
    context_turns: int = 5          # newest turns of a context that are encoded
    max_length: int = 128           # tokens per input ([CLS] + turns + [SEP]s)
    max_turn_tokens: int = 64       # each turn cut to this many tokens (its start kept)
    zero_dialog_ids: bool = False   # ablation: speaker and turn ids all 0 (train and eval alike)
    context_prefix: str = ""        # text after [CLS] of every context (e5: "query:")
    response_prefix: str = ""       # ... of every reply (e5: "passage:"): a reply that repeats the context is another input
    kind: str = "dual"              # "dual" (this module) or "cross" (retrieval.rerank.CrossEncoder)

    @classmethod
    def read(cls, folder: str | Path) -> "EncoderSettings":
        p = Path(folder) / SETTINGS_FILE
        if not p.exists():
            return cls()
        d = json.loads(p.read_text("utf-8"))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


PRECISIONS = ("fp32", "bf16", "auto")


def check_precision(precision: str, key: str = "precision") -> str:
    """``precision`` when it is one of PRECISIONS, else a ValueError naming the config ``key``."""
    if precision not in PRECISIONS:
        raise ValueError(f"{key}={precision!r}: use one of {', '.join(PRECISIONS)}")
    return precision


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """"fp32" or "bf16" for a config's ``precision``: "auto" is bf16 where the hardware computes it
    natively (a CPU with avx512_bf16 or AMX, a CUDA card with bf16), else fp32: without those,
    bf16 autocast is emulated and slower than fp32."""
    check_precision(precision)
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if native else "fp32"


def autocast(precision: str, device: str):
    """bf16 autocast on ``device`` for a resolved ``precision`` ("bf16"; matmuls in bfloat16,
    sums and losses in fp32), a no-op for "fp32": the one switch of encoding and fine-tuning."""
    return torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")


def model_hash(folder: str | Path) -> str:
    """sha256 of the weights file (model.safetensors, else pytorch_model.bin); with a reply memory
    (retrieval.reply_memory) beside it, the sha256 of both files' hashes: the memory changes the
    reply vectors an index holds."""
    import hashlib

    from preprocess.pipeline import file_sha256
    from retrieval.reply_memory import MEMORY_FILE
    folder = Path(folder)
    for name in ("model.safetensors", "pytorch_model.bin"):
        p = folder / name
        if p.exists():
            h = file_sha256(p)
            if (folder / MEMORY_FILE).exists():
                h = hashlib.sha256((h + file_sha256(folder / MEMORY_FILE)).encode()).hexdigest()
            return h
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin: not a model folder")


class Encoder:
    """A dual encoder: a context and a response each become one normalised vector."""
    kind = "dual"
    auto_class = "AutoModel"  # the transformers class that loads the weights
    # ``run`` packs a call of at most this many tokens in all into one row (:meth:`forward_packed`):
    # a chat request's few contexts then cost their tokens, not their padding. The attention over a
    # packed row grows with its square, so a larger call runs as length-sorted batches instead.
    pack_tokens = 512

    def __init__(self, model, tokenizer, settings: EncoderSettings | None = None, path: str | Path | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.settings = settings or EncoderSettings()
        if self.settings.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {self.settings.pooling!r}")
        self.path = Path(path) if path else None
        # "bf16": ``run`` autocasts matmuls to bfloat16 (1.7x on CPUs with avx512_bf16; the
        # vectors rank as the fp32 ones do: docs/retrieval.md); a runtime choice, not saved
        self.precision = "fp32"
        cfg = model.config
        self.is_dialog = getattr(cfg, "model_type", "") == "dialogbert"
        self.max_turns = int(getattr(cfg, "max_turns", 16))
        self.num_speakers = int(getattr(cfg, "num_speakers", getattr(cfg, "type_vocab_size", 2)))
        limit = int(getattr(cfg, "max_position_embeddings", 512))
        self.settings.max_length = min(self.settings.max_length, limit)
        self.dim = int(cfg.hidden_size)
        # retrieval.reply_memory.ReplyMemory: applied by encode_responses; Encoder.load reads the
        # folder's reply_memory.npz unless told not to (``reply_memory=False``)
        self.reply_memory = None

    # ---- loading and saving -------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, strict_kind: bool = True, reply_memory: bool = True, **overrides) -> "Encoder":
        from transformers import AutoTokenizer

        from dialogbert.modeling import attention_for_device  # also registers model_type "dialogbert"

        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path}: no config.json; pass a dialogbert checkpoint or a BERT folder "
                                    f"(e.g. the output of `dialogbert finetune`)")
        settings = EncoderSettings.read(path)
        if strict_kind and (path / SETTINGS_FILE).exists() and settings.kind != cls.kind:
            raise ValueError(f"{path} holds a {settings.kind!r} model (retrieval.json), not a {cls.kind!r} one: "
                             + ("pass it as the re-ranker (--reranker)" if settings.kind == "cross"
                                else "pass it as the encoder (--model)"))
        for k, v in overrides.items():
            if v is not None:
                setattr(settings, k, v)
        settings.kind = cls.kind
        import transformers
        model = getattr(transformers, cls.auto_class).from_pretrained(path, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model.eval()
        attention_for_device(model, next(model.parameters()).device)
        enc = cls(model, tok, settings, path)
        if reply_memory and cls.kind == "dual":
            from retrieval.reply_memory import ReplyMemory
            enc.reply_memory = ReplyMemory.load(path)
        return enc

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        (out / SETTINGS_FILE).write_text(json.dumps(asdict(self.settings), indent=2) + "\n", "utf-8")
        return out

    def for_inference(self, precision: str = "auto") -> "Encoder":
        """This encoder, its weights cast to bfloat16 where ``precision`` resolves to "bf16"
        (:func:`resolve_precision`: "auto" is bf16 on hardware that computes it natively), for an
        encoder that is only read (the chat service, evaluation, the ranker's fitting): 1.5x the
        contexts a second of fp32 at 8 a call on two cores, without autocast's casting of the
        weights on every call; vectors at cosine 0.9999 to fp32. Not for training afterwards. The
        weights' dtype is the whole state (:attr:`weights_precision`): autocast on top of them
        gives the same vectors to the bit, so ``precision`` is left as it is."""
        if resolve_precision(precision, self.model.device.type) == "bf16":
            self.model.to(torch.bfloat16)
        return self

    @property
    def weights_precision(self) -> str:
        """"bf16" after :meth:`for_inference` cast the weights, else "fp32"."""
        return "bf16" if next(self.model.parameters()).dtype == torch.bfloat16 else "fp32"

    def hash(self) -> str:
        if self.path is None:
            raise ValueError("an in-memory encoder has no weights file to hash: save it first")
        return model_hash(self.path)

    # ---- features -----------------------------------------------------------------------
    def featurize(self, items: Sequence[Turns], keep: int | None = None, prefix: str = "") -> list[dict[str, list[int]]]:
        """encode_dialog over many turn lists (the newest ``keep`` turns of each, by default
        ``context_turns``), tokenizing each distinct turn text once; ``prefix`` (a setting's
        context or response prefix) after [CLS]."""
        s = self.settings
        keep = s.context_turns if keep is None else keep
        items = [list(t)[-keep:] if keep else list(t) for t in items]
        texts = sorted({turn_text(text) for turns in items for _, text in turns})
        ids = dict(zip(texts, self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"])) if texts else {}
        prefix_ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        feats = []
        for turns in items:
            f = encode_dialog(self.tokenizer, turns, max_length=s.max_length, max_turns=self.max_turns,
                              num_speakers=max(2, self.num_speakers), max_turn_tokens=s.max_turn_tokens,
                              token_ids=[ids[turn_text(t)] for _, t in turns], prefix_ids=prefix_ids)
            if not self.is_dialog or s.zero_dialog_ids:
                f["token_type_ids"] = [0] * len(f["input_ids"])
                f["turn_ids"] = [0] * len(f["input_ids"])
            feats.append(f)
        return feats

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  token_type_ids=batch["token_type_ids"])
        if self.is_dialog:
            kw["turn_ids"] = batch["turn_ids"]
        return kw

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled, L2-normalised embeddings of a padded batch (keeps the autograd graph)."""
        hidden = self.model(**self.model_inputs(batch)).last_hidden_state
        if self.settings.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def forward_sorted(self, feats: list[dict], chunk: int = 0) -> torch.Tensor:
        """``forward`` over features (keeping the autograd graph), in input order. With ``chunk``
        > 0 the rows are sorted by length and run ``chunk`` at a time, each chunk padded to its own
        longest row: a training batch of contexts and replies together pads less than as two
        blocks (fine-tuning's ``train.length_chunk``; the speed-up is in docs/benchmarks.md)."""
        if chunk <= 0 or len(feats) <= chunk:
            return self.forward(self.pad(feats))
        order = sorted(range(len(feats)), key=lambda i: len(feats[i]["input_ids"]))
        parts = [self.forward(self.pad([feats[i] for i in order[s:s + chunk]])) for s in range(0, len(order), chunk)]
        out = torch.cat(parts)
        return out[torch.argsort(torch.tensor(order, device=out.device))]  # row i back at i

    def packs(self, feats: list[dict]) -> bool:
        """Whether ``run`` encodes ``feats`` as one packed row: several inputs, at most
        :attr:`pack_tokens` tokens in all, and a BERT that takes position ids and a 4D mask."""
        from transformers import BertModel

        from dialogbert.modeling import DialogBertModel
        return (self.pack_tokens > 0 and len(feats) > 1 and sum(len(f["input_ids"]) for f in feats) <= self.pack_tokens
                and isinstance(self.model, (BertModel, DialogBertModel)))

    def forward_packed(self, feats: list[dict]) -> torch.Tensor:
        """``forward`` of several inputs as one row without padding: their tokens side by side,
        each input attending only to its own (a block-diagonal mask), its positions counted from 0,
        pooled on its own tokens. The same vectors as :meth:`forward` of the padded batch (fp32: to
        1e-6) for the FLOPs of the real tokens: a chat request's 8 contexts padded to their longest
        are 1.6-2x their tokens (docs/benchmarks.md, "Serving")."""
        dev = next(self.model.parameters()).device
        lens = torch.tensor([len(f["input_ids"]) for f in feats])
        total = int(lens.sum())
        seg = torch.repeat_interleave(torch.arange(len(feats)), lens)
        starts = torch.cumsum(lens, 0) - lens

        def row(key: str) -> torch.Tensor:
            return torch.tensor([t for f in feats for t in f[key]], device=dev)[None]

        dtype = self.model.get_input_embeddings().weight.dtype
        mask = torch.zeros(total, total, dtype=dtype)
        mask.masked_fill_(seg[:, None] != seg[None, :], torch.finfo(dtype).min)  # added to the attention logits
        kw = dict(input_ids=row("input_ids"), attention_mask=mask[None, None].to(dev),
                  token_type_ids=row("token_type_ids"),
                  position_ids=(torch.arange(total) - torch.repeat_interleave(starts, lens))[None].to(dev))
        if self.is_dialog:
            kw["turn_ids"] = row("turn_ids")
        hidden = self.model(**kw).last_hidden_state[0].float()
        if self.settings.pooling == "cls":
            pooled = hidden[starts.to(dev)]
        else:
            member = torch.zeros(len(feats), total, device=dev)
            member[seg.to(dev), torch.arange(total, device=dev)] = 1.0
            pooled = (member @ hidden) / lens.to(dev, torch.float32)[:, None]
        return torch.nn.functional.normalize(pooled, dim=-1)

    def pad(self, feats) -> dict[str, torch.Tensor]:
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        dev = next(self.model.parameters()).device
        return {k: v.to(dev) for k, v in pad_batch(feats, pad_id).items()}

    @contextmanager
    def at_precision(self, precision: str):
        """``run`` at ``precision`` (:func:`resolve_precision`) inside the block, the encoder's own after."""
        kept, self.precision = self.precision, resolve_precision(precision, self.model.device.type)
        try:
            yield self
        finally:
            self.precision = kept

    # ---- encode -------------------------------------------------------------------------
    def encode(self, items: Sequence[Turns], batch_size: int = 64, show_progress: bool | None = None,
               prefix: str = "") -> np.ndarray:
        """Turn lists (oldest first) -> float32 (n, d), L2-normalised, in input order."""
        return self.run(self.featurize(items, prefix=prefix), (self.dim,), batch_size, show_progress, "encode")

    def run(self, feats: list[dict], shape: tuple[int, ...], batch_size: int = 64,
            show_progress: bool | None = None, desc: str = "encode") -> np.ndarray:
        """``forward`` over features in length-sorted batches under inference mode, or as one
        packed row where :meth:`packs` says so; float32 ``(n, *shape)`` in input order."""
        out = np.zeros((len(feats), *shape), dtype=np.float32)
        if not feats:
            return out
        was_training = self.model.training
        if was_training:  # switching walks every module (about 2 ms on the 12-layer model): only when needed
            self.model.eval()
        with torch.inference_mode(), autocast(self.precision, self.model.device.type):
            if self.packs(feats):
                out[:] = self.forward_packed(feats).cpu().numpy()
            else:
                order = np.argsort([-len(f["input_ids"]) for f in feats], kind="stable")
                starts = range(0, len(order), batch_size)
                if show_progress or (show_progress is None and len(feats) >= 5000):
                    from tqdm.auto import tqdm
                    starts = tqdm(starts, desc=desc, unit="batch")
                for i in starts:
                    idx = order[i:i + batch_size]
                    out[idx] = self.forward(self.pad([feats[j] for j in idx])).cpu().numpy()
        if was_training:
            self.model.train()
        return out

    def context_features(self, contexts: Sequence[Turns]) -> list[dict[str, list[int]]]:
        return self.featurize(contexts, prefix=self.settings.context_prefix)

    def response_features(self, texts: Sequence[str], speaker: str = "R") -> list[dict[str, list[int]]]:
        return self.featurize([[(speaker, t)] for t in texts], prefix=self.settings.response_prefix)

    def encode_contexts(self, contexts: Sequence[Turns], **kw) -> np.ndarray:
        return self.encode(contexts, prefix=self.settings.context_prefix, **kw)

    @property
    def vector_precision(self) -> str:
        """"bf16" where the matmuls run in bfloat16 (weights cast, or autocast), else "fp32": the
        reply memory's stored vectors are reused only by an encoder that computes them so (the two
        bf16 ways agree to cosine 0.9999, as bf16 and fp32 do not quite)."""
        return "bf16" if "bf16" in (self.weights_precision, self.precision) else "fp32"

    def encode_responses(self, texts: Sequence[str], speaker: str = "R", reply_memory: bool = True,
                         **kw) -> np.ndarray:
        """Reply vectors; a remembered reply's moved towards the contexts it answered in
        fine-tuning (:attr:`reply_memory`, retrieval.reply_memory) unless ``reply_memory`` is False
        (then every vector is computed now). With the memory, the plain vectors it stores (computed
        by this model at :attr:`vector_precision`) are read instead of run again."""
        mem = self.reply_memory if reply_memory else None
        if mem is None or speaker != "R":
            vecs = self.encode([[(speaker, t)] for t in texts], prefix=self.settings.response_prefix, **kw)
            return vecs if mem is None else mem.expand(texts, vecs)
        from retrieval.reply_memory import plain_vectors
        return mem.expand(texts, plain_vectors(self, mem, texts, **kw))
