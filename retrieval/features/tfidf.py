"""The TF-IDF the ``lexical`` and ``lexical_neighbour`` features share: fitted on an index's stored
replies and memory contexts, the memory's TF-IDF rows in RAM, and their cache in ``lexical/``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from preprocess.schema import atomic_write_text
from retrieval.features.votes import _softmax_votes, _top_excluding

LEXICAL_FIT_MAX = 200_000  # texts the TF-IDF vocabulary is fitted on (a sample beyond)
LEXICAL_MEMORY_MAX = 2_000_000  # memory entries up to which the lexical neighbours are offered


def tfidf_rows(vec, candidates: Sequence[Sequence[str]], cand_rows=None, memory: "LexicalMemory | None" = None):
    """The (m * n, V) TF-IDF rows of the candidates, row-major: the memory's precomputed rows of the
    stored replies when the candidates are stored replies (``cand_rows``, their response rows,
    and ``memory`` shares ``vec``), otherwise each distinct text transformed once."""
    if cand_rows is not None and memory is not None and memory.vec is vec:
        return memory.replies[np.asarray(cand_rows, dtype=np.int64).ravel()]
    from retrieval.baselines import candidate_rows
    return candidate_rows(vec, candidates)


class LexicalMemory:
    """TF-IDF rows of the stored replies and (``contexts``: when the index keeps a context memory)
    of the memory's contexts, with the vectorizer of the ``lexical`` feature; in RAM (sparse), for
    corpora up to LEXICAL_MEMORY_MAX entries. The reply rows spare every request the transform of
    its candidates (a stored reply's row is looked up). ``matrices`` (contexts (V, N) or None,
    replies (M, V) or None) where already computed (the cache)."""

    def __init__(self, vectorizer, index, matrices=None, contexts: bool = True):
        self.vec, self.index = vectorizer, index
        ctx, replies = matrices if matrices is not None else (None, None)
        if contexts and ctx is None:
            ctx = vectorizer.transform(index.memory_texts).T.tocsr()  # (V, N): Q @ contexts
        self.contexts = ctx if contexts else None
        self.replies = replies if replies is not None else vectorizer.transform(index.texts).tocsr()

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

    def load(self, contexts: bool):
        """(TfidfScorer, (contexts or None, replies or None)) from the cache (the memory's contexts
        only when asked for), or None when absent or stale."""
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
            ctx = replies = None
            if (self.folder / "replies.npz").exists():
                replies = sp.load_npz(self.folder / "replies.npz").tocsr()
                if replies.shape[0] != len(self.index.texts):
                    return None
            if contexts and (self.folder / "contexts.npz").exists():
                ctx = sp.load_npz(self.folder / "contexts.npz").tocsr()
                if ctx.shape[1] != len(self.index.memory_texts):
                    return None
            mats = (ctx, replies)
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
            for name, matrix in (("contexts.npz", getattr(mem, "contexts", None)),
                                 ("replies.npz", getattr(mem, "replies", None))):
                if matrix is not None:
                    sp.save_npz(self.folder / name, matrix)
                else:
                    (self.folder / name).unlink(missing_ok=True)
            atomic_write_text(self.folder / "key.json", json.dumps(self.key(), indent=1) + "\n")
        except OSError as e:
            print(f"ranker: could not cache the TF-IDF in {self.folder} ({e}); it is refitted at every load")


def load_tfidf(index, memory: bool, save: bool = True):
    """(fitted baselines.TfidfScorer, LexicalMemory or None) of an index: read from its
    ``lexical/`` cache when that holds these texts, else fitted on its stored responses and memory
    contexts (a fixed sample of at most LEXICAL_FIT_MAX texts) and, with ``save``, cached (the
    fitting writes it; the chat service and ``eval`` only read). The LexicalMemory holds the stored
    replies' rows whenever there are at most LEXICAL_MEMORY_MAX of them, and with ``memory`` the
    memory's contexts' too, when the memory has its texts and is not too big."""
    from retrieval.baselines import TfidfScorer
    n = len(index.memory_texts)
    want_mem = bool(memory and index.memory is not None and n and any(index.memory_texts[:1000]))
    if want_mem and n > LEXICAL_MEMORY_MAX:
        print(f"ranker: {n} memory entries > {LEXICAL_MEMORY_MAX}: no lexical neighbours")
        want_mem = False
    want_rows = want_mem or len(index.texts) <= LEXICAL_MEMORY_MAX
    cache = LexicalCache(index)
    got = cache.load(contexts=want_mem)
    if got is not None:
        scorer, matrices = got
    else:
        texts = index.texts + index.memory_texts  # the words of replies and of contexts
        if len(texts) > LEXICAL_FIT_MAX:
            pick = np.random.default_rng(0).choice(len(texts), LEXICAL_FIT_MAX, replace=False)
            texts = [texts[i] for i in sorted(pick)]
        scorer, matrices = TfidfScorer(drop_space=True).fit(texts), (None, None)
    mem = LexicalMemory(scorer.vec, index, matrices, contexts=want_mem) if want_rows else None
    computed = mem is not None and ((want_mem and matrices[0] is None) or matrices[1] is None)
    if save and (got is None or computed):
        cache.save(scorer, mem)
    return scorer, mem
