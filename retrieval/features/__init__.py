"""The ranker's features, one file each (retrieval.features.base says what a feature is).

REGISTRY is the one list of them, in the order ranker.json and the reports name them. Adding a
feature: write its file (a :class:`~retrieval.features.base.Feature`) and add it here.
"""
from retrieval.features.base import Batch, Feature, Sources
from retrieval.features.dual import Dual
from retrieval.features.echo import Echo
from retrieval.features.lexical import Lexical
from retrieval.features.lexical_neighbour import LexicalNeighbour
from retrieval.features.neighbour import Neighbour
from retrieval.features.ngram import Ngram
from retrieval.features.rerank import Rerank
from retrieval.features.use import Use

REGISTRY: tuple[type[Feature], ...] = (Dual, Lexical, Neighbour, LexicalNeighbour, Ngram, Use, Echo, Rerank)

BY_NAME = {f.name: f for f in REGISTRY}
FEATURES = tuple(BY_NAME)
NEIGHBOURS = tuple(f.name for f in REGISTRY if f.temperature)  # features with a temperature
OWN_ENCODERS = tuple(f.name for f in REGISTRY if hasattr(f, "train"))  # features the ranker trains itself

__all__ = ["Batch", "Feature", "Sources", "REGISTRY", "BY_NAME", "FEATURES", "NEIGHBOURS", "OWN_ENCODERS"]
