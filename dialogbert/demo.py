"""`dialogbert demo`: the whole way on the bundled sample corpus, one stage after another,
each writing a folder the next one reads (all under --out, default runs/demo):

    data/sample  -> shards/ -> tokenizer/ -> pretrain/ -> encoder/ -> index/ (+ ranker) -> report/ -> chat page

Preprocessing, the tokenizer, pretraining and fine-tuning resume (or are skipped) when their output
is already complete, so a second run is fast; the index and the reports are rebuilt each time.
"""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
# The dialogue parts of the sample (the review text only feeds the tokenizer).
DIALOG_FOLDERS = ("kakaotalk", "chatbotdata-ko", "xpersona-ko", "chitchat-en")
EVAL_SOURCES = ("chatbotdata", "xpersona", "chitchat")
EVAL_MAX = {"chitchat": 1000}  # the protocol: all ChatbotData and XPersona test examples, chitchat's first 1,000
PEER_SOURCES = ("chitchat",)  # English: all-MiniLM-L6-v2 off the shelf is the protocol's peer there


def _stage(n: int, title: str) -> float:
    print(f"\n=== [{n}] {title}", flush=True)
    return time.time()


def _done(t0: float, what: str) -> None:
    print(f"    -> {what}  ({time.time() - t0:.0f} s)", flush=True)


def run_demo(out: str | Path = "runs/demo", serve: bool = True, port: int = 8000) -> int:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards, tok_dir = out / "shards", out / "tokenizer"

    inputs = [SAMPLE / name for name in DIALOG_FOLDERS]
    t0 = _stage(1, f"preprocess {', '.join(p.name for p in inputs)} -> {shards}")
    from preprocess.pipeline import run as preprocess
    summary = preprocess([str(p) for p in inputs], str(shards), workers=2, progress=True)
    if summary.get("failed"):
        print(f"    {len(summary['failed'])} input(s) failed; see {shards / 'manifest.json'}")
    _done(t0, f"{shards}/ (shards + manifest.json)")

    t0 = _stage(2, f"tokenizer -> {tok_dir}")
    from dialogbert.tokenizer import train_tokenizer
    if (tok_dir / "tokenizer.json").exists():
        print("    already trained")
    else:
        train_tokenizer(shards, tok_dir, vocab_size=4000,
                        extra_text=[SAMPLE / "nsmc-reviews-ko" / "nsmc_reviews_sample20k.txt"])
    _done(t0, f"{tok_dir}/tokenizer.json")

    t0 = _stage(3, "pretrain the tiny DialogBERT (MLM + next-turn prediction)")
    from dialogbert.train import pretrain
    ckpt = pretrain(ROOT / "configs" / "tiny.toml",
                    [f"run.out={out / 'pretrain'}", f"data.shards={shards}", f"data.tokenizer={tok_dir}"])
    _done(t0, f"{ckpt}  (curves: {out / 'pretrain' / 'curves.png'})")

    t0 = _stage(4, "fine-tune it as a dual encoder (in-batch negatives)")
    from retrieval.finetune import finetune
    encoder = out / "encoder"
    finetune(ckpt, shards, encoder, config_path=ROOT / "configs" / "finetune_tiny.toml")
    _done(t0, str(encoder))

    t0 = _stage(5, "index the training responses and their contexts (FAISS Flat), fit the ranker")
    from retrieval.index import build_index
    from retrieval.ranker import fit_for_index
    from retrieval.use import UseSettings
    index = out / "index"
    build_index(encoder, shards, index, factory="Flat")
    # the USE towers get one epoch of 16k of the sample's 37k pairs here (5.6 min on 2 cores, measured)
    fit_for_index(index, shards, use_settings=UseSettings(epochs=1, max_pairs=16_000))
    _done(t0, f"{index}  (ranker.json: weights fitted on the fine-tuning validation carve-out)")

    t0 = _stage(6, "evaluate on held-out conversations against BM25 and TF-IDF, one corpus at a time")
    from retrieval.evaluate import evaluate
    report = out / "report"
    for source in EVAL_SOURCES:  # the protocol compares systems within one corpus
        evaluate(encoder, shards, report / source, index_dir=index, max_examples=EVAL_MAX.get(source),
                 sources=[source], peer=source in PEER_SOURCES)
        print((report / source / "report.md").read_text(encoding="utf-8"))
    _done(t0, f"{report}/{{{','.join(EVAL_SOURCES)}}}/ (report.json, report.md, report.png)")

    if serve and importlib.util.find_spec("bot.app") is not None:
        t0 = _stage(7, f"chat page on http://127.0.0.1:{port}/ (Ctrl-C stops it)")
        from bot.app import create_app
        create_app({"INDEX_DIR": str(index), "MODEL_DIR": str(encoder)}).run(host="127.0.0.1", port=port,
                                                                              threaded=True)
    else:
        print(f"\nDone. Everything is under {out}/.")
        print(json.dumps({"shards": str(shards), "tokenizer": str(tok_dir), "checkpoint": str(ckpt),
                          "encoder": str(encoder), "index": str(index), "report": str(report)}, indent=2))
    return 0
