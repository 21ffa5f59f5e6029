"""The response index: FAISS over the encoder's response vectors (the only module importing faiss).

    build_index(model, shards, out, factory="Flat")   -> out/ (faiss.index, responses.jsonl,
                                                          memory.index, memory.jsonl, index_info.json)
    ResponseIndex.load(out, model_dir).search(contexts, k) -> [[(score, response dict), ...], ...]

Candidates are the deduplicated turns (t >= 1) of the TRAIN split that pass the filters: length
bounds; never a turn for which ``preprocess.anonymize.contains_pii`` is True (a retrieval bot
repeats stored text verbatim, see docs/personal-data.md); turns holding placeholders such as [NAME] are
left out by default. FAISS id i is row i of ``responses.jsonl``. Inner product on normalised
vectors (cosine). ``index_info.json`` records the model hash, dimension and factory and is
checked on load; a mismatch raises an error that says how to fix it.

The **context memory** (``memory.index`` + ``memory.jsonl``) holds one vector per training
(context, response) pair whose response is in the store: the context's vector, the row of its
response, and the text of the turn it answers (for the ranker's lexical neighbours; contexts are
matched against, never served). ``ResponseIndex.neighbours`` finds the training contexts closest to a new one, which
lets the ranker (retrieval.ranker) ask "what was answered to conversations like this one?" as well
as "which reply fits this context?". Several contexts may point at one stored reply (duplicates
are stored once), which is exactly the evidence a paraphrased question gives.

About 400 lines because it is the one place that knows FAISS (building, GPU moves, search
parameters) and the folder it writes; the ranker and the bigindex read it, never the other way.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from preprocess.schema import PLACEHOLDERS, atomic_write_text, read_shards
from retrieval.baselines import context_text

MEMORY_TEXT_TURNS = 1  # the memory keeps the newest turn of each context as text: the ranker's lexical
                       # features read the same (earlier turns, the bot's own replies among them in a
                       # chat, would pull answers back to old topics)

INDEX_FILE, RESPONSES_FILE, INFO_FILE = "faiss.index", "responses.jsonl", "index_info.json"
MEMORY_INDEX, MEMORY_FILE = "memory.index", "memory.jsonl"
MEMORY_CONTEXT_TURNS = 5  # turns of context stored per memory entry (the protocol's context)
TRAIN_SAMPLE = 100_000  # vectors used to train IVF / PQ indexes
FLAT_MATMUL_QUERIES = 64  # a Flat index's search of at most this many queries is one matrix product (search_vectors)


def texts_sha256(*parts: Sequence[str]) -> str:
    """sha256 of lists of texts (each text and a NUL, each list closed by \\x01): the key of the
    caches derived from an index's stored texts (the ranker's TF-IDF, the n-gram reply vectors)."""
    h = hashlib.sha256()
    for part in parts:
        for i in range(0, len(part), 100_000):  # joined in chunks: 2x a per-text loop's speed
            h.update(("\x00".join(part[i:i + 100_000]) + "\x00").encode("utf-8"))
        h.update(b"\x01")
    return h.hexdigest()


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover
        raise ImportError("faiss is missing: pip install faiss-cpu==1.15.1 (or faiss-gpu)") from e
    faiss.cvar.distance_compute_blas_threshold = 20  # batched search through BLAS (NOTES.md)
    return faiss


@dataclass
class ResponseFilter:
    min_chars: int = 2
    max_chars: int = 300
    allow_placeholders: bool = False
    pii_check: Callable[[str], bool] | None = None  # default: preprocess.anonymize.contains_pii

    def checker(self) -> Callable[[str], bool]:
        if self.pii_check is not None:
            return self.pii_check
        try:
            from preprocess.anonymize import contains_pii
        except ImportError as e:
            raise ImportError("preprocess.anonymize.contains_pii is missing: the index refuses to store "
                              "responses without the PII guard (docs/personal-data.md)") from e
        return contains_pii

    def reason(self, text: str, contains_pii: Callable[[str], bool]) -> str | None:
        """Why a text stays out of the index, or None when it may enter."""
        t = text.strip()
        if len(t) < self.min_chars:
            return "too_short"
        if len(t) > self.max_chars:
            return "too_long"
        if contains_pii(t):
            return "pii"
        if not self.allow_placeholders and any(p in t for p in PLACEHOLDERS):
            return "placeholder"
        return None


def collect_responses(shards, filt: ResponseFilter | None = None, seen: Iterable[str] = (),
                      pairs: list | None = None, split: str | None = "train") -> tuple[list[dict], dict]:
    """Deduplicated, filtered response rows of the ``split`` (None: every conversation, for a bot
    nobody evaluates on a held-out split), and counts of what was dropped. With ``pairs`` (a
    list), also append ``(context turns, response text, conv id)`` for every turn whose response
    is stored (new or already ``seen``): the context memory."""
    filt = filt or ResponseFilter()
    check = filt.checker()
    seen_set = set(seen)
    rows, dropped = [], {"duplicate": 0}
    for conv in read_shards(shards, split=split):
        for t, turn in enumerate(conv.turns):
            if t == 0:
                continue
            text = turn.text.strip()
            if text in seen_set:
                dropped["duplicate"] += 1
            else:
                why = filt.reason(text, check)
                if why:
                    dropped[why] = dropped.get(why, 0) + 1
                    continue
                seen_set.add(text)
                rows.append({"text": text, "conv": conv.id, "source": conv.source, "turn": t})
            if pairs is not None:
                ctx = [(x.speaker, x.text) for x in conv.turns[max(0, t - MEMORY_CONTEXT_TURNS):t]]
                pairs.append((ctx, text, conv.id))
    return rows, dropped


def _metric_ip(faiss):
    return faiss.METRIC_INNER_PRODUCT


def make_index(factory: str, dim: int, train_vectors: np.ndarray | None = None, seed: int = 0):
    """A FAISS index from a factory string, trained on (a sample of) ``train_vectors`` if needed."""
    faiss = _faiss()
    index = faiss.index_factory(dim, factory, _metric_ip(faiss))
    if not index.is_trained:
        if train_vectors is None or len(train_vectors) == 0:
            raise ValueError(f"factory {factory!r} needs training vectors")
        ivf = _ivf(faiss, index)
        if ivf is not None and len(train_vectors) < ivf.nlist:
            raise ValueError(f"factory {factory!r} has {ivf.nlist} lists but only {len(train_vectors)} vectors "
                             f"to train them; use 'Flat' or 'HNSW32', or IVF with at most "
                             f"{max(1, len(train_vectors) // 39)} lists")
        x = train_vectors
        if len(x) > TRAIN_SAMPLE:
            x = x[np.random.default_rng(seed).choice(len(x), TRAIN_SAMPLE, replace=False)]
        index.train(np.ascontiguousarray(x, dtype=np.float32))
    set_search_params(index)
    return index


def _ivf(faiss, index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def set_search_params(index, nprobe: int = 16, ef_search: int = 64) -> None:
    faiss = _faiss()
    ivf = _ivf(faiss, index)
    if ivf is not None:
        ivf.nprobe = min(nprobe, ivf.nlist)
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        hnsw.efSearch = ef_search


def to_gpu(index, gpu: bool):
    """index_cpu_to_all_gpus when faiss-gpu and a GPU are there; else the CPU index, with a note."""
    if not gpu:
        return index
    faiss = _faiss()
    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if n == 0 or not hasattr(faiss, "index_cpu_to_all_gpus"):
        print("index: --gpu asked, but faiss has no GPU support here (faiss-cpu, or no GPU visible); "
              "using the CPU index. Install faiss-gpu==1.15.1 on a GPU machine to use it.")
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError as e:  # e.g. an index type the GPU does not support (HNSW)
        print(f"index: could not move the index to the GPU ({e}); using the CPU index")
        return index


def to_cpu(index):
    faiss = _faiss()
    if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
        return faiss.index_gpu_to_cpu(index)
    return index


class IndexMismatchError(ValueError):
    pass


class ResponseIndex:
    def __init__(self, index, rows: list[dict], info: dict, encoder=None, folder: Path | None = None,
                 memory=None, memory_rows: np.ndarray | None = None, memory_convs: Sequence[str] = (),
                 memory_texts: Sequence[str] = (), cpu_index=None):
        self.index, self.rows, self.info, self.encoder, self.folder = index, rows, info, encoder, folder
        self.texts = [r["text"] for r in rows]
        self.memory = memory  # FAISS index of training contexts, or None (an index built before it)
        self.memory_rows = np.asarray(memory_rows if memory_rows is not None else [], dtype=np.int64)
        self.memory_convs = list(memory_convs)
        self.memory_texts = list(memory_texts)  # the contexts as text (lexical neighbours)
        self._cpu = cpu_index if cpu_index is not None else index  # reconstruct() runs on the CPU copy

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def load(cls, folder: str | Path, model_dir: str | Path | None = None, encoder=None, gpu: bool = False,
             check: bool = True, load_encoder: bool = True) -> "ResponseIndex":
        """Load an index folder and its encoder (``model_dir``, an ``encoder``, or by default the
        model folder recorded in index_info.json), checking it is the one the index was built with.
        ``load_encoder=False``: no model is loaded unless given (what needs only the stored texts)."""
        faiss = _faiss()
        folder = Path(folder)
        for name in (INDEX_FILE, RESPONSES_FILE, INFO_FILE):
            if not (folder / name).exists():
                raise FileNotFoundError(f"{folder / name} is missing: build the index with "
                                        f"`dialogbert index --model MODEL --shards SHARDS --out {folder}`")
        info = json.loads((folder / INFO_FILE).read_text("utf-8"))
        rows = _read_jsonl(folder / RESPONSES_FILE)
        index = faiss.read_index(str(folder / INDEX_FILE))
        memory, mem = None, []
        if "memory" in info:
            for name in (MEMORY_INDEX, MEMORY_FILE):
                if not (folder / name).exists():
                    raise FileNotFoundError(f"{folder / name} is missing (index_info.json records a context "
                                            f"memory): rebuild the index with `dialogbert index`")
            memory = faiss.read_index(str(folder / MEMORY_INDEX))
            mem = _read_jsonl(folder / MEMORY_FILE)
        if check:
            if index.d != info["dimension"] or index.ntotal != info["count"] or len(rows) != info["count"]:
                raise IndexMismatchError(
                    f"{folder}: index_info.json says {info['count']} vectors of dimension {info['dimension']}, "
                    f"but faiss.index holds {index.ntotal} of dimension {index.d} and responses.jsonl "
                    f"{len(rows)} rows: the folder is inconsistent; rebuild it with `dialogbert index ... --out {folder}`")
            if memory is not None and not (memory.ntotal == len(mem) == info["memory"] and memory.d == index.d):
                raise IndexMismatchError(
                    f"{folder}: index_info.json says {info['memory']} memory entries, but memory.index holds "
                    f"{memory.ntotal} (dimension {memory.d}) and memory.jsonl {len(mem)}: the folder is "
                    f"inconsistent; rebuild it with `dialogbert index ... --out {folder}`")
        if encoder is None and model_dir is None and load_encoder and info.get("model") and Path(info["model"]).is_dir():
            model_dir = info["model"]  # the encoder the index was built with
        if encoder is None and model_dir is not None:
            from retrieval.encoder import Encoder
            encoder = Encoder.load(model_dir)
        if encoder is not None and check:
            check_model(info, encoder, folder)
        for ix in (index, memory):
            if ix is not None:
                set_search_params(ix, info.get("nprobe", 16), info.get("ef_search", 64))
        ivf = _ivf(faiss, index)
        if ivf is not None:
            ivf.make_direct_map()  # reconstruct() of stored vectors (the ranker's neighbour feature)
        return cls(to_gpu(index, gpu), rows, info, encoder, folder, memory=to_gpu(memory, gpu) if memory else None,
                   memory_rows=[m["response"] for m in mem], memory_convs=[m["conv"] for m in mem],
                   memory_texts=[m.get("context", "") for m in mem], cpu_index=index)

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, max(1, len(self.rows)))
        stored = self.flat_vectors() if len(q) <= FLAT_MATMUL_QUERIES else None
        if stored is None:
            return self.index.search(q, k)
        import torch
        scores, ids = torch.topk(torch.from_numpy(stored) @ torch.from_numpy(q).T, k, dim=0)
        return scores.T.contiguous().numpy(), ids.T.contiguous().numpy()

    def flat_vectors(self) -> np.ndarray | None:
        """The vectors of an exact inner-product index on the CPU (Flat), as a view of faiss's own
        storage (no copy), else None. For a chat request's few queries one matrix product over them
        reads the vectors once, where faiss's search of the same index is slower (docs/benchmarks.md,
        "Serving"): the same scores to float rounding (1e-7), so only replies tied to that
        precision may come in another order."""
        import faiss
        ix = self.index
        if ix is not self._cpu or not isinstance(ix, faiss.IndexFlat) or ix.metric_type != faiss.METRIC_INNER_PRODUCT \
                or ix.ntotal == 0:
            return None
        return faiss.rev_swig_ptr(ix.get_xb(), ix.ntotal * ix.d).reshape(ix.ntotal, ix.d)

    def response_vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored vectors of response rows ``ids`` (PQ indexes give their approximation)."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if len(ids) == 0:
            return np.zeros((0, int(self.info["dimension"])), np.float32)
        return np.asarray(self._cpu.reconstruct_batch(ids), dtype=np.float32)

    def neighbours(self, contexts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """For each context vector, the k most similar training contexts of the memory:
        (similarities, memory entry ids), -1 where fewer exist. Entry j answers with response
        row ``memory_rows[j]`` and comes from conversation ``memory_convs[j]``."""
        if self.memory is None or self.memory.ntotal == 0:
            raise ValueError(f"{self.folder}: this index has no context memory; rebuild it with "
                             f"`dialogbert index --model MODEL --shards SHARDS --out {self.folder}`")
        q = np.ascontiguousarray(contexts, dtype=np.float32)
        return self.memory.search(q, min(k, self.memory.ntotal))

    def search(self, contexts: Sequence[Sequence[tuple[str, str]]], k: int = 5) -> list[list[tuple[float, dict]]]:
        """For each context (turns, oldest first) the k best stored responses: (score, row)."""
        if self.encoder is None:
            raise ValueError("this ResponseIndex has no encoder: load it with ResponseIndex.load(dir, model_dir)")
        D, I = self.search_vectors(self.encoder.encode_contexts(contexts), k)
        return [[(float(d), self.rows[j]) for d, j in zip(drow, irow) if j >= 0] for drow, irow in zip(D, I)]


def check_model(info: dict, encoder, folder: Path) -> None:
    fix = (f"rebuild the index with `dialogbert index --model {encoder.path} --shards SHARDS --out {folder}`, "
           f"or load it with the model it was built with ({info.get('model')})")
    if int(info["dimension"]) != int(encoder.dim):
        raise IndexMismatchError(f"{folder}: index vectors have dimension {info['dimension']} but the model "
                                 f"{encoder.path} produces {encoder.dim}: {fix}")
    if encoder.path is not None and info.get("model_sha256"):
        h = encoder.hash()
        if h != info["model_sha256"]:
            raise IndexMismatchError(f"{folder}: built with model sha256 {info['model_sha256'][:12]}..., but "
                                     f"{encoder.path} has sha256 {h[:12]}... (a different or retrained model): {fix}")


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg}); the index folder is damaged: rebuild it "
                                 f"with `dialogbert index`") from e
    return out


def _write_rows(path: Path, rows: list[dict], append: bool) -> None:
    """Write the response store at ``path`` (appending to what is there with ``append``)."""
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _at_precision(encoder, precision: str):
    """The encoder's ``at_precision`` block; fp32 asks nothing of it (any object with the encode methods)."""
    return contextlib.nullcontext() if precision == "fp32" else encoder.at_precision(precision)


def build_index(model: str | Path, shards: str | Path, out: str | Path, factory: str = "Flat", gpu: bool = False,
                add: bool = False, *, encoder=None, filt: ResponseFilter | None = None, batch_size: int = 64,
                memory: bool = True, split: str | None = "train", precision: str = "fp32") -> Path:
    """Encode the filtered training responses of ``shards`` (and, with ``memory``, their
    contexts) and write the index folder. With ``add=True`` append the new responses and
    contexts to an existing index (same model) without rebuilding. ``split=None`` indexes every
    conversation, the test split's too (a user's own bot: index_info.json then says
    ``"split": "all"``, and the index's recall on the test split is no held-out measure).
    ``precision="bf16"`` encodes under bfloat16 autocast (the encoder's own setting is restored)."""
    faiss = _faiss()
    out = Path(out)
    from retrieval.encoder import Encoder, model_hash
    if encoder is None:
        encoder = Encoder.load(model)
    t0 = time.time()
    pairs: list | None = [] if memory else None
    if add:
        existing = ResponseIndex.load(out, encoder=encoder)
        memory = existing.memory is not None
        pairs = [] if memory else None
        rows, dropped = collect_responses(shards, filt, seen=existing.texts, pairs=pairs, split=split)
        index, info = to_gpu(existing.index, gpu), existing.info
        start = len(existing.rows)
        text_id = {t: i for i, t in enumerate(existing.texts)}
    else:
        rows, dropped = collect_responses(shards, filt, pairs=pairs, split=split)
        start, info, text_id = 0, None, {}
    for i, r in enumerate(rows):
        r["id"] = start + i
        text_id[r["text"]] = r["id"]
    with _at_precision(encoder, precision):
        vecs = encoder.encode_responses([r["text"] for r in rows], batch_size=batch_size) if rows else \
            np.zeros((0, encoder.dim), np.float32)
    if not add:
        if not rows:
            raise ValueError(f"{shards}: no responses passed the filters ({dropped}); nothing to index")
        index = to_gpu(make_index(factory, encoder.dim, vecs), gpu)
    if len(vecs):
        index.add(np.ascontiguousarray(vecs, dtype=np.float32))
    mem_rows: list[dict] = []
    if memory:
        with _at_precision(encoder, precision):
            ctx_vecs = encoder.encode_contexts([c for c, _, _ in pairs], batch_size=batch_size) if pairs else \
                np.zeros((0, encoder.dim), np.float32)
        # the newest context turn as text, for the lexical features; never served, and left empty
        # where it holds unredacted personal data (the response filter's guard, docs/personal-data.md)
        pii = (filt or ResponseFilter()).checker()
        mem_rows = [{"response": text_id[text], "conv": conv, "context": "" if pii(t) else t}
                    for ctx, text, conv in pairs for t in [context_text(ctx, turns=MEMORY_TEXT_TURNS)]]
        mem_index = to_gpu(existing.memory, gpu) if add else to_gpu(make_index(factory, encoder.dim, ctx_vecs), gpu)
        if len(ctx_vecs):
            mem_index.add(np.ascontiguousarray(ctx_vecs, dtype=np.float32))
    out.mkdir(parents=True, exist_ok=True)
    # Everything is written under temporary names first, then renamed (index_info.json last): a
    # killed build leaves the previous folder as it was, or one that load() rejects by its counts.
    staged = [(INDEX_FILE, index, RESPONSES_FILE, rows)]
    if memory:
        staged.append((MEMORY_INDEX, mem_index, MEMORY_FILE, mem_rows))
    for index_name, ix, rows_name, new_rows in staged:
        faiss.write_index(to_cpu(ix), str(out / (index_name + ".tmp")))
        if add:
            shutil.copyfile(out / rows_name, out / (rows_name + ".tmp"))
        _write_rows(out / (rows_name + ".tmp"), new_rows, append=add)
    for index_name, _, rows_name, _ in staged:
        (out / (rows_name + ".tmp")).replace(out / rows_name)
        (out / (index_name + ".tmp")).replace(out / index_name)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    import dialogbert
    if info is None:
        info = {"model": str(Path(model).resolve()) if model is not None else None,
                "model_sha256": model_hash(encoder.path) if encoder.path else None,
                "dimension": int(encoder.dim), "factory": factory, "metric": "inner_product", "precision": precision,
                "normalized": True, "count": 0, "nprobe": 16, "ef_search": 64, "shards": [],
                "dropped": {}, "created": now, "build": uuid.uuid4().hex,  # what a fit for this build records
                "created_with": {"dialogbert": dialogbert.__version__, "faiss": faiss.__version__,
                                 "python": platform.python_version()}}
    info["count"] = int(start + len(rows))
    if memory:
        info["memory"] = int(info.get("memory", 0) + len(mem_rows))
    info["shards"] = list(info.get("shards", [])) + [str(shards)]
    info["dropped"] = {k: info.get("dropped", {}).get(k, 0) + v for k, v in dropped.items()}
    info["updated"] = now
    if split is None or info.get("split") == "all":
        info["split"] = "all"
    atomic_write_text(out / INFO_FILE, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    if not memory and not add:  # a rebuild without the memory: an older build's is no longer read
        for name in (MEMORY_INDEX, MEMORY_FILE):
            (out / name).unlink(missing_ok=True)
    print(f"index: {'added' if add else 'indexed'} {len(rows)} responses ({info['count']} in all, "
          f"{factory})" + (f" and {len(mem_rows)} contexts ({info['memory']} in the memory)" if memory else "")
          + f" in {time.time() - t0:.1f}s; left out: {dropped}")
    return out
