"""One command, one table: which parts of DialogBERT pretraining matter for response selection?

    dialogbert ablate --shards DIR --out DIR [--config configs/tiny.toml] [overrides...]

Variants (each pretrained with ``dialogbert.train.pretrain`` and the same config/seed):

* ``full``            MLM + next-turn prediction, speaker and turn ids on;
* ``mlm_only``        ``objectives.next_turn=false``   (is next-turn prediction needed?);
* ``next_turn_only``  ``objectives.mlm=false``;
* ``no_dialog_ids``   the ``full`` checkpoint with speaker (token type) and turn ids zeroed at
  fine-tuning and evaluation (the encoder flag ``zero_dialog_ids``; pretraining has no such
  switch yet, so this isolates what the ids add downstream, not in pretraining).

Each is evaluated as pretrained (mean pooling, no fine-tuning) and fine-tuned as a dual
encoder (retrieval.finetune), on the same test examples and candidate sets as the baselines.

Overrides: ``section.key=value`` go to pretraining; ``finetune.section.key=value`` to
fine-tuning; ``ablation.variants=full,mlm_only``, ``ablation.max_examples=N`` and
``ablation.vocab_size=N`` steer this command.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

VARIANTS: dict[str, list[str]] = {
    "full": [],
    "mlm_only": ["objectives.next_turn=false"],
    "next_turn_only": ["objectives.mlm=false"],
    "no_dialog_ids": [],  # reuses the full checkpoint; ids zeroed downstream
}
KEYS = ("R10@1", "R10@5", "R100@1", "MRR")


def _split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str], dict[str, str]]:
    pre, ft, own = [], [], {}
    for ov in overrides:
        if ov.startswith("finetune."):
            ft.append(ov[len("finetune."):])
        elif ov.startswith("ablation."):
            k, _, v = ov[len("ablation."):].partition("=")
            if k not in ("variants", "max_examples", "vocab_size"):
                raise ValueError(f"override {ov!r}: known ablation keys are variants, max_examples, vocab_size")
            own[k] = v
        else:
            pre.append(ov)
    return pre, ft, own


def run_ablation(shards: str | Path, out: str | Path, tokenizer_dir: str | Path | None = None,
                 config_path: str | Path | None = "configs/tiny.toml", overrides: Sequence[str] = ()) -> dict:
    from dialogbert.train import pretrain
    from retrieval.encoder import Encoder
    from retrieval.evaluate import evaluate
    from retrieval.finetune import finetune

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pre_ov, ft_ov, own = _split_overrides(overrides)
    names = [v for v in own.get("variants", ",".join(VARIANTS)).split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown ablation variants {unknown}; known: {list(VARIANTS)}")
    max_examples = int(own["max_examples"]) if own.get("max_examples") else None
    if tokenizer_dir is None:
        tokenizer_dir = out / "tokenizer"
        if not (tokenizer_dir / "tokenizer.json").exists():
            from dialogbert.tokenizer import train_tokenizer
            train_tokenizer(shards, tokenizer_dir, vocab_size=int(own.get("vocab_size", 8000)))
    t0 = time.time()
    rows: dict[str, dict] = {}
    base = evaluate(None, shards, None, max_examples=max_examples, baselines_only=True)
    rows.update({name: {k: m[k] for k in KEYS} for name, m in base["systems"].items()})
    ckpts: dict[str, Path] = {}
    for name in names:
        src = "full" if name == "no_dialog_ids" else name
        if src not in ckpts:
            ckpts[src] = Path(pretrain(config_path, [*pre_ov, f"run.out={out / src / 'pretrain'}",
                                                     f"data.shards={shards}", f"data.tokenizer={tokenizer_dir}",
                                                     *VARIANTS[src]]))
        zero = name == "no_dialog_ids"
        enc = Encoder.load(ckpts[src], zero_dialog_ids=zero)
        m = evaluate(None, shards, None, max_examples=max_examples, encoder=enc, name=name,
                     baselines=False)["systems"][name]
        rows[f"{name} (pretrained only)"] = {k: m[k] for k in KEYS}
        ft_dir = finetune(ckpts[src], shards, out / name / "encoder",
                          overrides=[*ft_ov, f"model.zero_dialog_ids={str(zero).lower()}"])
        m = evaluate(ft_dir, shards, None, max_examples=max_examples, baselines=False, name=name)["systems"][name]
        rows[f"{name} + fine-tuned"] = {k: m[k] for k in KEYS}
        _write(out, rows, base, t0)
    return _write(out, rows, base, t0)


def _write(out: Path, rows: dict, base: dict, t0: float) -> dict:
    rep = {"corpus": base["corpus"], "sizes": base["sizes"], "seeds": base["seeds"],
           "seconds": round(time.time() - t0), "rows": rows}
    (out / "ablation.json").write_text(json.dumps(rep, indent=2, ensure_ascii=False) + "\n", "utf-8")
    lines = [f"# Ablation: {rep['corpus']}, {rep['sizes']['test_examples']} test examples", "",
             "| system | " + " | ".join(KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    lines += [f"| {n} | " + " | ".join(f"{m[k]:.3f}" for k in KEYS) + " |" for n, m in rows.items()]
    (out / "ablation.md").write_text("\n".join(lines) + "\n", "utf-8")
    print("\n".join(lines))
    return rep
