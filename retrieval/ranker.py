"""The ranker: one score from several views of (context, candidate), weights fitted on held-out data.

A dual encoder alone answers one question: which reply vector lies nearest the context vector?
A retrieval bot over real logs can ask more, and each feature here is one question:

* ``dual``      cosine of the context and candidate vectors (the fine-tuned dual encoder);
* ``lexical``   TF-IDF character 1-3-gram cosine of the newest turn and the candidate (the
                protocol's strongest lexical baseline, fitted on the stored replies and contexts);
* ``neighbour`` what was answered to conversations like this one: the k training contexts of the
                index's context memory nearest to this context, softmax-weighted by similarity
                (temperature ``temperature``), vote for the candidate by the cosine between it and
                their stored replies. A reply database built from many people's chats answers
                the same situation many times; this counts those answers as evidence (the
                neighbour idea of kNN-LM, Khandelwal et al. 2020, applied to response selection);
* ``lexical_neighbour`` the same vote with TF-IDF in place of the encoder: neighbours by the
                words of the newest turn, votes by the words of their replies (``lexical_temperature``;
                the memory's TF-IDF matrix lives in RAM, so up to LEXICAL_MEMORY_MAX entries);
* ``ngram``     cosine of the newest turn and the candidate under the bag-of-n-grams dual encoder
                (retrieval.ngram), trained by ``dialogbert index`` on the encoder's training pairs;
* ``use``       cosine of the newest turn and the candidate under the multilingual Universal
                Sentence Encoder's two towers (retrieval.use), fine-tuned by ``dialogbert index``
                on the same pairs: the one encoder here pretrained on more text than the corpus;
* ``rerank``    the cross-encoder re-ranker's next-turn log-odds (retrieval.rerank), computed for
                the ``rerank_top`` best candidates of the other features only.

score = sum of weight x feature / scale, where scale is the feature's spread on the fitting set,
so the weights are comparable. :func:`fit_ranker` chooses the weights (a conditional logit, the
softmax likelihood of the true reply among the candidates, or a grid search for R10@1 + MRR,
whichever does better held out, over several random halvings of the examples) and the temperatures on examples the
encoder did not train on (the fine-tuning validation carve-out, ``data.valid_fraction``), with
their own conversations left out of the memory; never on the test split. In an index of several
corpora each source gets an equal share of those examples (:func:`fit_for_index`), so the largest
does not choose the weights for all. A language of the newest context turn (what the user just
wrote: ``ko``, ``en``) with at least LANGUAGE_MIN_EXAMPLES fitting examples gets its own weights
when they beat the shared ones held out on that language's examples (features do not carry across
languages alike: the n-gram encoder learns Korean far better than English). The result is
``ranker.json`` in the index folder, which ``dialogbert eval`` reports and ``dialogbert serve`` uses.

    scorer = FeatureScorer(encoder, index, lexical=..., reranker=...)
    ranker = fit_ranker(scorer, examples)               # -> Ranker, saved with ranker.save(index_dir)
    HybridRetriever(scorer, ranker).search(contexts, k) # the chat service's retriever
"""
from __future__ import annotations

import itertools
import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from preprocess.schema import atomic_write_text
from retrieval.index import MEMORY_TEXT_TURNS as LEXICAL_TURNS  # the turns the memory keeps as text
from retrieval.index import OWN_ENCODER_DIRS, RANKER_FILE, USE_DIR

FEATURES = ("dual", "lexical", "neighbour", "lexical_neighbour", "ngram", "use", "rerank")
OWN_ENCODERS = ("ngram", "use")  # features scored by the ranker's own dual encoders (retrieval.towers)
NEIGHBOURS = ("neighbour", "lexical_neighbour")  # features with a temperature
WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
LANGUAGE_MIN_EXAMPLES = 150  # fitting examples a language needs before it may get its own weights
LOGIT_L2 = 1e-3  # the conditional logit's penalty on the weights of spread-scaled features
TEMPERATURES = (0.03, 0.1, 0.3, 1.0)
LEXICAL_FIT_MAX = 200_000  # texts the TF-IDF vocabulary is fitted on (a sample beyond)
LEXICAL_MEMORY_MAX = 2_000_000  # memory entries up to which the lexical neighbours are offered
EXCLUDE_SLACK = 32  # extra neighbours searched first when the example's own conversation is left out


def context_language(context) -> str:
    """"ko", "en" or "other": the language of a context's newest turn, what the user just wrote
    (preprocess.pipeline.detect_lang)."""
    from preprocess.pipeline import detect_lang
    return detect_lang([context[-1][1]]) if len(context) else "other"


@dataclass
class Ranker:
    weights: dict[str, float] = field(default_factory=lambda: {"dual": 1.0})
    scales: dict[str, float] = field(default_factory=dict)
    neighbours: int = 20
    temperature: float = 0.1
    lexical_temperature: float = 0.1
    rerank_top: int = 20
    reranker: str | None = None     # the re-ranker folder the weights were fitted with
    fitted_on: dict = field(default_factory=dict)
    # weights for contexts whose newest turn is in that language (context_language); others: ``weights``
    languages: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def active(self) -> list[str]:
        used = {f for ws in (self.weights, *self.languages.values()) for f, w in ws.items() if w}
        return [f for f in FEATURES if f in used]

    def row_weights(self, names: Sequence[str], languages: Sequence[str] | None, m: int) -> np.ndarray:
        """(m, len(names)) weights: row i's language's own weights, else the shared ones."""
        shared = [self.weights.get(f, 0.0) for f in names]
        if not self.languages or languages is None:
            return np.tile(np.asarray(shared, np.float64), (m, 1))
        table = {lang: [ws.get(f, 0.0) for f in names] for lang, ws in self.languages.items()}
        return np.asarray([table.get(lang, shared) for lang in languages], np.float64)

    @property
    def temperatures(self) -> dict[str, float]:
        return {"neighbour": self.temperature, "lexical_neighbour": self.lexical_temperature}

    def combine(self, feats: dict[str, np.ndarray], names: Sequence[str] | None = None,
                languages: Sequence[str] | None = None) -> np.ndarray:
        """sum of weight x feature / scale, row by row with the weights of each row's language
        (``languages``, one per context; None: the shared weights everywhere)."""
        names = [f for f in (self.active if names is None else names) if f in feats]
        if not names:
            raise ValueError(f"none of the ranker's features {self.active} was computed")
        m = len(next(iter(feats[f] for f in names)))
        W = self.row_weights(names, languages, m)
        out = None
        for k, f in enumerate(names):
            w = W[:, k:k + 1]
            # a weight of 0 adds nothing, even where the feature is undefined (outside the re-ranked top)
            part = np.where(w == 0, 0.0, w * feats[f] / self.scales.get(f, 1.0))
            out = part if out is None else out + part
        return out.astype(np.float32)

    def save(self, folder: str | Path) -> Path:
        p = Path(folder) / RANKER_FILE
        atomic_write_text(p, json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")
        return p

    @classmethod
    def load(cls, folder: str | Path, info: dict | None = None) -> "Ranker | None":
        """The folder's ranker.json, or None. With ``info`` (the index's index_info.json), a ranker
        fitted for another model or another build of the index is refused."""
        p = Path(folder) / RANKER_FILE
        if not p.exists():
            return None
        d = _read_json(p, fix="refit it with `dialogbert index`")
        fit = d.get("fitted_on", {})
        if info is not None and fit.get("model_sha256") and fit["model_sha256"] != info.get("model_sha256"):
            raise ValueError(f"{p} was fitted for model sha256 {fit['model_sha256'][:12]}..., but the index "
                             f"holds {str(info.get('model_sha256'))[:12]}...: refit it with `dialogbert index`")
        unknown = {f for ws in (d.get("weights", {}), *d.get("languages", {}).values()) for f in ws} - set(FEATURES)
        if unknown:
            raise ValueError(f"{p}: unknown features {sorted(unknown)}; known: {list(FEATURES)}")
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _softmax_votes(sims: np.ndarray, votes: np.ndarray, temperatures: Sequence[float]) -> dict[float, np.ndarray]:
    """sims (m, k) similarities of each row's neighbours (-inf where none), votes (m, n, k)
    candidate x neighbour-reply similarity -> {temperature: (m, n) softmax-weighted vote}."""
    out = {}
    finite = np.isfinite(sims)
    for t in temperatures:
        z = np.where(finite, sims / t, -np.inf)
        z = z - np.max(np.where(finite, z, -1e30), axis=1, keepdims=True)
        w = np.where(finite, np.exp(z), 0.0)
        w /= np.maximum(w.sum(1, keepdims=True), 1e-12)
        out[t] = np.einsum("mnk,mk->mn", votes, w)
    return out


def _keep_top(D: np.ndarray, J: np.ndarray, k: int, memory_rows: np.ndarray, memory_convs: Sequence[str],
              exclude_convs: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """The first k hits of each row (skipping row i's own conversation when excluding):
    (similarities with -inf padding, response rows)."""
    m = len(D)
    sims = np.full((m, k), -np.inf, np.float32)
    rows = np.zeros((m, k), np.int64)
    for i in range(m):
        keep = [(d, j) for d, j in zip(D[i], J[i]) if j >= 0 and
                (exclude_convs is None or memory_convs[j] != exclude_convs[i])][:k]
        for c, (d, j) in enumerate(keep):
            sims[i, c], rows[i, c] = d, memory_rows[j]
    return sims, rows


def _top_excluding(search, m: int, k: int, total: int, memory_rows: np.ndarray, memory_convs: Sequence[str],
                   exclude_convs: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """_keep_top over ``search(row ids, depth) -> (D, J)`` (hits, -1 padded). When excluding, a
    row whose own conversation filled its first k + EXCLUDE_SLACK hits (a long conversation
    holds many nearby contexts) is searched again 4x deeper, until it has k others or the
    memory runs out, so it is never left with fewer neighbours than the memory can give."""
    depth = min(total, k + (EXCLUDE_SLACK if exclude_convs is not None else 0))
    D, J = search(np.arange(m), depth)
    sims, rows = _keep_top(D, J, k, memory_rows, memory_convs, exclude_convs)
    if exclude_convs is None:
        return sims, rows
    todo = np.arange(m)
    while depth < total:
        # short of k, though the search gave all it was asked (more may lie deeper)
        short = ~np.isfinite(sims[todo, -1]) & (J[:, -1] >= 0)
        todo = todo[short]
        if not len(todo):
            break
        depth = min(total, depth * 4)
        D, J = search(todo, depth)
        sims[todo], rows[todo] = _keep_top(D, J, k, memory_rows, memory_convs, [exclude_convs[i] for i in todo])
    return sims, rows


def tfidf_rows(vec, candidates: Sequence[Sequence[str]], cand_rows=None, memory: "LexicalMemory | None" = None):
    """The (m * n, V) TF-IDF rows of the candidates, row-major: the memory's precomputed rows of the
    stored replies when the candidates are stored replies (``cand_rows``, their response rows,
    and ``memory`` shares ``vec``), otherwise each distinct text transformed once."""
    if cand_rows is not None and memory is not None and memory.vec is vec:
        return memory.replies[np.asarray(cand_rows, dtype=np.int64).ravel()]
    from retrieval.baselines import candidate_rows
    return candidate_rows(vec, candidates)


class LexicalMemory:
    """TF-IDF rows of the memory's contexts and of the stored replies, with the vectorizer of the
    ``lexical`` feature; in RAM (sparse), for corpora up to LEXICAL_MEMORY_MAX entries.
    ``matrices`` (contexts (V, N), replies (M, V)) when already computed (the cache)."""

    def __init__(self, vectorizer, index, matrices=None):
        self.vec, self.index = vectorizer, index
        if matrices is None:
            matrices = (vectorizer.transform(index.memory_texts).T.tocsr(),  # (V, N): Q @ contexts
                        vectorizer.transform(index.texts).tocsr())
        self.contexts, self.replies = matrices

    def search(self, context_texts: Sequence[str], k: int, exclude_convs=None, chunk: int | None = None):
        """The k memory contexts sharing most TF-IDF weight with each context: (sims, rows).
        Queries go in chunks whose dense (chunk, N) similarity block stays near 256 MB."""
        n = self.contexts.shape[1]
        chunk = chunk or max(1, min(256, 2 ** 25 // max(1, n)))
        Q = self.vec.transform(list(context_texts))

        def search(ids: np.ndarray, depth: int):
            D = np.zeros((len(ids), depth), np.float32)
            J = np.zeros((len(ids), depth), np.int64)
            for i in range(0, len(ids), chunk):
                S = (Q[ids[i:i + chunk]] @ self.contexts).toarray()
                top = np.argpartition(-S, depth - 1, axis=1)[:, :depth]
                srt = np.take_along_axis(S, top, 1).argsort(1)[:, ::-1]
                J[i:i + chunk] = np.take_along_axis(top, srt, 1)
                D[i:i + chunk] = np.take_along_axis(S, J[i:i + chunk], 1)
            J[D <= 0] = -1  # nothing in common is no neighbour
            return D, J
        return _top_excluding(search, len(context_texts), k, n, self.index.memory_rows, self.index.memory_convs,
                              exclude_convs)

    def votes(self, hits, candidates: Sequence[Sequence[str]], temperatures: Sequence[float],
              flat=None) -> dict[float, np.ndarray]:
        """Softmax-weighted TF-IDF similarity of each candidate to the replies of ``hits``
        (``search``'s result), per temperature. ``flat``: the candidates' TF-IDF rows, row-major
        (:func:`tfidf_rows`), when already computed."""
        sims, rows = hits
        m, n, k = len(candidates), len(candidates[0]), rows.shape[1]
        if flat is None:
            flat = tfidf_rows(self.vec, candidates)
        votes = np.zeros((m, n, k), np.float32)
        for i in range(m):
            votes[i] = (flat[i * n:(i + 1) * n] @ self.replies[rows[i]].T).toarray()
        return _softmax_votes(sims, votes, temperatures)


class LexicalCache:
    """The fitted TF-IDF of an index folder, in ``lexical/``: vocabulary.json and idf.npy (no pickle:
    the vectorizer is rebuilt from them), and the memory's sparse matrices (contexts.npz,
    replies.npz) when they were built. ``key.json`` holds a sha256 of the stored reply and
    context texts, the fitting cap and the scikit-learn version: a cache of other texts (a
    rebuild, an ``--add``) or of another scikit-learn is ignored and rewritten. Saving is skipped,
    with a note, when the folder is read-only; a damaged cache is refitted."""

    DIR = "lexical"

    def __init__(self, index):
        self.index = index
        self.folder = Path(index.folder) / self.DIR if getattr(index, "folder", None) is not None else None
        self._key = None

    def key(self) -> dict:
        if self._key is None:
            import sklearn

            from retrieval.index import texts_sha256
            self._key = {"texts_sha256": texts_sha256(self.index.texts, self.index.memory_texts),
                         "fit_max": LEXICAL_FIT_MAX, "sklearn": sklearn.__version__}
        return self._key

    def load(self, matrices: bool):
        """(TfidfScorer, (contexts, replies) or None) from the cache, or None when absent or stale."""
        if self.folder is None or not (self.folder / "key.json").exists():
            return None
        import scipy.sparse as sp

        from retrieval.baselines import TfidfScorer
        try:
            if json.loads((self.folder / "key.json").read_text("utf-8")) != self.key():
                return None
            vocab = json.loads((self.folder / "vocabulary.json").read_text("utf-8"))
            scorer = TfidfScorer(drop_space=True)
            scorer.vec.vocabulary_ = vocab
            scorer.vec.idf_ = np.load(self.folder / "idf.npy")
            mats = None
            if matrices and (self.folder / "contexts.npz").exists():
                mats = (sp.load_npz(self.folder / "contexts.npz").tocsr(), sp.load_npz(self.folder / "replies.npz").tocsr())
                if mats[0].shape[1] != len(self.index.memory_texts) or mats[1].shape[0] != len(self.index.texts):
                    return None
        except (OSError, ValueError, KeyError) as e:  # damaged: refit (and rewrite)
            print(f"ranker: {self.folder} is damaged ({e}); refitting the TF-IDF")
            return None
        return scorer, mats

    def save(self, scorer, mem: "LexicalMemory | None") -> None:
        if self.folder is None:
            return
        import scipy.sparse as sp
        try:
            self.folder.mkdir(exist_ok=True)
            (self.folder / "key.json").unlink(missing_ok=True)  # invalid until everything is written
            vocab = {g: int(i) for g, i in scorer.vec.vocabulary_.items()}
            atomic_write_text(self.folder / "vocabulary.json", json.dumps(vocab, ensure_ascii=False))
            np.save(self.folder / "idf.npy", np.asarray(scorer.vec.idf_))
            if mem is not None:
                sp.save_npz(self.folder / "contexts.npz", mem.contexts)
                sp.save_npz(self.folder / "replies.npz", mem.replies)
            else:
                for name in ("contexts.npz", "replies.npz"):
                    (self.folder / name).unlink(missing_ok=True)
            atomic_write_text(self.folder / "key.json", json.dumps(self.key(), indent=1) + "\n")
        except OSError as e:
            print(f"ranker: could not cache the TF-IDF in {self.folder} ({e}); it is refitted at every load")


def own_encoders(folder, texts: Sequence[str], ngram: bool = True, use: bool = True) -> dict:
    """{"ngram": NgramEncoder | None, "use": UseEncoder | None}: the ranker's own encoders stored in
    an index folder (those asked for), each given the vectors of the stored replies ``texts``."""
    out = {"ngram": None, "use": None}
    if folder is None:
        return out
    if ngram:
        from retrieval.morphemes import MorphemesUnavailable
        from retrieval.ngram import NgramEncoder
        try:
            out["ngram"] = NgramEncoder.load(folder)
        except MorphemesUnavailable as e:
            raise MorphemesUnavailable(f"{folder}: the ranker's n-gram encoder (ngram/) was trained with Korean "
                                       f"morphemes: {e}") from e
    if use and (Path(folder) / USE_DIR).is_dir():
        from retrieval.use import UseEncoder, UseUnavailable
        try:
            out["use"] = UseEncoder.load(folder)
        except UseUnavailable as e:
            raise UseUnavailable(f"{folder}: the ranker's USE towers (use/) cannot be loaded: {e}; or refit "
                                 f"without them (`dialogbert index --no-use`)") from e
    for enc in out.values():
        if enc is not None:
            enc.attach_replies(folder, texts)
    return out


class FeatureScorer:
    """Computes the features for contexts against candidate texts. ``index`` (a ResponseIndex
    with a context memory) enables ``neighbour``; ``lexical`` (a fitted baselines.TfidfScorer)
    ``lexical``; ``lexical_memory`` (a LexicalMemory) ``lexical_neighbour``; ``ngram`` (a
    ngram.NgramEncoder) ``ngram``; ``use`` (a use.UseEncoder) ``use``; ``reranker`` (a
    rerank.CrossEncoder) ``rerank``."""

    def __init__(self, encoder, index=None, lexical=None, reranker=None, lexical_memory=None, batch_size: int = 64,
                 ngram=None, use=None):
        self.encoder, self.index, self.lexical, self.reranker = encoder, index, lexical, reranker
        self.lexical_memory, self.batch_size, self.ngram, self.use = lexical_memory, batch_size, ngram, use

    @property
    def available(self) -> list[str]:
        have = {"dual": True, "lexical": self.lexical is not None,
                "neighbour": self.index is not None and getattr(self.index, "memory", None) is not None,
                "lexical_neighbour": self.lexical_memory is not None, "ngram": self.ngram is not None,
                "use": self.use is not None, "rerank": self.reranker is not None}
        return [f for f in FEATURES if have[f]]

    @classmethod
    def for_index(cls, index, reranker=None, lexical: bool = True, lexical_memory: bool = True,
                  ngram: bool = True, use: bool = True) -> "FeatureScorer":
        """The features an index folder supports: its encoder, its memory, and (``lexical``)
        TF-IDF fitted on its stored responses and memory contexts (a fixed sample of at most
        LEXICAL_FIT_MAX texts), with the memory's lexical view when the memory has its texts and
        is not too big. The fitted TF-IDF lives in the index folder's ``lexical/`` (see
        :class:`LexicalCache`): a later load of the same index reads it instead of refitting.
        ``ngram``, ``use``: the ranker's own encoders in the folder's ``ngram/`` and ``use/``,
        when there are."""
        scorer = mem = None
        own = own_encoders(getattr(index, "folder", None), index.texts, ngram=ngram, use=use)
        if lexical or lexical_memory:
            from retrieval.baselines import TfidfScorer
            n = len(index.memory_texts)
            want_mem = bool(lexical_memory and index.memory is not None and n and any(index.memory_texts[:1000]))
            if want_mem and n > LEXICAL_MEMORY_MAX:
                print(f"ranker: {n} memory entries > {LEXICAL_MEMORY_MAX}: no lexical neighbours")
                want_mem = False
            cache = LexicalCache(index)
            got = cache.load(matrices=want_mem)
            if got is not None:
                scorer, matrices = got
            else:
                texts = index.texts + index.memory_texts  # the words of replies and of contexts
                if len(texts) > LEXICAL_FIT_MAX:
                    pick = np.random.default_rng(0).choice(len(texts), LEXICAL_FIT_MAX, replace=False)
                    texts = [texts[i] for i in sorted(pick)]
                scorer, matrices = TfidfScorer(drop_space=True).fit(texts), None
            if want_mem:
                mem = LexicalMemory(scorer.vec, index, matrices)
            if got is None or (want_mem and matrices is None):
                cache.save(scorer, mem)
        return cls(index.encoder, index, scorer if lexical else None, reranker, mem, **own)

    @classmethod
    def for_ranker(cls, index, ranker: "Ranker", reranker=None) -> "FeatureScorer":
        """:meth:`for_index` with only what ``ranker`` weighs: no TF-IDF, lexical memory, n-gram
        encoder or USE towers loaded for a feature it leaves out (the chat service and ``eval``)."""
        return cls.for_index(index, reranker, lexical="lexical" in ranker.active,
                             lexical_memory="lexical_neighbour" in ranker.active,
                             ngram="ngram" in ranker.active, use="use" in ranker.active)

    def neighbour_hits(self, contexts, C: np.ndarray, names: Sequence[str], k: int,
                       exclude_convs: Sequence[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """For each neighbour feature in ``names``: the k nearest memory contexts of each context,
        as (similarities with -inf padding, response rows). With ``exclude_convs``, entries of
        example i's own conversation are skipped (fitting)."""
        hits = {}
        if "neighbour" in names:
            hits["neighbour"] = _top_excluding(lambda ids, depth: self.index.neighbours(C[ids], depth), len(C), k,
                                               len(self.index.memory_rows), self.index.memory_rows,
                                               self.index.memory_convs, exclude_convs)
        if "lexical_neighbour" in names:
            from retrieval.baselines import context_text
            texts = [context_text(c, LEXICAL_TURNS) for c in contexts]
            hits["lexical_neighbour"] = self.lexical_memory.search(texts, k, exclude_convs)
        return hits

    def features(self, contexts, candidates: Sequence[Sequence[str]], names: Sequence[str] | None = None,
                 neighbours: int = 20, temperatures: Sequence[float] | dict = (0.1,),
                 exclude_convs: Sequence[str] | None = None, cand_vecs: np.ndarray | None = None,
                 C: np.ndarray | None = None, hits: dict | None = None, cand_rows=None) -> dict:
        """name -> (m, n) float array; a neighbour feature -> {temperature: array} when given
        several temperatures (``temperatures``: one tuple for both kinds, or a dict by feature).
        ``C``, ``cand_vecs`` and ``hits`` (neighbour_hits) may be passed in when already known;
        ``cand_rows`` (m, n): the candidates' rows in the index's store, when they are stored
        replies (the chat service), so their TF-IDF rows are read, not recomputed."""
        names = [f for f in (names or self.available) if f != "rerank"]
        enc, bs = self.encoder, self.batch_size
        temps = temperatures if isinstance(temperatures, dict) else {f: tuple(temperatures) for f in NEIGHBOURS}
        if C is None:
            C = enc.encode_contexts(contexts, batch_size=bs)
        if cand_vecs is None:
            from retrieval.examples import distinct
            uniq, idx = distinct(candidates)
            cand_vecs = enc.encode_responses(uniq, batch_size=bs)[idx]
        out: dict = {"dual": np.einsum("md,mnd->mn", C, cand_vecs)}
        rows_of: dict = {}  # id(vectorizer) -> the candidates' TF-IDF rows, computed once

        def cand_tfidf(vec):
            if id(vec) not in rows_of:
                rows_of[id(vec)] = tfidf_rows(vec, candidates, cand_rows, self.lexical_memory)
            return rows_of[id(vec)]
        if "lexical" in names:
            out["lexical"] = self.lexical.score([c[-LEXICAL_TURNS:] for c in contexts], candidates,
                                                rows=cand_tfidf(self.lexical.vec))
        for f in OWN_ENCODERS:
            if f in names:
                out[f] = getattr(self, f).score(contexts, candidates, rows=cand_rows)
        if hits is None:
            hits = self.neighbour_hits(contexts, C, names, neighbours, exclude_convs)
        for f, (sims, rows) in hits.items():
            if f == "neighbour":
                R = self.index.response_vectors(rows.ravel()).reshape(len(C), rows.shape[1], -1)
                votes = _softmax_votes(sims, np.einsum("mnd,mkd->mnk", cand_vecs, R), temps[f])
            else:
                votes = self.lexical_memory.votes((sims, rows), candidates, temps[f],
                                                  flat=cand_tfidf(self.lexical_memory.vec))
            out[f] = votes if len(temps[f]) > 1 else votes[temps[f][0]]
        return out

    def rerank_top(self, contexts, candidates: Sequence[Sequence[str]], first: np.ndarray, top: int) -> np.ndarray:
        """The re-ranker's scores for each row's ``top`` best candidates by ``first``; NaN elsewhere."""
        m, n = first.shape
        top = min(top, n)
        best = np.argsort(-first, axis=1, kind="stable")[:, :top]
        flat_ctx = [contexts[i] for i in range(m) for _ in range(top)]
        flat = [candidates[i][j] for i in range(m) for j in best[i]]
        s = self.reranker.score_pairs(flat_ctx, flat, show_progress=len(flat) >= 20000).reshape(m, top)
        out = np.full((m, n), np.nan, np.float32)
        np.put_along_axis(out, best, s, axis=1)
        return out

    def score(self, ranker: Ranker, contexts, candidates: Sequence[Sequence[str]], **kw) -> np.ndarray:
        """The ranker's final (m, n) scores. Candidates outside each row's ``rerank_top`` (when the
        re-ranker is used) rank below those inside, in first-stage order."""
        feats = self.features(contexts, candidates, names=ranker.active, neighbours=ranker.neighbours,
                              temperatures={f: (t,) for f, t in ranker.temperatures.items()}, **kw)
        langs = [context_language(c) for c in contexts] if ranker.languages else None
        first = ranker.combine(feats, [f for f in ranker.active if f != "rerank"], langs)
        if "rerank" not in ranker.active:
            return first
        if self.reranker is None:
            raise ValueError(f"the ranker gives the re-ranker a weight but none is "
                             f"loaded; pass --reranker {ranker.reranker or 'DIR'}")
        feats["rerank"] = self.rerank_top(contexts, candidates, first, ranker.rerank_top)
        full = ranker.combine(feats, languages=langs)
        inside = ~np.isnan(full)
        # outside the re-ranked top: below every re-ranked candidate, in first-stage order
        low = np.nanmin(np.where(inside, full, np.nan), axis=1, keepdims=True) - 1.0
        return np.where(inside, full, low - (first.max(1, keepdims=True) - first) - 1e-3)


class RankerScorer:
    """The protocol's scorer interface (``score(contexts, candidates)``) over a fitted ranker."""

    def __init__(self, features: FeatureScorer, ranker: Ranker, name: str = "ranker"):
        self.features, self.ranker, self.name = features, ranker, name

    def score(self, contexts, candidates) -> np.ndarray:
        return self.features.score(self.ranker, contexts, candidates)


def _objective(scores: np.ndarray) -> float:
    from retrieval.metrics import ranks
    r = ranks(scores)
    return float(np.mean(r <= 1) + np.mean(1.0 / r))


def _logit_weights(z: dict[str, np.ndarray], names: Sequence[str], l2: float = LOGIT_L2) -> dict[str, float]:
    """Conditional-logit weights (McFadden 1974; the listwise softmax loss of learning to rank): the
    L2-penalised likelihood of the true candidate (column 0) under a softmax over each row's
    candidates, ``z`` the features divided by their spread. Fitted by L-BFGS."""
    import torch
    X = torch.tensor(np.nan_to_num(np.stack([z[f] for f in names], -1)), dtype=torch.float64)
    y = torch.zeros(X.shape[0], dtype=torch.long)
    w = torch.zeros(len(names), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(X @ w, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return dict(zip(names, w.detach().numpy().tolist()))


METHODS = ("auto", "logit", "grid")


def _spread(x: np.ndarray) -> float:
    s = float(np.std(x))
    return s if s > 1e-9 else 1.0


def _at(feats: dict, f: str, t_of: dict, rows: np.ndarray | None = None) -> np.ndarray:
    """Feature ``f`` (a neighbour feature at its temperature in ``t_of``), on ``rows`` when given."""
    x = feats[f][t_of[f]] if f in NEIGHBOURS else feats[f]
    return x if rows is None else x[rows]


GRID_CHUNK = 1024  # weight combinations scored at once by the grid search
CV_HALVINGS = 5    # random halvings of the fitting examples on which "auto" compares the methods


def _grid_best(z: dict, others: Sequence[str]) -> tuple[float, tuple[float, ...]]:
    """(R10@1 + MRR, weights) of the best WEIGHT_GRID combination for ``others`` (dual fixed at
    1; the first of equals in itertools.product order). All combinations are scored at once:
    each wrong candidate's lead over the true one is linear in the weights, so a matrix product
    gives it for a chunk of combinations, and the rank is 1 + the leads >= 0 (ties against the
    system, as metrics.ranks)."""
    def lead(x):  # (n - 1, m): wrong candidate j of row i at [j, i]
        x = np.asarray(x, np.float64)
        return (x[:, 1:] - x[:, :1]).T.astype(np.float32).reshape(-1)
    m, n1 = z["dual"].shape[0], z["dual"].shape[1] - 1
    base = lead(z["dual"])
    X = np.stack([lead(z[f]) for f in others], 1) if others else np.zeros((len(base), 0), np.float32)
    combos = np.array(list(itertools.product(WEIGHT_GRID, repeat=len(others))),
                      np.float32).reshape(len(WEIGHT_GRID) ** len(others), len(others))
    inverse = 1.0 / np.arange(1, n1 + 2)
    best = None
    for i in range(0, len(combos), GRID_CHUNK):
        W = combos[i:i + GRID_CHUNK]
        ahead = (X @ W.T + base[:, None] >= 0).reshape(n1, m, len(W))  # wrong candidates at or above the true one
        r = ahead.sum(0)  # rank - 1, (m, combinations)
        obj = (r == 0).mean(0) + inverse[r].mean(0)
        j = int(np.argmax(obj))
        if best is None or obj[j] > best[0] + 1e-9:
            best = (float(obj[j]), tuple(float(w) for w in W[j]))
    return best


def _search(feats: dict, names: Sequence[str], method: str, rows: np.ndarray | None = None):
    """The best (objective, temperatures, weights, scales) on ``rows`` (all when None) by
    ``method``: "logit" or "grid" (see :func:`fit_ranker`)."""
    best = None
    grids = [TEMPERATURES if f in names else (0.1,) for f in NEIGHBOURS]
    others = [f for f in names if f != "dual"]
    for tt in itertools.product(*grids):
        t_of = dict(zip(NEIGHBOURS, tt))
        fx = {f: _at(feats, f, t_of, rows) for f in names}
        scales = {f: _spread(v) for f, v in fx.items()}
        z = {f: fx[f] / scales[f] for f in names}
        if method == "logit":
            ws = _logit_weights(z, names)
            obj = _objective(sum(ws[f] * z[f] for f in names))
        else:  # dual fixed at 1, the others on the grid
            obj, combo = _grid_best(z, others)
            ws = {"dual": 1.0, **dict(zip(others, combo))}
        if best is None or obj > best[0] + 1e-9:
            best = (obj, t_of, ws, scales)
    return best


def _held_out(choice, feats: dict, names: Sequence[str], rows: np.ndarray) -> float:
    """R10@1 + MRR on ``rows`` of the weights and temperatures ``choice`` (from :func:`_search`)."""
    _, t_of, ws, scales = choice
    return _objective(sum(ws.get(f, 0.0) * _at(feats, f, t_of, rows) / scales[f] for f in names))


def contributions(feats: dict, ranker: "Ranker", t_of: dict, languages: Sequence[str]) -> dict[str, float]:
    """R10@1 on the fitting examples of the dual encoder alone, of the fitted ranker, and of the
    fitted ranker without each other feature (its weight set to 0 in every language, the others
    kept): what each feature adds beside the dialog model (in-sample: the weights were fitted on
    these examples)."""
    from retrieval.metrics import ranks
    r10 = lambda scores: round(float(np.mean(ranks(scores) <= 1)), 4)
    names = ranker.active
    x = {f: _at(feats, f, t_of) for f in names}
    full = ranker.combine(x, names, languages)
    out = {"dual alone": r10(feats["dual"]), "ranker": r10(full)}
    out.update({f"without {f}": r10(ranker.combine(x, [g for g in names if g != f], languages))
                for f in names if f != "dual"})
    return out


def _halvings(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held-out rows) of CV_HALVINGS seeded random halvings of n rows, both ways round."""
    folds = []
    for h in range(CV_HALVINGS):
        perm = np.random.default_rng(h).permutation(n)
        a, b = perm[: n // 2], perm[n // 2:]
        folds += [(a, b), (b, a)]
    return folds


def _fit_languages(feats: dict, names: Sequence[str], t_of: dict, scales: dict, shared: dict[str, float],
                   languages: np.ndarray) -> tuple[dict[str, dict[str, float]], dict]:
    """Own conditional-logit weights for each language with >= LANGUAGE_MIN_EXAMPLES examples, kept
    when, fitted on one half of that language's examples, they beat the shared weights on the
    other half (mean over CV_HALVINGS halvings; the shared weights saw both halves, so the test
    favours them). Temperatures and scales stay the shared ones. Returns (weights by language,
    a report of the comparison)."""
    own, report = {}, {}
    for lang, count in sorted(Counter(languages.tolist()).items()):
        if count < LANGUAGE_MIN_EXAMPLES or count == len(languages):  # one language: the shared fit is its own
            continue
        rows = np.flatnonzero(languages == lang)
        z = {f: _at(feats, f, t_of, rows) / scales[f] for f in names}
        score = lambda ws, r: _objective(sum(ws.get(f, 0.0) * z[f][r] for f in names))
        own_cv, shared_cv = [], []
        for a, b in _halvings(len(rows)):
            own_cv.append(score(_logit_weights({f: z[f][a] for f in names}, names), b))
            shared_cv.append(score(shared, b))
        kept = float(np.mean(own_cv)) > float(np.mean(shared_cv))
        report[lang] = {"examples": int(count), "held_out_own": round(float(np.mean(own_cv)), 4),
                        "held_out_shared": round(float(np.mean(shared_cv)), 4), "own_weights": kept}
        if kept:
            ws = {f: round(w, 4) for f, w in _logit_weights(z, names).items()}
            own[lang] = {f: w for f, w in ws.items() if w}
    return own, report


def fit_ranker(scorer: FeatureScorer, examples, exclude_own: bool = True, neighbours: int = 20,
               rerank_top: int = 20, n: int = 10, seed: int = 1, note: str = "", method: str = "auto") -> Ranker:
    """Weights (and the neighbour temperatures) on ``examples`` (never the test split), each
    example's own conversation left out of the memory. ``method``:

    * "logit": the weights of a conditional logit for each pair of temperatures, the pair with
      the best R10@1 + MRR kept (16 L-BFGS fits);
    * "grid": WEIGHT_GRID searched for the best R10@1 + MRR directly (dual fixed at 1; 7^k
      weight combinations for k features besides dual, per temperature pair);
    * "auto" (the default): both fitted on each half of the examples and scored on the other,
      over CV_HALVINGS random halvings (fixed seeds); the one with the better mean held-out
      R10@1 + MRR is refitted on all of them. Neither wins everywhere: on the ChatbotData
      carve-out the logit does, on XPersona-ko's the grid. One halving was too few: with the
      4-head n-gram encoder, XPersona-ko's first halving scored the two 1.167 (logit) and 1.165
      (grid), where six halvings give 1.169 and 1.191."""
    if method not in METHODS:
        raise ValueError(f"unknown ranker fitting method {method!r}: one of {', '.join(METHODS)}")
    from retrieval.examples import draw_candidates
    names = scorer.available
    cands = draw_candidates([e.response for e in examples], n=n, seed=seed).texts
    contexts = [e.context for e in examples]
    feats = scorer.features(contexts, cands, names=names, neighbours=neighbours, temperatures=TEMPERATURES,
                            exclude_convs=[e.conv_id for e in examples] if exclude_own else None)
    if "rerank" in names:
        feats["rerank"] = scorer.reranker.score(contexts, cands, show_progress=len(examples) * n >= 20000)
    cv = {}
    if method == "auto":
        folds = _halvings(len(examples))
        for m in ("logit", "grid"):
            cv[m] = round(sum(_held_out(_search(feats, names, m, fit), feats, names, held)
                              for fit, held in folds) / len(folds), 4)
        method = max(cv, key=lambda m: (cv[m], m == "logit"))  # a tie goes to the logit
    obj, t_of, ws, scales = _search(feats, names, method)
    weights = {f: round(w, 4) for f, w in ws.items() if round(w, 4)}
    langs = np.asarray([context_language(c) for c in contexts])
    by_language, lang_report = _fit_languages(feats, names, t_of, scales, weights, langs)
    dual_only = _objective(feats["dual"])
    info = {"examples": len(examples), "candidates": n, "objective": "R10@1 + MRR", "method": method,
            "dual_only": round(dual_only, 4), "fitted": round(obj, 4), "note": note,
            "sources": dict(sorted(Counter(e.source for e in examples).items()))}
    if cv:
        info["cross_validated"] = cv
    if lang_report:
        info["languages"] = lang_report
    used = set(weights) | {f for ws in by_language.values() for f in ws}
    ranker = Ranker(weights=weights, scales={f: round(scales[f], 6) for f in names if f in used}, neighbours=neighbours,
                    temperature=t_of["neighbour"], lexical_temperature=t_of["lexical_neighbour"], rerank_top=rerank_top,
                    reranker=_resolved(getattr(scorer.reranker, "path", None)), fitted_on=info, languages=by_language)
    info["contributions"] = contributions(feats, ranker, t_of, langs.tolist())
    return ranker


def _read_json(path: Path, fix: str = "") -> dict:
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg})" + (f"; {fix}" if fix else "")) from e


def carve_out(model_dir: str | Path | None) -> tuple[float, list[str] | None] | None:
    """(data.valid_fraction, data.sources) a model folder was fine-tuned with (its finetune.json),
    or None when it has no finetune.json (not fine-tuned here)."""
    ft = Path(model_dir or "") / "finetune.json"
    if not model_dir or not ft.exists():
        return None
    cfg = _read_json(ft).get("config", {}).get("data", {})
    return float(cfg.get("valid_fraction") or 0.0), cfg.get("sources") or None


def _resolved(path) -> str | None:
    return str(Path(path).resolve()) if path else None


def fit_for_index(index_dir: str | Path, shards: str | Path, reranker_dir: str | Path | None = None,
                  fraction: float | None = None, max_examples: int = 1000, index=None, ngram: bool = True,
                  use: bool = True, use_settings=None, ngram_settings=None) -> Ranker:
    """Fit the ranker of an index folder and write its ranker.json.

    The fitting examples are the validation carve-out the encoder was fine-tuned without (its
    finetune.json ``data.valid_fraction``, restricted to its ``data.sources``), ``max_examples``
    of them, each source an equal share, so a small corpus (a user's own chats beside a public
    one) is not outvoted by a large one. Measured on the demo's mix (test split, R10@1): with
    shares in proportion (62% chit-chat) ChatbotData 0.657, XPersona-ko 0.397, chitchat 0.521;
    with equal shares 0.676, 0.395, 0.505: the same on average, traded between the corpora. An encoder
    fine-tuned on everything has seen them: the weights are then fitted on a 10% sample of the
    training conversations anyway, and ranker.json says so (its dual score is optimistic there,
    so the other features get too little weight); fine-tune with ``data.valid_fraction=0.1``.
    With ``ngram``, the n-gram encoder (retrieval.ngram) is first trained on the training pairs
    less that carve-out and saved in ``index_dir/ngram/`` (``ngram_settings``: a ngram.NgramSettings),
    and with ``use`` the USE towers
    (retrieval.use, when their package is installed; ``use_settings``: a use.UseSettings) in
    ``index_dir/use/``; without, an old one there is removed."""
    from retrieval.examples import validation_examples
    from retrieval.index import ResponseIndex
    if index is None:
        index = ResponseIndex.load(index_dir)
    if index.encoder is None:
        raise ValueError(f"{index_dir}: no encoder found for this index; pass the model folder")
    sources, note = None, ""
    carve = carve_out(index.encoder.path)
    if fraction is None and carve is not None:
        fraction, sources = carve
        if not fraction:
            note = ("the encoder was fine-tuned on these conversations (no data.valid_fraction): its dual "
                    "score is optimistic here and the other features are under-weighted")
            print(f"ranker: {note}")
    fraction = fraction or 0.1  # an encoder that was not fine-tuned here has seen none of them
    examples = validation_examples(shards, fraction, max_examples, sources=sources, by_source=True)
    for d in OWN_ENCODER_DIRS:  # stale: another fit, or not wanted
        shutil.rmtree(Path(index_dir) / d, ignore_errors=True)
    if len({e.response for e in examples}) < 10 or len(examples) < 50:
        print(f"ranker: only {len(examples)} validation examples: ranking by the dual encoder alone")
        ranker = Ranker(fitted_on={"examples": len(examples), "note": "too few validation examples"})
    else:
        reranker = None
        if reranker_dir:
            from retrieval.rerank import CrossEncoder
            reranker = CrossEncoder.load(reranker_dir)
            r_frac = (carve_out(reranker_dir) or (0.0, None))[0]
            if r_frac != fraction:
                warn = (f"the re-ranker {reranker_dir} was fine-tuned with data.valid_fraction={r_frac}, the "
                        f"ranker is fitted on the {fraction} carve-out: its score is optimistic there and "
                        f"over-weighted; fine-tune it with data.valid_fraction={fraction}")
                print(f"ranker: {warn}")
                note = f"{note}; {warn}" if note else warn
        scorer = FeatureScorer.for_index(index, reranker, ngram=False, use=False)
        # trained (and saved) now; what is in memory equals what a later load reads
        if ngram:
            from retrieval.ngram import train_for_index
            scorer.ngram = train_for_index(index_dir, shards, fraction, sources, ngram_settings)
        if use:
            from retrieval.use import train_for_index
            scorer.use = train_for_index(index_dir, shards, fraction, sources, use_settings)
        ranker = fit_ranker(scorer, examples, note=f"validation carve-out {fraction} of {shards}" + (f"; {note}" if note else ""))
        for f in OWN_ENCODERS:
            if getattr(scorer, f) is not None and f in ranker.active:
                getattr(scorer, f).attach_replies(index_dir, index.texts)  # the chat service reads them
        cv = ranker.fitted_on.get("cross_validated")
        print(f"ranker: {ranker.fitted_on['method']} weights {ranker.weights}"
              + "".join(f", {lang}: {ws}" for lang, ws in ranker.languages.items())
              + f", temperatures {ranker.temperatures} "
              f"(R10@1 + MRR on {len(examples)} validation examples: dual alone "
              f"{ranker.fitted_on['dual_only']:.3f}, ranked {ranker.fitted_on['fitted']:.3f}"
              + (f"; held out, mean of {CV_HALVINGS} halvings: {', '.join(f'{k} {v:.3f}' for k, v in cv.items())})"
                 if cv else ")"))
        print("ranker: R10@1 on them: " + ", ".join(f"{k} {v:.3f}" for k, v in ranker.fitted_on["contributions"].items()))
    ranker.fitted_on.update({"model_sha256": index.info.get("model_sha256"), "count": index.info.get("count")})
    ranker.save(index_dir)
    return ranker


class HybridRetriever:
    """The chat service's retriever: candidates from the response index (nearest reply vectors)
    and from the context memory (replies of the nearest training contexts), ranked by the ranker.
    ``search(contexts, k)`` answers like ResponseIndex.search: [[(score, row), ...], ...]."""

    def __init__(self, scorer: FeatureScorer, ranker: Ranker, pool: int = 50):
        self.scorer, self.ranker, self.pool = scorer, ranker, pool
        self.index = scorer.index

    @classmethod
    def load(cls, index_dir: str | Path, model_dir: str | Path | None = None,
             reranker_dir: str | Path | None = None) -> "HybridRetriever":
        from retrieval.index import ResponseIndex
        index = ResponseIndex.load(index_dir, model_dir)
        if index.encoder is None:
            raise ValueError(f"{index_dir}: no encoder found for this index; pass MODEL_DIR "
                             f"(`dialogbert serve --model ENCODER_DIR`)")
        ranker = Ranker.load(index_dir, index.info) or Ranker()
        reranker = None
        if "rerank" in ranker.active:
            from retrieval.rerank import CrossEncoder
            rr = reranker_dir or ranker.reranker
            if not rr or not Path(rr).is_dir():
                raise FileNotFoundError(f"{index_dir}/{RANKER_FILE} weighs the re-ranker {rr!r}, which is not "
                                        f"there; pass --reranker DIR, or refit with `dialogbert index`")
            reranker = CrossEncoder.load(rr)
        if set(NEIGHBOURS) & set(ranker.active) and index.memory is None:
            raise ValueError(f"{index_dir}: ranker.json uses the context memory, which this index lacks; "
                             f"rebuild it with `dialogbert index`")
        scorer = FeatureScorer.for_ranker(index, ranker, reranker)
        missing = set(ranker.active) - set(scorer.available)
        if missing:
            raise ValueError(f"{index_dir}: ranker.json weighs {sorted(missing)}, which this index cannot "
                             f"compute; rebuild it with `dialogbert index`")
        return cls(scorer, ranker)

    def search(self, contexts, k: int = 5) -> list[list[tuple[float, dict]]]:
        idx, r = self.index, self.ranker
        C = self.scorer.encoder.encode_contexts(contexts)
        _, I = idx.search_vectors(C, self.pool)
        # the nearest memory contexts, searched once: their replies join the candidates and vote
        hits = self.scorer.neighbour_hits(contexts, C, r.active, r.neighbours)
        out = []
        for i, ctx in enumerate(contexts):
            nb = [int(row) for sims, rows in hits.values() for row, d in zip(rows[i], sims[i]) if np.isfinite(d)]
            ids = list(dict.fromkeys([int(j) for j in I[i] if j >= 0] + nb))
            if not ids:
                out.append([])
                continue
            s = self.scorer.score(r, [ctx], [[idx.texts[j] for j in ids]], C=C[i:i + 1],
                                  cand_vecs=idx.response_vectors(ids)[None], cand_rows=[ids],
                                  hits={f: (sims[i:i + 1], rows[i:i + 1]) for f, (sims, rows) in hits.items()})[0]
            order = np.argsort(-s, kind="stable")[:k]
            out.append([(float(s[j]), idx.rows[ids[j]]) for j in order])
        return out
