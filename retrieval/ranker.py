"""The ranker: one score from several views of (context, candidate), weights fitted on held-out data.

A dual encoder alone answers one question: which reply vector lies nearest the context vector?
A retrieval bot over real logs can ask more; each feature in retrieval/features/ is one question
(the dual encoder's cosine, TF-IDF, the votes of the nearest training contexts' replies, the
ranker's own n-gram and USE encoders, a cross-encoder re-ranker). The score is the sum of weight x
feature / scale, the weights fitted on the encoder's validation carve-out, never on the test split.

This module is the ranker's public face; each stage lives in its own module of retrieval.ranking:

    weights     Ranker (ranker.json)              scoring     FeatureScorer, RankerScorer
    fitting     fit_ranker                        build       fit_for_index, update_for_index
    candidates  candidate generation              serving     HybridRetriever (the chat service's)

    scorer = FeatureScorer.for_index(index)
    ranker = fit_ranker(scorer, examples)               # -> Ranker, saved with ranker.save(index_dir)
    HybridRetriever(scorer, ranker).search(contexts, k) # the chat service's retriever
"""
from retrieval.features import FEATURES, NEIGHBOURS, OWN_ENCODERS
from retrieval.features.tfidf import LEXICAL_FIT_MAX, LEXICAL_MEMORY_MAX, LexicalCache, LexicalMemory, tfidf_rows
from retrieval.features.votes import EXCLUDE_SLACK, _softmax_votes, _top_excluding
from retrieval.ranking.build import carve_out, fit_for_index, own_encoders, update_for_index
from retrieval.ranking.fitting import (CV_HALVINGS, LANGUAGE_MIN_EXAMPLES, METHODS, TEMPERATURES, WEIGHT_GRID,
                                       _grid_best, _logit_weights, _objective, contributions, fit_ranker)
from retrieval.ranking.scoring import FeatureScorer, RankerScorer
from retrieval.ranking.serving import HybridRetriever
from retrieval.ranking.weights import RANKER_FILE, Ranker, context_language

__all__ = ["FEATURES", "NEIGHBOURS", "OWN_ENCODERS", "LEXICAL_FIT_MAX", "LEXICAL_MEMORY_MAX", "LexicalCache",
           "LexicalMemory", "tfidf_rows", "EXCLUDE_SLACK", "_softmax_votes", "_top_excluding", "carve_out",
           "fit_for_index", "own_encoders", "update_for_index", "CV_HALVINGS", "LANGUAGE_MIN_EXAMPLES", "METHODS",
           "TEMPERATURES", "WEIGHT_GRID", "_grid_best", "_logit_weights", "_objective", "contributions",
           "fit_ranker", "FeatureScorer", "RankerScorer", "HybridRetriever", "RANKER_FILE", "Ranker",
           "context_language"]
