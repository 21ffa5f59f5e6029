"""`dialogbert ablate` on the tiny shards: every variant per seed, mean ± sd, the re-ranker rows,
and a no_dialog_ids variant that really pretrains without speaker and turn ids."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ablation_table_over_seeds(tiny_shards, tmp_path):
    import torch

    from dialogbert.config import load_config
    from retrieval.ablation import run_ablation

    threads = torch.get_num_threads()
    rep = run_ablation(tiny_shards, tmp_path / "abl", config_path=ROOT / "configs" / "tiny.toml", overrides=[
        "train.max_steps=12", "train.eval_every=12", "train.save_every=12", "train.eval_examples=32",
        "train.warmup_steps=2", "train.tensorboard=false", "train.plot=false", "train.progress=false",
        "ablation.variants=full,no_dialog_ids", "ablation.seeds=0,1", "ablation.reranker=true",
        "ablation.vocab_size=1000", "ablation.max_examples=150",
        "finetune.train.max_steps=6", "finetune.train.batch_size=16", "finetune.train.threads=1",
        "rerank.train.max_steps=4", "rerank.train.batch_size=4", "rerank.train.group_size=3", "rerank.train.threads=1"])
    torch.set_num_threads(threads)
    rows = rep["rows"]
    for v in ("full", "no_dialog_ids"):
        for kind in ("(pretrained only)", "+ fine-tuned", ": re-ranker alone"):
            name = f"{v} {kind}" if not kind.startswith(":") else f"{v}{kind}"
            assert rows[name]["seeds"] == 2 and len(rep["runs"][name]) == 2
            assert 0.0 <= rows[name]["R10@1"] <= 1.0 and "R10@1_sd" in rows[name]
            assert ("R100@1" in rows[name]) == (not kind.startswith(":"))  # the re-ranker: R10 sets only
    assert rows["TF-IDF char 1-3"]["seeds"] == 1  # baselines have no model seed
    # the two seeds are two different models
    assert rep["runs"]["full + fine-tuned"][0] != rep["runs"]["full + fine-tuned"][1]
    cfg = load_config(tmp_path / "abl" / "no_dialog_ids" / "seed-1" / "pretrain" / "config.resolved.toml")
    assert cfg.data.dialog_ids is False and cfg.run.seed == 1
    ft = json.loads((tmp_path / "abl" / "no_dialog_ids" / "seed-1" / "encoder" / "finetune.json").read_text())
    assert ft["config"]["model"]["zero_dialog_ids"] is True
    md = (tmp_path / "abl" / "ablation.md").read_text()
    assert "mean ± sd over seeds" in md and "±" in md.splitlines()[-1]
