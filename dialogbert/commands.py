"""What each `dialogbert` subcommand does: its flags turned into dotted overrides and one library
call, and the index and eval stages that the demo runs too. Apart from the parser (dialogbert.cli),
which is only flags and help text; heavy imports happen inside each call."""
from __future__ import annotations

import json
from pathlib import Path


def _overrides(values: list[str]) -> list[str]:
    bad = [v for v in values if "=" not in v]
    if bad:
        raise SystemExit(f"error: overrides must look like key=value (e.g. train.lr=3e-4), got {bad}")
    return values


def cmd_preprocess(a) -> int:
    from preprocess.pipeline import run
    summary = run(a.inputs, a.out, workers=a.workers, session_gap_minutes=a.session_gap,
                  sentence_backend=a.sentence_backend, shard_size=a.shard_size, resume=not a.no_resume,
                  progress=not a.quiet, engine=a.engine, ray_address=a.ray_address, split_mb=a.split_mb)
    return 1 if summary.get("failed") else 0


def cmd_tokenizer(a) -> int:
    from dialogbert.tokenizer import train_tokenizer
    train_tokenizer(a.shards, a.out, vocab_size=a.vocab_size, extra_text=a.text or (),
                    min_frequency=a.min_frequency)
    return 0


def cmd_base(a) -> int:
    from dialogbert import e5
    if not a.full and not (a.shards and a.out):
        raise ValueError("give --shards and --out (the corpus to prune to, the folder to write), or --full")
    full = e5.cached()
    if a.full:
        print(f"base: {full} (multilingual-e5-small as a DialogBERT, 250k pieces)")
        return 0
    out = e5.prune(full, a.shards, a.out, extra_text=a.text or (), layers=a.layers, word_memory=a.word_memory)
    info = (out / e5.SOURCE_FILE).read_text("utf-8")
    print(f"base: {out} (multilingual-e5-small, vocabulary pruned to the corpus)\n{info}", end="")
    return 0


def cmd_pretrain(a) -> int:
    from dialogbert.train import pretrain
    overrides = _overrides(a.overrides)
    if a.init_from:
        from dialogbert.peers import resolve_model
        overrides = [f"model.init_from={resolve_model(a.init_from)}", *overrides]
    pretrain(a.config, overrides, deepspeed_config=a.deepspeed, resume=a.resume)
    return 0


def cmd_finetune(a) -> int:
    from retrieval.finetune import finetune
    from dialogbert.peers import resolve_model
    finetune(resolve_model(a.init), a.shards, a.out, config_path=a.config, overrides=_overrides(a.overrides),
             resume=a.resume)
    return 0


# Each command's flags are shorthands for dotted overrides of its config: (flag, key, value;
# None: the flag's own value). A flag left out stands for nothing, so the file's value holds.
INDEX_FLAGS = (("factory", "index.factory", None), ("gpu", "index.gpu", "true"),
               ("reranker", "ranker.reranker", None), ("no_ranker", "ranker.enabled", "false"),
               ("no_ngram", "ngram.enabled", "false"), ("ngram_heads", "ngram.heads", None),
               ("no_morphemes", "ngram.morphemes", "false"), ("no_use", "use.enabled", "false"))
EVAL_FLAGS = tuple((k, f"eval.{k}", None) for k in ("model", "index", "shards", "candidates", "report",
                                                     "max_examples", "reranker", "precision")) + (
    ("peer", "eval.peer", "true"), ("source", "eval.sources", None))
SERVE_FLAGS = tuple((k, f"serve.{k}", None) for k in (
    "index", "model", "reranker", "precision", "host", "port", "threads", "batch", "batch_wait_ms", "search_workers", "rate_limit", "max_body_kb", "behind_proxies",
    "connection_limit", "channel_timeout"))


def shorthand_overrides(a, flags) -> list[str]:
    """The dotted overrides the given flags stand for (a repeated flag: its values joined by commas)."""
    out = []
    for attr, key, value in flags:
        v = getattr(a, attr, None)
        if v is None or v is False:
            continue
        out.append(f"{key}={value if value is not None else ','.join(v) if isinstance(v, list) else v}")
    return out


def index_stage(cfg, model, shards, out, add: bool = False) -> Path:
    """The index (retrieval.index), then the ranker fitted for it (retrieval.ranker), as ``cfg``
    (a retrieval.settings.IndexConfig) says; with ``add`` the new replies appended and the ranker's
    own encoders given their vectors. A new build writes the resolved config beside the index."""
    from dialogbert.config import save_config
    from retrieval.encoder import Encoder
    from retrieval.index import build_index
    from retrieval.settings import CONFIG_FILE
    encoder = Encoder.load(model)  # loaded once: the index encodes with it, then the ranker's fit reads with it
    build_index(model, shards, out, factory=cfg.index.factory, gpu=cfg.index.gpu, add=add, encoder=encoder,
                batch_size=cfg.index.batch_size, memory=cfg.index.memory,
                precision=cfg.index.precision)
    if add:  # the ranker's files for the new replies (own encoders' vectors, TF-IDF cache): the index knows nothing of them
        from retrieval.ranker import update_for_index
        update_for_index(out)
        return Path(out)
    if cfg.ranker.enabled:
        from retrieval.ranker import fit_for_index
        fit_for_index(out, shards, encoder=encoder, **cfg.fit_kwargs())
    save_config(cfg, Path(out) / CONFIG_FILE, "index")
    return Path(out)


def cmd_index(a) -> int:
    from retrieval.settings import load_index_config
    # the config first: a bad value (ngram.heads=0) is refused before the index is built
    cfg = load_index_config(a.config, [*shorthand_overrides(a, INDEX_FLAGS), *_overrides(a.overrides)])
    index_stage(cfg, a.model, a.shards, a.out, add=a.add)
    return 0


def eval_stage(cfg) -> dict:
    """The report folder ``cfg`` (a retrieval.settings.EvalConfig) asks for, and the resolved
    config in it."""
    from dialogbert.config import save_config
    from retrieval.settings import CONFIG_FILE
    e = cfg.eval
    opt = lambda v: v or None  # noqa: E731  "" (or 0) in the config is "not given"
    if e.candidates:  # the file's own candidates (published benchmarks, adversarial sets)
        from retrieval.fixed import evaluate_fixed
        rep = evaluate_fixed(e.candidates, e.report, model=opt(e.model), index_dir=opt(e.index), shards=opt(e.shards),
                             max_examples=opt(e.max_examples), reranker=opt(e.reranker), peer=e.peer,
                             precision=e.precision)
    else:
        from retrieval.evaluate import evaluate
        rep = evaluate(opt(e.model), e.shards, e.report, index_dir=opt(e.index), max_examples=opt(e.max_examples),
                       baselines_only=not e.model, sources=e.sources or None, reranker=opt(e.reranker), peer=e.peer,
                       precision=e.precision)
    save_config(cfg, Path(e.report) / CONFIG_FILE, "eval")
    return rep


def cmd_eval(a) -> int:
    from retrieval.settings import load_eval_config
    eval_stage(load_eval_config(a.config, [*shorthand_overrides(a, EVAL_FLAGS), *_overrides(a.overrides)]))
    return 0


def cmd_adversarial(a) -> int:
    from retrieval.adversarial import build_adversarial
    counts = build_adversarial(a.shards, a.out, sources=a.source or None, max_cases=a.max, seed=a.seed)
    print(f"adversarial sets in {a.out}: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    return 0


def cmd_ablate(a) -> int:
    from retrieval.ablation import run_ablation
    run_ablation(a.shards, a.out, tokenizer_dir=a.tokenizer, config_path=a.config, overrides=_overrides(a.overrides))
    return 0


def cmd_serve(a) -> int:
    from bot.server import serve
    from bot.settings import load_serve_config
    cfg = load_serve_config(a.config, [*shorthand_overrides(a, SERVE_FLAGS), *_overrides(a.overrides)])
    return serve(cfg.app_config(), **cfg.server_kwargs())


def cmd_audit(a) -> int:
    from dialogbert.audit import audit, print_report
    from preprocess.schema import atomic_write_text
    rep = audit(a.index, a.model, a.shards, a.max_messages)
    print_report(rep)
    if a.report:
        atomic_write_text(a.report, json.dumps(rep, indent=2, ensure_ascii=False) + "\n")
        print(f"audit: report in {a.report}")
    return 1 if rep["flagged"] else 0


def cmd_demo(a) -> int:
    from dialogbert.demo import run_demo
    return run_demo(a.out, serve=not a.no_serve, port=a.port)


def cmd_bot(a) -> int:
    from dialogbert.mybot import FINETUNE_MINUTES, run_bot
    minutes = FINETUNE_MINUTES if a.finetune_minutes is None else a.finetune_minutes
    return run_bot(a.exports, a.out, add=a.add, model=a.model, reply_as=a.reply_as, serve=not a.no_serve,
                   host=a.host, port=a.port, workers=a.workers, finetune_minutes=minutes)


def cmd_encode(a) -> int:
    from retrieval.bulk import encode_share
    from retrieval.encoder import Encoder
    enc = Encoder.load(a.model)
    if a.device != "cpu":
        from dialogbert.modeling import attention_for_device
        enc.model.to(a.device)
        attention_for_device(enc.model, a.device)  # the fused kernels on a GPU, as loaded on a CPU
    with enc.at_precision(a.precision):
        info = encode_share(enc, a.shards, a.out, rank=a.rank, world=a.world, split=None if a.split == "all" else a.split,
                            chunk=a.chunk, batch_size=a.batch_size, progress=lambda s: print(s, flush=True))
    print(f"encode: rank {info['rank']} of {info['world']}: {info['count']:,} replies (rows {info['rows'][0]:,}-"
          f"{info['rows'][1]:,} of {info['replies_in_corpus']:,}) in {a.out}/rank-{info['rank']}/")
    return 0


def cmd_bigindex(a) -> int:
    from retrieval.bigindex import Recipe, build, open_vectors
    recipe = Recipe(nlist=a.nlist, pq=a.pq, train_size=a.train_size, nprobe=a.nprobe, refine=a.refine)
    info = build(open_vectors(a.vectors), a.out, recipe, progress=lambda s: print(s, flush=True))
    print(json.dumps(info, indent=2))
    return 0
