"""Topic groups of training pairs, for batches whose in-batch negatives share a topic.

With random batches most of a context's in-batch negatives are about something else, and after a
few hundred steps they teach little. Cutting each batch from one cluster of similar contexts (the
idea of topic-aware sampling, Hofstätter et al., SIGIR 2021) makes the other replies of the batch
plausible answers to it, without encoding a single extra text a step. The clusters are k-means
over latent-semantic vectors (character n-gram TF-IDF, truncated SVD) of each pair's newest
context turn, within each corpus, so a batch never mixes languages.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def topic_labels(texts: Sequence[str], sources: Sequence[str], per_cluster: int, seed: int = 0,
                 dims: int = 64) -> list[str]:
    """One label a row, ``"<source>#<cluster>"``: each corpus's rows in k-means clusters of about
    ``per_cluster`` rows (a corpus with fewer than two clusters' worth keeps one label)."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    if per_cluster < 2:
        raise ValueError(f"data.topic_batches={per_cluster}: rows a cluster must be at least 2 (0 turns it off)")
    labels = list(sources)
    by_source: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        by_source.setdefault(s, []).append(i)
    for s, rows in sorted(by_source.items()):
        k = len(rows) // per_cluster
        if k < 2:
            continue
        docs = [texts[i] for i in rows]
        try:
            tfidf = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2, sublinear_tf=True).fit_transform(docs)
        except ValueError:  # no n-gram in two texts: nothing to cluster by, the corpus stays one group
            continue
        n_dims = min(dims, tfidf.shape[1] - 1)
        x = TruncatedSVD(n_dims, random_state=seed).fit_transform(tfidf) if n_dims >= 2 else tfidf.toarray()
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
        km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096).fit(x)
        for i, c in zip(rows, km.labels_):
            labels[i] = f"{s}#{int(c)}"
    return labels
