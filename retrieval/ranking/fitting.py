"""Fitting the ranker's weights and neighbour temperatures on held-out examples, never the test split.

:func:`fit_ranker` chooses them by a conditional logit (the softmax likelihood of the true reply
among the candidates) or a grid search for R10@1 + MRR, whichever does better held out over
several random halvings of the examples; each example's own conversation is left out of the
memory. A language of the newest context turn with at least LANGUAGE_MIN_EXAMPLES examples gets
its own weights (docs/experiments/ holds the measurements).
"""
from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from retrieval.features import BY_NAME, NEIGHBOURS
from retrieval.ranking.weights import Ranker, context_language

WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
LANGUAGE_MIN_EXAMPLES = 150  # fitting examples a language needs before it may get its own weights
LOGIT_L2 = 1e-3  # the conditional logit's penalty on the weights of spread-scaled features
TEMPERATURES = (0.03, 0.1, 0.3, 1.0)


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


def _fit_languages(feats: dict, names: Sequence[str], t_of: dict, scales: dict,
                   languages: np.ndarray) -> tuple[dict[str, dict[str, float]], dict]:
    """Own conditional-logit weights for each language with >= LANGUAGE_MIN_EXAMPLES examples
    (when there is more than one language), with the shared temperatures and scales. Features do
    not carry across languages alike, and the shared fit follows the largest language; a
    comparison of own and shared weights held out on one draw of candidates was too noisy to
    decide by (docs/experiments/2026-12-06-ranker-weights-per-language.md). What they give held
    out is still reported: for each of CV_HALVINGS halvings of that language's examples, own
    weights fitted on one half, shared weights on that half and every other language's
    examples, both scored on the other half. Returns (weights by language, a report)."""
    own, report = {}, {}
    z_all = {f: _at(feats, f, t_of) / scales[f] for f in names}
    for lang, count in sorted(Counter(languages.tolist()).items()):
        if count < LANGUAGE_MIN_EXAMPLES or count == len(languages):  # one language: the shared fit is its own
            continue
        rows, others = np.flatnonzero(languages == lang), np.flatnonzero(languages != lang)
        score = lambda ws, r: _objective(sum(ws.get(f, 0.0) * z_all[f][r] for f in names))
        fit = lambda r: _logit_weights({f: z_all[f][r] for f in names}, names)
        own_cv, shared_cv = [], []
        for a, b in _halvings(len(rows)):
            own_cv.append(score(fit(rows[a]), rows[b]))
            shared_cv.append(score(fit(np.concatenate([others, rows[a]])), rows[b]))
        report[lang] = {"examples": int(count), "held_out_own": round(float(np.mean(own_cv)), 4),
                        "held_out_shared": round(float(np.mean(shared_cv)), 4)}
        ws = {f: round(w, 4) for f, w in fit(rows).items()}
        own[lang] = {f: w for f, w in ws.items() if w}
    return own, report


def with_copies(cands: list[list[str]], contexts) -> tuple[list[list[str]], int]:
    """Each candidate set with its last wrong candidate replaced by a copy of the context's
    newest turn (where that differs from the true reply and is not a candidate already): the
    wrong answer a bot must never give, so the weights learn to refuse it. Returns the sets and
    how many got a copy."""
    out, copied = [], 0
    for cs, ctx in zip(cands, contexts):
        last = ctx[-1][1].strip() if ctx else ""
        if last and last not in cs:
            cs = cs[:-1] + [last]
            copied += 1
        out.append(list(cs))
    return out, copied


def fit_ranker(scorer, examples, exclude_own: bool = True, neighbours: int = 20,
               rerank_top: int = 20, n: int = 10, seed: int = 1, note: str = "", method: str = "auto",
               copy_negatives: bool = False) -> Ranker:
    """Weights (and the neighbour temperatures) on ``examples`` (never the test split), each
    example's own conversation left out of the memory. ``method``:

    * "logit": the weights of a conditional logit for each pair of temperatures, the pair with
      the best R10@1 + MRR kept (16 L-BFGS fits);
    * "grid": WEIGHT_GRID searched for the best R10@1 + MRR directly (dual fixed at 1; 7^k
      weight combinations for k features besides dual, per temperature pair);
    * "auto" (the default): both fitted on each half of the examples and scored on the other,
      over CV_HALVINGS random halvings (fixed seeds); the one with the better mean held-out
      R10@1 + MRR is refitted on all of them (neither wins on every corpus).
    ``copy_negatives``: one wrong candidate of each set is a copy of the context's newest turn
    (:func:`with_copies`). ``scorer``: a ranking.scoring.FeatureScorer, or anything with its
    ``available`` and ``features``."""
    if method not in METHODS:
        raise ValueError(f"unknown ranker fitting method {method!r}: one of {', '.join(METHODS)}")
    from retrieval.examples import draw_candidates
    names = scorer.available
    cands = draw_candidates([e.response for e in examples], n=n, seed=seed).texts
    contexts = [e.context for e in examples]
    copied = 0
    if copy_negatives:
        cands, copied = with_copies(cands, contexts)
    feats = scorer.features(contexts, cands, names=names, neighbours=neighbours, temperatures=TEMPERATURES,
                            exclude_convs=[e.conv_id for e in examples] if exclude_own else None, late=True)
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
    by_language, lang_report = _fit_languages(feats, names, t_of, scales, langs)
    dual_only = _objective(feats["dual"])
    info = {"examples": len(examples), "candidates": n, "objective": "R10@1 + MRR", "method": method,
            "dual_only": round(dual_only, 4), "fitted": round(obj, 4), "note": note,
            "sources": dict(sorted(Counter(e.source for e in examples).items()))}
    if copy_negatives:
        info["copy_negatives"] = copied
    if cv:
        info["cross_validated"] = cv
    if lang_report:
        info["languages"] = lang_report
    used = set(weights) | {f for ws in by_language.values() for f in ws}
    ranker = Ranker(weights=weights, scales={f: round(scales[f], 6) for f in names if f in used}, neighbours=neighbours,
                    rerank_top=rerank_top, **{BY_NAME[f].temperature: t for f, t in t_of.items()},
                    reranker=_resolved(getattr(scorer.reranker, "path", None)), fitted_on=info, languages=by_language)
    info["contributions"] = contributions(feats, ranker, t_of, langs.tolist())
    return ranker


def _resolved(path) -> str | None:
    return str(Path(path).resolve()) if path else None
