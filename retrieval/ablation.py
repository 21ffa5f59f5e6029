"""One command, one table: which parts of DialogBERT pretraining matter for response selection?

    dialogbert ablate --shards DIR --out DIR [--config configs/tiny.toml] [overrides...]

Variants (each pretrained with ``dialogbert.train.pretrain`` and the same config/seed):

* ``full``            MLM + next-turn prediction, speaker and turn ids on;
* ``mlm_only``        ``objectives.next_turn=false``   (is next-turn prediction needed?);
* ``next_turn_only``  ``objectives.mlm=false``;
* ``no_dialog_ids``   MLM + next-turn prediction with speaker (token type) and turn ids all 0,
  in pretraining (``data.dialog_ids=false``), fine-tuning and evaluation (the encoder flag
  ``zero_dialog_ids``): BERT reading a flat ``[SEP]``-joined history;
* ``not_pretrained``  no dialog pretraining: fine-tuned straight from ``model.init_from`` (a warm
  start such as ``dialogbert base``'s e5 folder; not in the default list, which suits a
  from-scratch config), its first row the init scored as it is.

Each is evaluated as pretrained (no fine-tuning; its inputs read as the fine-tuning recipe reads
them) and fine-tuned as a dual encoder (retrieval.finetune), on the same test examples and
candidate sets as the baselines; with ``ablation.reranker=true`` also as the cross-encoder
re-ranker fine-tuned from the same checkpoint (where the next-turn head is the re-ranker's head:
the other place next-turn pretraining could matter), scored on the 10-candidate sets only (R10@k
and MRR; R100 would cost 100 model passes per example). With ``ablation.seeds=0,1,2`` every
variant is pretrained and fine-tuned once per seed and the table gives mean ± sd over seeds, so a
difference can be told from seed noise.

Overrides: ``section.key=value`` go to pretraining; ``finetune.section.key=value`` to the dual
encoder's fine-tuning, ``rerank.section.key=value`` to the re-ranker's; ``ablation.variants=
full,mlm_only``, ``ablation.seeds=0,1,2``, ``ablation.reranker=true``, ``ablation.max_examples=N``,
``ablation.sources=xpersona`` (evaluate one corpus of a mixed folder; pretraining and fine-tuning
use all of it), ``ablation.finetune_config=configs/finetune_e5.toml`` (the fine-tuning recipe;
its encoder settings, such as e5's prefixes and pooling, also score the pretrained-only rows) and
``ablation.vocab_size=N`` steer this command: the ``[ablation]`` section of
:class:`AblationConfig`, typed and checked by the loader every command uses (dialogbert.config),
saved resolved as ``OUT/config.resolved.toml``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from dialogbert.config import Sections, read_config, save_config
from retrieval.evaluate import EncoderScorer

VARIANTS: dict[str, list[str] | None] = {
    "not_pretrained": None,  # no pretraining run: model.init_from is fine-tuned as it is
    "full": [],
    "mlm_only": ["objectives.next_turn=false"],
    "next_turn_only": ["objectives.mlm=false"],
    "no_dialog_ids": ["data.dialog_ids=false"],
}
KEYS = ("R10@1", "R10@5", "R100@1", "MRR")


CONFIG_FILE = "config.resolved.toml"


@dataclass
class AblationSection:
    variants: list[str] = field(default_factory=lambda: [v for v in VARIANTS if v != "not_pretrained"])  # VARIANTS' names
    seeds: list[int] = field(default_factory=lambda: [0])  # each variant pretrained and fine-tuned once per seed
    reranker: bool = False   # also the cross-encoder re-ranker fine-tuned from each checkpoint
    max_examples: int = 0    # test examples evaluated (0 = all)
    sources: list[str] = field(default_factory=list)  # evaluate only these corpora ([] = all)
    vocab_size: int = 8000   # the tokenizer trained when none is given
    finetune_config: str = ""  # the dual encoder's fine-tuning TOML ("" = retrieval.finetune's defaults)


@dataclass
class AblationConfig(Sections):
    ablation: AblationSection = field(default_factory=AblationSection)


def load_ablation_config(overrides: Sequence[str] = ()) -> AblationConfig:
    """Defaults, then ``ablation.key=value`` overrides, typed and checked like every config."""
    cfg = read_config(None, overrides, cls=AblationConfig)
    a = cfg.ablation
    unknown = [v for v in a.variants if v not in VARIANTS]
    if unknown or not a.variants:
        raise ValueError(f"ablation.variants: unknown or no variants {unknown}; known: {list(VARIANTS)}")
    if not a.seeds or a.max_examples < 0 or a.vocab_size < 1:
        raise ValueError("ablation.seeds needs a seed, ablation.max_examples must be >= 0 and ablation.vocab_size >= 1")
    return cfg


def _split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str], list[str], AblationConfig]:
    pre, ft, rr, own = [], [], [], []
    for ov in overrides:
        if ov.startswith("finetune."):
            ft.append(ov[len("finetune."):])
        elif ov.startswith("rerank."):
            rr.append(ov[len("rerank."):])
        elif ov.startswith("ablation."):
            own.append(ov)
        else:
            pre.append(ov)
    return pre, ft, rr, load_ablation_config(own)


def run_ablation(shards: str | Path, out: str | Path, tokenizer_dir: str | Path | None = None,
                 config_path: str | Path | None = "configs/tiny.toml", overrides: Sequence[str] = ()) -> dict:
    from dialogbert.config import load_config as load_pretrain_config
    from dialogbert.train import pretrain
    from retrieval.encoder import Encoder
    from retrieval.evaluate import RetrievalEvaluator, evaluate
    from retrieval.examples import load_examples
    from retrieval.finetune import finetune
    from retrieval.finetune import load_config as load_finetune_config
    from retrieval.rerank import CrossEncoder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pre_ov, ft_ov, rr_ov, cfg = _split_overrides(overrides)
    own = cfg.ablation
    names, seeds, with_reranker = own.variants, own.seeds, own.reranker
    max_examples = own.max_examples or None
    sources = own.sources or None  # evaluated corpora
    save_config(cfg, out / CONFIG_FILE, "ablation")
    ft_config = own.finetune_config or None
    ft = load_finetune_config(ft_config, ft_ov)
    scored_as = dict(pooling=ft.model.pooling, context_turns=ft.data.context_turns, max_length=ft.data.max_length,
                     max_turn_tokens=ft.data.max_turn_tokens, context_prefix=ft.model.context_prefix,
                     response_prefix=ft.model.response_prefix)  # how fine-tuning will read its inputs
    init_from = load_pretrain_config(config_path, pre_ov).model.init_from
    if "not_pretrained" in names and not init_from:
        raise ValueError("ablation.variants: not_pretrained fine-tunes model.init_from, and the pretraining "
                         "config sets none (e.g. model.init_from=runs/demo/base with configs/e5.toml)")
    if tokenizer_dir is None and init_from and (Path(init_from) / "tokenizer.json").is_file():
        pass  # pretraining adopts the init's own tokenizer (dialogbert.model_init.pick_tokenizer)
    elif tokenizer_dir is None:
        tokenizer_dir = out / "tokenizer"
        if not (tokenizer_dir / "tokenizer.json").exists():
            from dialogbert.tokenizer import train_tokenizer
            train_tokenizer(shards, tokenizer_dir, vocab_size=own.vocab_size)
    t0 = time.time()
    runs: dict[str, list[dict]] = {}  # row name -> one metrics dict per seed
    base = evaluate(None, shards, None, max_examples=max_examples, baselines_only=True, sources=sources)
    for name, m in base["systems"].items():
        runs[name] = [{k: m[k] for k in KEYS}]
    ev = RetrievalEvaluator(load_examples(shards, "test", max_examples=max_examples, sources=sources))

    def add(row: str, m: dict) -> None:
        runs.setdefault(row, []).append({k: m[k] for k in KEYS if k in m})

    for seed in seeds:
        for name in names:
            run = out / name / f"seed-{seed}"
            zero = name == "no_dialog_ids"
            if VARIANTS[name] is None:  # no pretraining: the init is the same for every seed, scored once
                ckpt = Path(init_from)
                if seed == seeds[0]:
                    add(f"{name} (the init alone)", ev(EncoderScorer(Encoder.load(ckpt, **scored_as))))
            else:
                ckpt = Path(pretrain(config_path, [*pre_ov, f"run.out={run / 'pretrain'}", f"run.seed={seed}",
                                                   f"data.shards={shards}",
                                                   *([f"data.tokenizer={tokenizer_dir}"] if tokenizer_dir else []),
                                                   *VARIANTS[name]]))
                add(f"{name} (pretrained only)",
                    ev(EncoderScorer(Encoder.load(ckpt, zero_dialog_ids=zero, **scored_as))))
            ft_dir = finetune(ckpt, shards, run / "encoder", config_path=ft_config,
                              overrides=[*ft_ov, f"run.seed={seed}", f"model.zero_dialog_ids={str(zero).lower()}"])
            add(f"{name} + fine-tuned", ev(EncoderScorer(Encoder.load(ft_dir))))
            if with_reranker:
                rr_dir = finetune(ckpt, shards, run / "reranker",
                                  overrides=["model.kind=cross", *rr_ov, f"run.seed={seed}",
                                             f"model.zero_dialog_ids={str(zero).lower()}"])
                ten = FirstTen(CrossEncoder.load(rr_dir))
                add(f"{name}: re-ranker alone", ten(ev(ten)))
            _write(out, runs, base, t0, seeds)
    return _write(out, runs, base, t0, seeds)


class FirstTen:
    """Scores only the first 10 candidates (the R10 sets, nested in the R100 draw), the rest
    -inf: a cross-encoder's R10@k and MRR at a tenth of the cost; its R100 figures are dropped."""

    def __init__(self, scorer):
        self.scorer = scorer

    def score(self, contexts, candidates):
        s = np.full((len(contexts), len(candidates[0])), -np.inf, np.float32)
        s[:, :10] = self.scorer.score(contexts, [c[:10] for c in candidates])
        return s

    def __call__(self, metrics: dict) -> dict:
        return {k: v for k, v in metrics.items() if not k.startswith("R100")}


def _write(out: Path, runs: dict[str, list[dict]], base: dict, t0: float, seeds: list[int]) -> dict:
    """Per row: the mean over seeds and, with several seeds, their standard deviation."""
    rows = {}
    for name, ms in runs.items():
        keys = [k for k in KEYS if k in ms[0]]
        rows[name] = {k: round(float(np.mean([m[k] for m in ms])), 4) for k in keys}
        rows[name]["seeds"] = len(ms)
        if len(ms) > 1:
            rows[name].update({f"{k}_sd": round(float(np.std([m[k] for m in ms], ddof=1)), 4) for k in keys})
    rep = {"corpus": base["corpus"], "sizes": base["sizes"], "seeds": base["seeds"], "model_seeds": seeds,
           "seconds": round(time.time() - t0), "rows": rows, "runs": runs}
    (out / "ablation.json").write_text(json.dumps(rep, indent=2, ensure_ascii=False) + "\n", "utf-8")

    def cell(m: dict, k: str) -> str:
        if k not in m:
            return "n/a"
        return f"{m[k]:.3f} ± {m[k + '_sd']:.3f}" if k + "_sd" in m else f"{m[k]:.3f}"

    lines = [f"# Ablation: {rep['corpus']}, {rep['sizes']['test_examples']} test examples, "
             f"model seeds {', '.join(map(str, seeds))} (mean ± sd over seeds)", "",
             "| system | " + " | ".join(KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    lines += [f"| {n} | " + " | ".join(cell(m, k) for k in KEYS) + " |" for n, m in rows.items()]
    (out / "ablation.md").write_text("\n".join(lines) + "\n", "utf-8")
    print("\n".join(lines))
    return rep
