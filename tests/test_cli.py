"""The command line: every stage is reachable, and mistakes are reported, not tracebacks."""
from __future__ import annotations

import subprocess
import sys

import pytest

from dialogbert.cli import build_parser, main

STAGES = ["preprocess", "tokenizer", "base", "pretrain", "finetune", "index", "eval", "adversarial", "ablate", "serve", "demo"]


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "dialogbert.cli", "--help"], capture_output=True, text=True, check=True)
    for name in STAGES:
        assert name in out.stdout


def test_deepspeed_launcher_local_rank_is_accepted():
    args = build_parser().parse_args(["--local_rank=1", "pretrain", "--config", "c.toml", "train.max_steps=3"])
    assert args.command == "pretrain" and args.overrides == ["train.max_steps=3"]


def test_malformed_override_is_refused(capsys):
    with pytest.raises(SystemExit, match="key=value"):
        main(["pretrain", "--config", "configs/tiny.toml", "max_steps"])


def test_missing_shards_folder_is_a_clear_error(tmp_path, capsys):
    code = main(["tokenizer", "--shards", str(tmp_path / "nope"), "--out", str(tmp_path / "tok")])
    assert code == 2
    assert "nope" in capsys.readouterr().err


def test_index_passes_the_ngram_heads_and_morphemes_to_the_ranker_fit_and_refuses_zero_heads(recorded, tmp_path, capsys):
    calls = recorded
    args = ["index", "--model", "m", "--shards", "s", "--out", str(tmp_path / "idx")]
    assert main(args + ["--ngram-heads", "2"]) == 0
    assert calls["fit"][1]["ngram_settings"].heads == 2
    # the dialog model is loaded once: the index is built with it and the ranker fitted with it
    assert calls["fit"][1]["encoder"] is calls["built"][1]["encoder"] is not None
    calls.clear()
    assert main(args) == 0
    from retrieval.ngram import NgramSettings
    assert calls["fit"][1]["ngram_settings"].heads == NgramSettings().heads == 4
    assert calls["fit"][1]["ngram_settings"].morphemes is NgramSettings().morphemes is True
    calls.clear()
    assert main(args + ["--no-morphemes"]) == 0
    assert calls["fit"][1]["ngram_settings"].morphemes is False
    calls.clear()
    assert main(args + ["--ngram-heads", "0"]) == 2
    assert "at least one head" in capsys.readouterr().err and not calls  # nothing built


def test_base_needs_a_corpus_or_full_and_names_what_is_missing(tmp_path, capsys):
    assert main(["base", "--out", str(tmp_path / "base")]) == 2
    assert "--shards" in capsys.readouterr().err and not (tmp_path / "base").exists()


def test_e5_resolves_to_the_converted_folder(monkeypatch, tmp_path):
    from dialogbert import e5
    from dialogbert.peers import resolve_model
    monkeypatch.setattr(e5, "cached", lambda weights=None: tmp_path / "converted")
    assert resolve_model("e5") == resolve_model("multilingual-e5-small") == str(tmp_path / "converted")
    assert resolve_model(str(tmp_path / "mine")) == str(tmp_path / "mine")
