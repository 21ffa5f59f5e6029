"""Building the ranker of an index folder (``dialogbert index`` after the index is built): its own
encoders trained, or kept when trained on the same pairs, and ranker.json fitted.

The index knows nothing of what is written here: the orchestration (dialogbert cli, demo, bot)
calls :func:`fit_for_index` after ``build_index``, and :func:`update_for_index` after an ``--add``.
"""
from __future__ import annotations

from pathlib import Path

from retrieval.features import BY_NAME, OWN_ENCODERS, REGISTRY
from retrieval.ranking.fitting import CV_HALVINGS, fit_ranker
from retrieval.ranking.scoring import FeatureScorer
from retrieval.ranking.weights import Ranker, _read_json


def carve_out(model_dir: str | Path | None) -> tuple[float, list[str] | None] | None:
    """(data.valid_fraction, data.sources) a model folder was fine-tuned with (its finetune.json),
    or None when it has no finetune.json (not fine-tuned here)."""
    ft = Path(model_dir or "") / "finetune.json"
    if not model_dir or not ft.exists():
        return None
    cfg = _read_json(ft).get("config", {}).get("data", {})
    return float(cfg.get("valid_fraction") or 0.0), cfg.get("sources") or None


def _reranker(reranker_dir, fraction: float):
    """(the loaded CrossEncoder, a warning when it was fine-tuned with another carve-out)."""
    from retrieval.rerank import CrossEncoder
    r_frac = (carve_out(reranker_dir) or (0.0, None))[0]
    warn = ""
    if r_frac != fraction:
        warn = (f"the re-ranker {reranker_dir} was fine-tuned with data.valid_fraction={r_frac}, the "
                f"ranker is fitted on the {fraction} carve-out: its score is optimistic there and "
                f"over-weighted; fine-tune it with data.valid_fraction={fraction}")
        print(f"ranker: {warn}")
    return CrossEncoder.load(reranker_dir), warn


def fit_for_index(index_dir: str | Path, shards: str | Path, reranker_dir: str | Path | None = None,
                  fraction: float | None = None, max_examples: int = 1000, index=None, ngram: bool = True,
                  use: bool = True, use_settings=None, ngram_settings=None, train: dict | None = None,
                  copy_negatives: bool = True, precision: str = "auto", encoder=None) -> Ranker:
    """Fit the ranker of an index folder and write its ranker.json.

    The fitting examples are the validation carve-out the encoder was fine-tuned without (its
    finetune.json ``data.valid_fraction``, restricted to its ``data.sources``), ``max_examples``
    of them, each source an equal share, so a small corpus is not outvoted by a large one. An
    encoder fine-tuned on everything has seen them: the weights are then fitted on a 10% sample of
    the training conversations anyway, and ranker.json says so. The ranker's own encoders
    (features with a ``train``: ``ngram``, ``use``) are trained first on the training pairs less
    that carve-out, each in its own folder of ``index_dir``, or kept when they were trained on the
    same pairs with the same settings (towers.fit_and_save); one switched off is removed.
    ``train``: {feature: settings, or False to leave it out}; ``ngram``/``use`` and their
    settings say the same for those two. ``copy_negatives``: each fitting example's last wrong
    candidate is a copy of its newest context turn (fitting.with_copies). ``precision``: the weights
    of the dialog model loaded here (not of an ``index`` given) while fitting, as the chat
    service's default runs them (Encoder.for_inference); ``encoder``: that dialog model already
    loaded (the one the index was just built with: checked against it, and cast to ``precision``)."""
    from retrieval.examples import validation_examples
    from retrieval.index import ResponseIndex
    if index is None:
        index = ResponseIndex.load(index_dir, encoder=encoder)
        if index.encoder is not None:
            index.encoder.for_inference(precision)
    if index.encoder is None:
        raise ValueError(f"{index_dir}: no encoder found for this index; pass the model folder")
    plan = {"ngram": ngram_settings if ngram else False, "use": use_settings if use else False, **(train or {})}
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
    too_few = len({e.response for e in examples}) < 10 or len(examples) < 50
    for f in OWN_ENCODERS:  # not wanted (or nothing to fit): an old one would be stale
        if too_few or plan.get(f, None) is False:
            BY_NAME[f].drop(index_dir)
    if too_few:
        print(f"ranker: only {len(examples)} validation examples: ranking by the dual encoder alone")
        ranker = Ranker(fitted_on={"examples": len(examples), "note": "too few validation examples"})
    else:
        reranker = None
        if reranker_dir:
            reranker, warn = _reranker(reranker_dir, fraction)
            note = f"{note}; {warn}" if note and warn else note or warn
        scorer = FeatureScorer.for_index(index, reranker, **{f: False for f in OWN_ENCODERS})
        # trained (and saved) now, or kept; what is in memory equals what a later load reads
        for F in REGISTRY:
            if F.name in OWN_ENCODERS and plan.get(F.name, None) is not False:
                enc = F.train(index_dir, shards, fraction, sources, plan.get(F.name))
                if enc is not None:
                    scorer.loaded[F.name] = F(enc)
        scorer.loaded = {f: scorer.loaded[f] for f in BY_NAME if f in scorer.loaded}
        memory = getattr(index.encoder, "reply_memory", None)
        if memory is not None and memory.fitting is not None:
            # the memory holds the carve-out's pairs too: fitted on them, the replies must not remember them
            index.encoder.reply_memory = memory.fitting
        try:
            ranker = fit_ranker(scorer, examples, note=f"validation carve-out {fraction} of {shards}" + (f"; {note}" if note else ""),
                                copy_negatives=copy_negatives)
        finally:
            index.encoder.reply_memory = memory
        for f in OWN_ENCODERS:
            if f in scorer.loaded and f in ranker.active:
                scorer.loaded[f].encoder.attach_replies(index_dir, index.texts)  # the chat service reads them
        _report(ranker, len(examples))
    ranker.fitted_on.update({"model_sha256": index.info.get("model_sha256"), "count": index.info.get("count")})
    if index.info.get("build"):
        ranker.fitted_on["index_build"] = index.info["build"]  # Ranker.load refuses it for another build
    ranker.save(index_dir)
    return ranker


def _report(ranker: Ranker, examples: int) -> None:
    cv = ranker.fitted_on.get("cross_validated")
    print(f"ranker: {ranker.fitted_on['method']} weights {ranker.weights}"
          + "".join(f", {lang}: {ws}" for lang, ws in ranker.languages.items())
          + f", temperatures {ranker.temperatures} "
          f"(R10@1 + MRR on {examples} validation examples: dual alone "
          f"{ranker.fitted_on['dual_only']:.3f}, ranked {ranker.fitted_on['fitted']:.3f}"
          + (f"; held out, mean of {CV_HALVINGS} halvings: {', '.join(f'{k} {v:.3f}' for k, v in cv.items())})"
             if cv else ")"))
    print("ranker: R10@1 on them: " + ", ".join(f"{k} {v:.3f}" for k, v in ranker.fitted_on["contributions"].items()))


def own_encoders(folder, texts, **want: bool) -> dict:
    """{"ngram": NgramEncoder | None, "use": UseEncoder | None, ...}: the ranker's own encoders
    stored in an index folder (all, less those switched off: ``use=False``), each given the
    vectors of the stored replies ``texts``."""
    out = {}
    for f in OWN_ENCODERS:
        enc = BY_NAME[f].read(folder) if folder is not None and want.get(f, True) else None
        if enc is not None:
            enc.attach_replies(folder, texts)
        out[f] = enc
    return out


def update_for_index(index_dir: str | Path, encoder=None) -> None:
    """After ``build_index(add=True)``: what the ranker.json weighs, brought up to the grown
    replies now, not at the chat service's start (which only reads): the new replies' vectors of
    the ranker's own encoders, and the TF-IDF cache refitted on the grown texts. Neither needs the
    dialog model: it is not loaded (``encoder``: the index's, when at hand, is checked against it)."""
    import json

    from retrieval.index import INFO_FILE, RESPONSES_FILE, ResponseIndex, _read_jsonl
    index_dir = Path(index_dir)
    try:
        ranker = Ranker.load(index_dir, json.loads((index_dir / INFO_FILE).read_text("utf-8")))
        if ranker is None:
            return
        if any((index_dir / BY_NAME[f].subdir).is_dir() for f in OWN_ENCODERS):
            texts = [r["text"] for r in _read_jsonl(index_dir / RESPONSES_FILE)]
            own_encoders(index_dir, texts, **{f: f in ranker.active for f in OWN_ENCODERS})
        lexical = [f for f in ("lexical", "lexical_neighbour") if f in ranker.active]
        if lexical:
            FeatureScorer.for_index(ResponseIndex.load(index_dir, encoder=encoder, load_encoder=False),
                                    wanted=lexical)  # refits and caches
    except (ValueError, RuntimeError) as e:  # the index itself is complete; the chat service says more
        print(f"ranker: the grown replies' ranker files were not written ({e})")
