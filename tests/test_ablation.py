"""`dialogbert ablate` on the tiny shards: every variant per seed, mean ± sd, the re-ranker rows,
and a no_dialog_ids variant that really pretrains without speaker and turn ids."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ablation_table_over_seeds(tiny_shards, tmp_path):
    import torch

    from dialogbert.config import load_config
    from retrieval.ablation import KEYS, run_ablation
    from retrieval.encoder import Encoder
    from retrieval.evaluate import EncoderScorer, RetrievalEvaluator
    from retrieval.examples import load_examples

    threads = torch.get_num_threads()
    rep = run_ablation(tiny_shards, tmp_path / "abl", config_path=ROOT / "configs" / "tiny.toml", overrides=[
        "train.max_steps=12", "train.eval_every=12", "train.save_every=12", "train.eval_examples=32",
        "train.warmup_steps=2", "train.tensorboard=false", "train.plot=false", "train.progress=false",
        "ablation.variants=full,no_dialog_ids", "ablation.seeds=0,1", "ablation.reranker=true",
        "ablation.vocab_size=1000", "ablation.max_examples=150",
        "finetune.train.max_steps=6", "finetune.train.batch_size=16", "finetune.train.threads=1",
        "rerank.train.max_steps=4", "rerank.train.batch_size=4", "rerank.train.group_size=3", "rerank.train.threads=1"])
    # seed 1's fine-tuned encoder scored again, on one thread as the run scored it (finetune.train.threads=1)
    ev = RetrievalEvaluator(load_examples(tiny_shards, "test", max_examples=150))
    again = ev(EncoderScorer(Encoder.load(tmp_path / "abl" / "full" / "seed-1" / "encoder")))
    torch.set_num_threads(threads)
    rows = rep["rows"]
    for v in ("full", "no_dialog_ids"):
        for kind in ("(pretrained only)", "+ fine-tuned", ": re-ranker alone"):
            name = f"{v} {kind}" if not kind.startswith(":") else f"{v}{kind}"
            assert rows[name]["seeds"] == 2 and len(rep["runs"][name]) == 2
            for key in ("R10@1", "MRR"):  # each row is the mean and sd of its two seeds' runs
                per_seed = [run[key] for run in rep["runs"][name]]
                assert rows[name][key] == round(float(np.mean(per_seed)), 4)
                assert rows[name][f"{key}_sd"] == round(float(np.std(per_seed, ddof=1)), 4)
            assert ("R100@1" in rows[name]) == (not kind.startswith(":"))  # the re-ranker: R10 sets only
    # a run's figures are its saved encoder's, scored again on the same examples and candidates
    assert {k: again[k] for k in KEYS} == rep["runs"]["full + fine-tuned"][1]
    assert rows["TF-IDF char 1-3"]["seeds"] == 1  # baselines have no model seed
    # the two seeds are two different models
    assert rep["runs"]["full + fine-tuned"][0] != rep["runs"]["full + fine-tuned"][1]
    cfg = load_config(tmp_path / "abl" / "no_dialog_ids" / "seed-1" / "pretrain" / "config.resolved.toml")
    assert cfg.data.dialog_ids is False and cfg.run.seed == 1
    ft = json.loads((tmp_path / "abl" / "no_dialog_ids" / "seed-1" / "encoder" / "finetune.json").read_text())
    assert ft["config"]["model"]["zero_dialog_ids"] is True
    md = (tmp_path / "abl" / "ablation.md").read_text()
    assert "mean ± sd over seeds" in md and "±" in md.splitlines()[-1]


def test_the_table_gives_the_mean_and_sd_over_seeds(tmp_path):
    """Hand-made runs: two seeds of one row, one of a baseline row."""
    from retrieval.ablation import _write

    runs = {"full + fine-tuned": [{"R10@1": 0.2, "R10@5": 0.6, "R100@1": 0.1, "MRR": 0.4},
                                  {"R10@1": 0.4, "R10@5": 0.8, "R100@1": 0.1, "MRR": 0.5}],
            "TF-IDF char 1-3": [{"R10@1": 0.3, "R10@5": 0.7, "R100@1": 0.2, "MRR": 0.45}]}
    base = {"corpus": "hand-made", "sizes": {"test_examples": 4}, "seeds": {"negatives": 1}}
    rows = _write(tmp_path, runs, base, t0=0.0, seeds=[0, 1])["rows"]
    assert rows["full + fine-tuned"] == {
        "R10@1": 0.3, "R10@5": 0.7, "R100@1": 0.1, "MRR": 0.45, "seeds": 2,
        "R10@1_sd": 0.1414, "R10@5_sd": 0.1414, "R100@1_sd": 0.0, "MRR_sd": 0.0707}  # sd: |a - b| / sqrt(2)
    assert rows["TF-IDF char 1-3"] == {"R10@1": 0.3, "R10@5": 0.7, "R100@1": 0.2, "MRR": 0.45, "seeds": 1}
    md = (tmp_path / "ablation.md").read_text().splitlines()
    assert md[-2] == "| full + fine-tuned | 0.300 ± 0.141 | 0.700 ± 0.141 | 0.100 ± 0.000 | 0.450 ± 0.071 |"
    assert md[-1] == "| TF-IDF char 1-3 | 0.300 | 0.700 | 0.200 | 0.450 |"


class _ByText:
    """Scores a candidate 1 when it is the context's last turn (the true reply, in the examples
    below), else 0; ``reverse`` turns that round. Checks it sees the first ten candidates only."""

    def __init__(self, reverse=False):
        self.reverse = reverse

    def score(self, contexts, candidates):
        assert all(len(c) == 10 for c in candidates)
        hit = np.array([[c == ctx[-1][1] for c in cands] for ctx, cands in zip(contexts, candidates)], float)
        return 1.0 - hit if self.reverse else hit


def test_the_reranker_row_scores_the_first_ten_candidates_only():
    from retrieval.ablation import FirstTen
    from retrieval.evaluate import RetrievalEvaluator
    from retrieval.examples import Example

    examples = [Example([("A", f"답 {i}")], f"답 {i}") for i in range(120)]  # context = the true reply
    ev = RetrievalEvaluator(examples)
    right, wrong = FirstTen(_ByText()), FirstTen(_ByText(reverse=True))
    got = right(ev(right))
    assert (got["R10@1"], got["R10@2"], got["R10@5"], got["MRR"]) == (1.0, 1.0, 1.0, 1.0)
    assert not any(k.startswith("R100") for k in got)  # the other 90 candidates were never scored
    got = wrong(ev(wrong))  # the true reply last of ten
    assert (got["R10@1"], got["R10@5"], got["MRR"]) == (0.0, 0.0, pytest.approx(0.1))


def test_not_pretrained_fine_tunes_the_init_and_scores_it_once(tiny_shards, tmp_path):
    """The warm-start arm: no pretraining run, the init scored once with the fine-tuning recipe's
    encoder settings (prefixes, pooling), and fine-tuned once per seed from it."""
    from conftest import save_random_dialogbert

    from retrieval.ablation import run_ablation
    from retrieval.encoder import Encoder
    from retrieval.evaluate import EncoderScorer, RetrievalEvaluator
    from retrieval.examples import load_examples
    from retrieval.finetune import load_config

    init = save_random_dialogbert(tmp_path / "init", hidden=32)
    recipe = tmp_path / "ft.toml"
    recipe.write_text('[model]\ncontext_prefix = "query:"\nresponse_prefix = "passage:"\n'
                      '[data]\ncontext_turns = 2\n[train]\nmax_steps = 3\nbatch_size = 8\nthreads = 1\n')
    common = [f"model.init_from={init}", "ablation.max_examples=150", f"ablation.finetune_config={recipe}"]
    rep = run_ablation(tiny_shards, tmp_path / "abl", config_path=ROOT / "configs" / "tiny.toml",
                       overrides=[*common, "ablation.variants=not_pretrained", "ablation.seeds=0,1"])
    rows, runs = rep["rows"], rep["runs"]
    assert rows["not_pretrained (the init alone)"]["seeds"] == 1
    assert rows["not_pretrained + fine-tuned"]["seeds"] == 2
    assert not (tmp_path / "abl" / "not_pretrained" / "seed-0" / "pretrain").exists()
    assert not (tmp_path / "abl" / "tokenizer").exists()  # the init's own tokenizer is used
    ft = json.loads((tmp_path / "abl" / "not_pretrained" / "seed-1" / "encoder" / "finetune.json").read_text())
    assert ft["config"]["model"]["context_prefix"] == "query:" and ft["config"]["train"]["max_steps"] == 3
    # the init's row: the init scored with the recipe's prefixes and turns, not its bare defaults
    d = load_config(recipe)
    ev = RetrievalEvaluator(load_examples(tiny_shards, "test", max_examples=150))
    as_recipe = ev(EncoderScorer(Encoder.load(init, context_prefix="query:", response_prefix="passage:",
                                              context_turns=2, pooling=d.model.pooling, max_length=d.data.max_length,
                                              max_turn_tokens=d.data.max_turn_tokens)))
    assert runs["not_pretrained (the init alone)"][0]["MRR"] == as_recipe["MRR"]
    with pytest.raises(ValueError, match="not_pretrained fine-tunes model.init_from"):
        run_ablation(tiny_shards, tmp_path / "abl2", config_path=ROOT / "configs" / "tiny.toml",
                     overrides=["ablation.variants=not_pretrained"])
