"""Feature computation: the registry's features for contexts against candidate texts, and the
ranker's final scores from them (the re-ranker's late feature included)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from retrieval.features import BY_NAME, FEATURES, NEIGHBOURS, REGISTRY, Batch, Sources
from retrieval.features.dual import Dual
from retrieval.features.lexical import Lexical
from retrieval.features.lexical_neighbour import LexicalNeighbour
from retrieval.features.neighbour import Neighbour
from retrieval.features.own import OwnEncoder
from retrieval.features.rerank import Rerank
from retrieval.ranking.weights import Ranker, context_language


class FeatureScorer:
    """The loaded features of an index (``loaded``: name -> Feature), scored together so that what
    they share is computed once. Build it with :meth:`for_index` / :meth:`for_ranker`; the
    keyword arguments wrap objects already at hand (tests, the fitting of a fresh index):
    ``lexical`` a fitted baselines.TfidfScorer, ``lexical_memory`` a features.tfidf.LexicalMemory,
    ``ngram`` / ``use`` the ranker's own encoders, ``reranker`` a rerank.CrossEncoder; ``index``
    with a context memory gives ``neighbour``."""

    def __init__(self, encoder, index=None, lexical=None, reranker=None, lexical_memory=None, batch_size: int = 64,
                 ngram=None, use=None, loaded: dict | None = None):
        self.encoder, self.index, self.batch_size = encoder, index, batch_size
        if loaded is None:
            from retrieval.features.ngram import Ngram
            from retrieval.features.use import Use
            made = {"dual": Dual(), "lexical": Lexical(lexical, lexical_memory) if lexical is not None else None,
                    "neighbour": Neighbour.load(Sources(index, frozenset())) if index is not None else None,
                    "lexical_neighbour": LexicalNeighbour(lexical_memory) if lexical_memory is not None else None,
                    "ngram": Ngram(ngram) if ngram is not None else None, "use": Use(use) if use is not None else None,
                    "rerank": Rerank(reranker) if reranker is not None else None}
            loaded = {f: x for f, x in made.items() if x is not None}
        self.loaded = {f: loaded[f] for f in FEATURES if f in loaded}

    @property
    def available(self) -> list[str]:
        return list(self.loaded)

    def _object(self, name: str, attr: str):
        f = self.loaded.get(name)
        return getattr(f, attr) if f is not None else None

    # what the features hold, by their old names (evaluate.py reports the own encoders alone)
    lexical = property(lambda self: self._object("lexical", "tfidf"))
    lexical_memory = property(lambda self: self._object("lexical_neighbour", "memory"))
    ngram = property(lambda self: self._object("ngram", "encoder"))
    use = property(lambda self: self._object("use", "encoder"))
    reranker = property(lambda self: self._object("rerank", "reranker"))

    @property
    def own_encoders(self) -> list:
        """The ranker's own encoders loaded here (each scores like the protocol's scorers)."""
        return [f.encoder for f in self.loaded.values() if isinstance(f, OwnEncoder)]

    @classmethod
    def for_index(cls, index, reranker=None, wanted: Sequence[str] | None = None, reranker_dir=None,
                  write: bool = True, **switches: bool) -> "FeatureScorer":
        """The features an index folder supports, those in ``wanted`` (default: all) less those
        switched off by name (``lexical=False``; ``lexical_memory=False`` is ``lexical_neighbour``).
        Each feature loads itself (retrieval.features); the fitted TF-IDF is cached in the
        folder's ``lexical/`` (features.tfidf.LexicalCache) unless ``write`` is false."""
        if "lexical_memory" in switches:
            switches["lexical_neighbour"] = switches.pop("lexical_memory")
        unknown = set(switches) - set(FEATURES)
        if unknown:
            raise TypeError(f"unknown features {sorted(unknown)}; known: {list(FEATURES)}")
        want = frozenset(f for f in (FEATURES if wanted is None else wanted) if switches.get(f, True))
        src = Sources(index, want, reranker=reranker, reranker_dir=reranker_dir, write=write)
        loaded = {}
        for F in REGISTRY:
            if F.name in want:
                got = F.load(src)
                if got is not None:
                    loaded[F.name] = got
        return cls(index.encoder, index, loaded=loaded)

    @classmethod
    def for_ranker(cls, index, ranker: Ranker, reranker=None, reranker_dir=None) -> "FeatureScorer":
        """:meth:`for_index` with only what ``ranker`` weighs: nothing loaded for a feature it
        leaves out, and nothing written into the index folder (the chat service and ``eval`` read;
        `dialogbert index` and ``update_for_index`` write)."""
        return cls.for_index(index, reranker, wanted=ranker.active, reranker_dir=reranker_dir, write=False)

    def neighbour_hits(self, contexts, C: np.ndarray, names: Sequence[str], k: int,
                       exclude_convs: Sequence[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """For each neighbour feature in ``names``: the k nearest memory contexts of each context,
        as (similarities with -inf padding, response rows). With ``exclude_convs``, entries of
        example i's own conversation are skipped (fitting)."""
        return {f: self.loaded[f].search(contexts, C, k, exclude_convs) for f in NEIGHBOURS if f in names}

    def features(self, contexts, candidates: Sequence[Sequence[str]], names: Sequence[str] | None = None,
                 neighbours: int = 20, temperatures: Sequence[float] | dict = (0.1,),
                 exclude_convs: Sequence[str] | None = None, cand_vecs: np.ndarray | None = None,
                 C: np.ndarray | None = None, hits: dict | None = None, cand_rows=None, late: bool = False) -> dict:
        """name -> (m, n) float array; a neighbour feature -> {temperature: array} when given
        several temperatures (``temperatures``: one tuple for all, or a dict by feature).
        ``C``, ``cand_vecs`` and ``hits`` (neighbour_hits) may be passed in when already known;
        ``cand_rows`` (m, n): the candidates' rows in the index's store, when they are stored
        replies (the chat service), so what is stored of them is read, not recomputed. ``late``:
        the late features (the re-ranker) too, on every candidate (fitting)."""
        names = [f for f in (names or self.available) if late or not BY_NAME[f].late]
        enc, bs = self.encoder, self.batch_size
        temps = temperatures if isinstance(temperatures, dict) else {f: tuple(temperatures) for f in NEIGHBOURS}
        if C is None:
            C = enc.encode_contexts(contexts, batch_size=bs)
        if cand_vecs is None:
            from retrieval.examples import distinct
            uniq, idx = distinct(candidates)
            cand_vecs = enc.encode_responses(uniq, batch_size=bs)[idx]
        if hits is None:
            hits = self.neighbour_hits(contexts, C, names, neighbours, exclude_convs)
        batch = Batch(contexts, candidates, C, cand_vecs, hits, cand_rows)
        out: dict = {"dual": self.loaded.get("dual", Dual()).score(batch)}  # always: the neighbours' base
        for f in names:
            if BY_NAME[f].temperature:
                if f in hits:
                    votes = self.loaded[f].score(batch, temps[f])
                    out[f] = votes if len(temps[f]) > 1 else votes[temps[f][0]]
            elif f != "dual":
                out[f] = self.loaded[f].score(batch)
        return out

    def score(self, ranker: Ranker, contexts, candidates: Sequence[Sequence[str]], **kw) -> np.ndarray:
        """The ranker's final (m, n) scores. Candidates outside each row's ``rerank_top`` (when a
        late feature is weighed) rank below those inside, in first-stage order."""
        feats = self.features(contexts, candidates, names=ranker.active, neighbours=ranker.neighbours,
                              temperatures={f: (t,) for f, t in ranker.temperatures.items()}, **kw)
        langs = [context_language(c) for c in contexts] if ranker.languages else None
        late = [f for f in ranker.active if BY_NAME[f].late]
        first = ranker.combine(feats, [f for f in ranker.active if f not in late], langs)
        if not late:
            return first
        for f in late:
            if f not in self.loaded:
                raise ValueError(f"the ranker gives the re-ranker a weight but none is "
                                 f"loaded; pass --reranker {ranker.reranker or 'DIR'}")
            feats[f] = self.loaded[f].score_top(contexts, candidates, first, ranker.rerank_top)
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
