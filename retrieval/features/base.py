"""The protocol every ranker feature follows, and what a feature loads from and scores with.

A feature is one question asked of (context, candidate) pairs. It says its ``name`` (the key in
ranker.json), what it ``needs`` (one line, for people), loads itself from an index folder
(:meth:`Feature.load`, None when the folder cannot give it) and scores a :class:`Batch` of
contexts against their candidates (:meth:`Feature.score`, an (m, n) array). Two optional traits:
``temperature`` names the Ranker field holding its softmax temperature (then ``score`` returns
{temperature: array} and :meth:`search` finds the neighbours the vote is over), and ``late``
features (the re-ranker) are scored after the others, for each row's best candidates only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np


class Feature:
    name: ClassVar[str] = ""
    needs: ClassVar[str] = ""                 # what it needs, in words
    temperature: ClassVar[str | None] = None  # the Ranker field of its softmax temperature (neighbour votes)
    late: ClassVar[bool] = False              # scored after the others, on each row's best candidates only

    @classmethod
    def load(cls, src: "Sources") -> "Feature | None":
        """This feature for ``src.index``, or None when the index cannot give it. The default is
        for a feature that needs nothing from the folder (the texts, the index's encoder)."""
        return cls()

    def score(self, batch: "Batch", temperatures: Sequence[float] = ()) -> np.ndarray | dict:
        """(m, n) scores of the batch's candidates; {temperature: (m, n)} for a neighbour vote."""
        raise NotImplementedError

    def search(self, contexts, C: np.ndarray, k: int, exclude_convs=None) -> tuple[np.ndarray, np.ndarray]:
        """Neighbour features: the k nearest memory entries of each context, (sims, response rows)."""
        raise NotImplementedError

    def score_top(self, contexts, candidates, first: np.ndarray, top: int) -> np.ndarray:
        """Late features: the scores of each row's ``top`` best candidates by ``first``; NaN elsewhere."""
        raise NotImplementedError


@dataclass
class Sources:
    """What features load from: the index (its folder, memory and stored replies), the names
    wanted (a feature not wanted is not loaded), a loaded re-ranker or the folder of one, whether
    a missing or stale cache may be written back, and what several features share (the fitted
    TF-IDF), loaded once."""
    index: Any
    wanted: frozenset
    reranker: Any = None
    reranker_dir: str | Path | None = None
    write: bool = True   # the fitted TF-IDF and the own encoders' reply vectors may be written into the index folder: the fitting, not the readers
    shared: dict = field(default_factory=dict)

    @property
    def folder(self) -> Path | None:
        return getattr(self.index, "folder", None)

    def once(self, key: str, make):
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]


@dataclass
class Batch:
    """Contexts, their candidates and what several features read: the contexts' and candidates'
    dual-encoder vectors (``C``, ``cand_vecs``), the neighbour features' hits (``hits``), the
    candidates' rows in the index's store when they are stored replies (``cand_rows``), and the
    candidates' TF-IDF rows, computed once per vectorizer."""
    contexts: Sequence
    candidates: Sequence[Sequence[str]]
    C: np.ndarray
    cand_vecs: np.ndarray
    hits: dict
    cand_rows: Any = None
    tfidf: dict = field(default_factory=dict)

    def tfidf_rows(self, vec, memory=None):
        from retrieval.features.tfidf import tfidf_rows
        if id(vec) not in self.tfidf:
            self.tfidf[id(vec)] = tfidf_rows(vec, self.candidates, self.cand_rows, memory)
        return self.tfidf[id(vec)]
