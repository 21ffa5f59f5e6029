"""One configuration system: every command's settings are typed sections read by one loader
(dialogbert.config: defaults, a TOML file, dotted overrides), its flags shorthands for overrides,
the demo's index recipe a file in configs/, the resolved config saved beside the artifact, and
yes/no values read one way."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from dialogbert.cli import build_parser, main, shorthand_overrides, INDEX_FLAGS, EVAL_FLAGS, SERVE_FLAGS
from dialogbert.config import parse_bool, read_config

ROOT = Path(__file__).resolve().parent.parent


# ---- overrides parse and type-check -----------------------------------------------------------

def test_index_overrides_are_typed_and_a_wrong_key_or_value_names_the_key():
    from retrieval.settings import load_index_config
    cfg = load_index_config(None, ["ngram.orders=1,2", "ngram.heads=2", "ngram.lr=1e-2", "use.epochs=1",
                                   "index.factory=IVF16,PQ8", "ranker.enabled=false"])
    assert cfg.ngram_settings().orders == (1, 2) and cfg.ngram_settings().heads == 2
    assert cfg.ngram_settings().lr == 0.01 and cfg.use_settings().epochs == 1
    assert cfg.index.factory == "IVF16,PQ8" and cfg.ranker.enabled is False
    with pytest.raises(ValueError, match=r"ngram\.nope.*valid keys in \[ngram\]: enabled, buckets"):
        load_index_config(None, ["ngram.nope=1"])
    with pytest.raises(ValueError, match=r"ngram\.heads: expected an integer, got 'two'"):
        load_index_config(None, ["ngram.heads=two"])
    with pytest.raises(ValueError, match=r"ngram\.orders: expected an integer"):
        load_index_config(None, ["ngram.orders=1,x"])
    with pytest.raises(ValueError, match=r"unknown config section 'ranking'"):
        load_index_config(None, ["ranking.enabled=false"])
    with pytest.raises(ValueError, match=r"\[ngram\].*at least one head"):
        load_index_config(None, ["ngram.heads=0"])


def test_a_wrong_key_or_value_in_a_file_names_the_key_and_the_file(tmp_path):
    from retrieval.settings import load_eval_config, load_index_config
    from bot.settings import load_serve_config
    bad = tmp_path / "bad.toml"
    bad.write_text("[ngram]\nheads = \"four\"\n")
    with pytest.raises(ValueError, match=rf"{bad}.*ngram\.heads: expected an integer"):
        load_index_config(bad)
    bad.write_text("[ngram]\norders = [1, \"2\"]\n")
    with pytest.raises(ValueError, match=rf"{bad}.*ngram\.orders: expected a list of integers"):
        load_index_config(bad)
    bad.write_text("[use]\nepoch = 1\n")
    with pytest.raises(ValueError, match=rf"{bad}.*'use\.epoch'.*valid keys in \[use\]"):
        load_index_config(bad)
    bad.write_text("[eval]\npeer = \"yes\"\nreport = \"r\"\nshards = \"s\"\n")  # TOML has its own booleans
    with pytest.raises(ValueError, match=rf"{bad}.*eval\.peer: expected true/false"):
        load_eval_config(bad)
    bad.write_text("[serve]\nport = 80.5\nindex = \"i\"\n")
    with pytest.raises(ValueError, match=rf"{bad}.*serve\.port: expected an integer"):
        load_serve_config(bad)
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        load_index_config(tmp_path / "nope.toml")


def test_ablation_keys_are_a_typed_section():
    from retrieval.ablation import _split_overrides
    pre, ft, rr, cfg = _split_overrides(["train.lr=1e-3", "finetune.train.max_steps=6", "rerank.train.lr=1e-5",
                                         "ablation.seeds=0,1,2", "ablation.variants=full,mlm_only",
                                         "ablation.reranker=yes", "ablation.max_examples=150",
                                         "ablation.sources=xpersona", "ablation.vocab_size=1000"])
    assert (pre, ft, rr) == (["train.lr=1e-3"], ["train.max_steps=6"], ["train.lr=1e-5"])
    a = cfg.ablation
    assert (a.seeds, a.variants, a.reranker, a.max_examples, a.sources, a.vocab_size) == (
        [0, 1, 2], ["full", "mlm_only"], True, 150, ["xpersona"], 1000)
    d = _split_overrides([])[3].ablation  # the defaults are the command's old ones
    assert (d.seeds, d.variants, d.reranker, d.max_examples, d.sources, d.vocab_size) == (
        [0], ["full", "mlm_only", "next_turn_only", "no_dialog_ids"], False, 0, [], 8000)
    with pytest.raises(ValueError, match=r"ablation\.seeds: expected an integer, got 'a'"):
        _split_overrides(["ablation.seeds=0,a"])
    with pytest.raises(ValueError, match=r"'ablation\.seed'.*valid keys in \[ablation\]: variants, seeds"):
        _split_overrides(["ablation.seed=1"])
    with pytest.raises(ValueError, match=r"ablation\.variants.*'nope'"):
        _split_overrides(["ablation.variants=full,nope"])


# ---- flags are shorthands for overrides -------------------------------------------------------

def test_index_flags_map_onto_overrides(recorded, tmp_path):
    args = build_parser().parse_args(["index", "--model", "m", "--shards", "s", "--out", "o", "--factory", "HNSW32",
                                      "--gpu", "--reranker", "rr", "--no-ranker", "--no-ngram", "--ngram-heads", "2",
                                      "--no-morphemes", "--no-use"])
    assert shorthand_overrides(args, INDEX_FLAGS) == [
        "index.factory=HNSW32", "index.gpu=true", "ranker.reranker=rr", "ranker.enabled=false",
        "ngram.enabled=false", "ngram.heads=2", "ngram.morphemes=false", "use.enabled=false"]
    none = build_parser().parse_args(["index", "--model", "m", "--shards", "s", "--out", "o"])
    assert shorthand_overrides(none, INDEX_FLAGS) == []
    # a flag and its override reach the ranker's fit alike
    base = ["index", "--model", "m", "--shards", "s"]
    assert main([*base, "--out", str(tmp_path / "a"), "--no-use", "--ngram-heads", "2", "--reranker", "rr"]) == 0
    by_flags = recorded.pop("fit")
    recorded.clear()
    assert main([*base, "--out", str(tmp_path / "a"), "use.enabled=false", "ngram.heads=2", "ranker.reranker=rr"]) == 0
    assert recorded["fit"] == by_flags
    assert by_flags[1]["use"] is False and by_flags[1]["ngram_settings"].heads == 2
    assert by_flags[1]["reranker_dir"] == "rr"
    recorded.clear()
    assert main([*base, "--out", str(tmp_path / "b"), "--no-ranker", "--factory", "HNSW32"]) == 0
    assert "fit" not in recorded and recorded["built"][1]["factory"] == "HNSW32"
    assert recorded["built"][1]["memory"] is True
    recorded.clear()
    assert main([*base, "--out", str(tmp_path / "c"), "index.memory=false"]) == 0
    assert recorded["built"][1]["memory"] is False


def test_flags_override_the_file_and_dotted_overrides_override_the_flags(recorded, tmp_path):
    base = ["index", "--model", "m", "--shards", "s", "--out", str(tmp_path / "i"),
            "--config", str(ROOT / "configs" / "index_demo.toml")]
    assert main([*base, "--factory", "HNSW32"]) == 0
    assert recorded["built"][1]["factory"] == "HNSW32"
    assert recorded["fit"][1]["ngram_settings"].max_minutes == 5.0  # the file's value holds
    recorded.clear()
    assert main([*base, "--factory", "HNSW32", "index.factory=IVF16,Flat", "ngram.max_minutes=1"]) == 0
    assert recorded["built"][1]["factory"] == "IVF16,Flat"
    assert recorded["fit"][1]["ngram_settings"].max_minutes == 1.0


def test_eval_flags_map_onto_overrides(monkeypatch, tmp_path):
    import retrieval.evaluate
    import retrieval.fixed
    args = build_parser().parse_args(["eval", "--model", "m", "--shards", "s", "--report", "r", "--max-examples", "5",
                                      "--peer", "--source", "chatbotdata", "--source", "chitchat"])
    assert shorthand_overrides(args, EVAL_FLAGS) == ["eval.model=m", "eval.shards=s", "eval.report=r",
                                                     "eval.max_examples=5", "eval.peer=true",
                                                     "eval.sources=chatbotdata,chitchat"]
    seen = {}
    monkeypatch.setattr(retrieval.evaluate, "evaluate", lambda *a, **k: seen.setdefault("eval", (a, k)) and {})
    monkeypatch.setattr(retrieval.fixed, "evaluate_fixed", lambda *a, **k: seen.setdefault("fixed", (a, k)) and {})
    report = tmp_path / "r"
    assert main(["eval", "--model", "m", "--shards", "s", "--report", str(report), "--source", "chitchat",
                 "--peer"]) == 0
    # what the command passed before it had a config
    assert seen.pop("eval") == (("m", "s", str(report)), {"index_dir": None, "max_examples": None, "baselines_only": False,
                                                          "sources": ["chitchat"], "reranker": None, "peer": True,
                                                          "precision": "auto"})
    assert main(["eval", "--shards", "s", "--report", str(report)]) == 0
    assert seen.pop("eval")[1]["baselines_only"] is True
    assert main(["eval", "--candidates", "c.jsonl", "--report", str(report), "eval.max_examples=7"]) == 0
    assert seen.pop("fixed") == (("c.jsonl", str(report)), {"model": None, "index_dir": None, "shards": None,
                                                            "max_examples": 7, "reranker": None, "peer": False,
                                                            "precision": "auto"})
    assert main(["eval", "--model", "m", "--shards", "s", "--report", str(report), "--precision", "fp32"]) == 0
    assert seen.pop("eval")[1]["precision"] == "fp32"
    assert main(["eval", "--shards", "s", "--report", str(report), "eval.precision=fp16"]) == 2  # refused
    assert main(["eval", "--report", str(report)]) == 2  # neither shards nor candidates
    assert main(["eval", "--shards", "s"]) == 2          # no report folder


def test_serve_flags_map_onto_overrides(monkeypatch, tmp_path):
    import bot.server
    args = build_parser().parse_args(["serve", "--index", "i", "--port", "8123", "--rate-limit", "", "--threads", "8",
                                      "--behind-proxies", "1"])
    assert shorthand_overrides(args, SERVE_FLAGS) == ["serve.index=i", "serve.port=8123", "serve.threads=8",
                                                      "serve.rate_limit=", "serve.behind_proxies=1"]
    seen = []
    monkeypatch.setattr(bot.server, "serve", lambda config, **kw: seen.append((config, kw)) or 0)
    cfg = tmp_path / "serve.toml"
    cfg.write_text('[serve]\nindex = "runs/x/index"\nport = 9000\nrate_limit = "5/second"\n')
    assert main(["serve", "--config", str(cfg), "--port", "8123"]) == 0
    config, kw = seen.pop()
    assert config == {"INDEX_DIR": "runs/x/index", "MODEL_DIR": None, "RERANKER_DIR": None, "PRECISION": "auto",
                      "RATE_LIMIT": "5/second"}
    assert kw["port"] == 8123
    # no config: the server's own defaults
    assert main(["serve", "--index", "i"]) == 0
    config, kw = seen.pop()
    assert config == {"INDEX_DIR": "i", "MODEL_DIR": None, "RERANKER_DIR": None, "PRECISION": "auto"}
    assert kw == {"host": "127.0.0.1", "port": 8000, "threads": bot.server.THREADS,
                  "connection_limit": bot.server.CONNECTION_LIMIT, "channel_timeout": bot.server.CHANNEL_TIMEOUT}
    assert main(["serve"]) == 2  # no index
    assert main(["serve", "--index", "i", "--precision", "fp32", "--batch-wait-ms", "5", "--search-workers", "3"]) == 0
    config, _ = seen.pop()
    assert config["PRECISION"] == "fp32" and config["SEARCH_BATCH_WAIT_MS"] == 5.0 and config["SEARCH_WORKERS"] == 3
    assert main(["serve", "--index", "i", "serve.search_workers=-1"]) == 2
    assert main(["serve", "--index", "i", "serve.precision=fp16"]) == 2  # refused, naming the key


# ---- the demo's recipe -------------------------------------------------------------------------

def test_the_demo_recipe_file_is_what_the_demo_ran_before():
    """configs/index_demo.toml against the literal call demo.py made before it read the file,
    less the context memory (index.memory=false since), with the replies encoded in bf16 where
    native (index.precision=auto since) and the USE towers trained briefly (since 2026-12-06):
    build_index(encoder, shards, index, factory="Flat", memory=False, precision="auto");
    fit_for_index(index, shards, use=True, use_settings=UseSettings(epochs=1, max_pairs=16_000,
    max_minutes=5.0), ngram_settings=NgramSettings(max_minutes=5.0))."""
    from dialogbert import demo
    from retrieval.ngram import NgramSettings
    from retrieval.ranking.build import fit_for_index
    from retrieval.settings import load_index_config
    from retrieval.use import UseSettings
    assert demo.INDEX_CONFIG == ROOT / "configs" / "index_demo.toml"
    cfg = load_index_config(demo.INDEX_CONFIG)
    build = inspect.signature(__import__("retrieval.index", fromlist=["build_index"]).build_index)
    before = build.bind("enc", "shards", "index", factory="Flat", memory=False, precision="auto")
    now = build.bind("enc", "shards", "index", factory=cfg.index.factory, gpu=cfg.index.gpu, add=False,
                     batch_size=cfg.index.batch_size, memory=cfg.index.memory, precision=cfg.index.precision)
    before.apply_defaults(), now.apply_defaults()
    assert before.arguments == now.arguments
    fit = inspect.signature(fit_for_index)
    before = fit.bind("index", "shards", use=True, ngram_settings=NgramSettings(max_minutes=5.0),
                      use_settings=UseSettings(epochs=1, max_pairs=16_000, max_minutes=5.0))
    now = fit.bind("index", "shards", **cfg.fit_kwargs())
    before.apply_defaults(), now.apply_defaults()
    assert before.arguments == now.arguments
    assert now.arguments["ngram_settings"] == NgramSettings(max_minutes=5.0)


def test_the_demo_index_stage_is_the_command_with_the_recipe(recorded, monkeypatch, tmp_path):
    """`dialogbert index --config configs/index_demo.toml ...` calls what the demo's stage calls."""
    from dialogbert.cli import index_stage
    from retrieval.settings import load_index_config
    index_stage(load_index_config(ROOT / "configs" / "index_demo.toml"), "enc", "shards", str(tmp_path / "a"))
    by_demo = dict(recorded)
    recorded.clear()
    assert main(["index", "--config", "configs/index_demo.toml", "--model", "enc", "--shards", "shards",
                 "--out", str(tmp_path / "a")]) == 0
    assert recorded == by_demo
    assert "index_stage(load_index_config(INDEX_CONFIG)" in (ROOT / "dialogbert" / "demo.py").read_text()


# ---- the resolved config is saved beside the artifact ------------------------------------------

def test_the_resolved_index_config_is_saved_and_reruns_the_same(recorded, tmp_path):
    from retrieval.settings import CONFIG_FILE, load_index_config
    out = tmp_path / "idx"
    assert main(["index", "--model", "m", "--shards", "s", "--out", str(out), "--no-use", "ngram.max_minutes=3"]) == 0
    saved = out / CONFIG_FILE
    again = load_index_config(saved)
    assert again.to_dict() == load_index_config(None, ["use.enabled=false", "ngram.max_minutes=3"]).to_dict()
    first = recorded["fit"]
    recorded.clear()
    assert main(["index", "--model", "m", "--shards", "s", "--out", str(tmp_path / "idx2"), "--config", str(saved)]) == 0
    assert recorded["fit"][1] == first[1]
    # --add appends to the index: its recipe is the one saved when it was built
    saved.write_text("# kept\n")
    recorded.clear()
    assert main(["index", "--model", "m", "--shards", "s", "--out", str(out), "--add"]) == 0
    assert "update" in recorded and saved.read_text() == "# kept\n"


def test_the_resolved_eval_config_is_saved(monkeypatch, tmp_path):
    import retrieval.evaluate
    from retrieval.settings import CONFIG_FILE, load_eval_config
    monkeypatch.setattr(retrieval.evaluate, "evaluate", lambda *a, **k: {})
    report = tmp_path / "report"
    assert main(["eval", "--shards", "s", "--report", str(report), "--max-examples", "9"]) == 0
    cfg = load_eval_config(report / CONFIG_FILE)
    assert (cfg.eval.shards, cfg.eval.report, cfg.eval.max_examples) == ("s", str(report), 9)


def test_the_resolved_ablation_config_is_saved(monkeypatch, tmp_path):
    import retrieval.evaluate
    from retrieval.ablation import CONFIG_FILE, run_ablation

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop
    monkeypatch.setattr(retrieval.evaluate, "evaluate", stop)  # the first evaluation: stop there
    with pytest.raises(Stop):
        run_ablation("shards", tmp_path / "abl", tokenizer_dir=tmp_path / "tok",
                     overrides=["ablation.seeds=3,4", "ablation.reranker=on"])
    cfg = read_config(tmp_path / "abl" / CONFIG_FILE, cls=__import__("retrieval.ablation", fromlist=["x"]).AblationConfig)
    assert cfg.ablation.seeds == [3, 4] and cfg.ablation.reranker is True


def test_every_config_in_configs_loads_with_its_command_loader():
    from dialogbert.config import load_config as load_pretrain
    from retrieval.finetune import load_config as load_finetune
    from retrieval.settings import load_index_config
    for path in sorted((ROOT / "configs").glob("*.toml")):
        if path.name.startswith("index"):
            load_index_config(path)
        elif path.name.startswith(("finetune", "rerank")):
            load_finetune(path)
        else:
            load_pretrain(path)


def test_the_long_fine_tuning_recipe_is_the_demos_with_more_time():
    from retrieval.finetune import load_config as load_finetune
    demo = load_finetune(ROOT / "configs" / "finetune_e5.toml").to_dict()
    long = load_finetune(ROOT / "configs" / "finetune_e5_long.toml").to_dict()
    assert (long["train"].pop("max_minutes"), long["train"].pop("max_steps")) == (45.0, 1200)
    assert (demo["train"].pop("max_minutes"), demo["train"].pop("max_steps")) == (17.0, 620)
    assert long == demo


# ---- yes/no values parse one way ---------------------------------------------------------------

@pytest.mark.parametrize("text,value", [("true", True), ("True", True), ("1", True), ("yes", True), ("ON", True),
                                        ("false", False), ("0", False), ("no", False), ("Off", False)])
def test_yes_no_values_parse_one_way_in_every_command(text, value):
    from dialogbert.config import load_config as load_pretrain
    from retrieval.ablation import load_ablation_config
    from retrieval.finetune import load_config as load_finetune
    from retrieval.settings import load_eval_config, load_index_config
    from bot.settings import load_serve_config
    assert parse_bool(text, "k") is value
    assert load_pretrain(None, [f"train.tensorboard={text}"]).train.tensorboard is value
    assert load_finetune(None, [f"model.zero_dialog_ids={text}"]).model.zero_dialog_ids is value
    assert load_index_config(None, [f"ngram.morphemes={text}"]).ngram.morphemes is value
    assert load_ablation_config([f"ablation.reranker={text}"]).ablation.reranker is value
    assert load_eval_config(None, ["eval.report=r", "eval.shards=s", f"eval.peer={text}"]).eval.peer is value
    assert load_serve_config(None, ["serve.index=i", f"serve.port=1"]).serve.port == 1


def test_a_yes_no_value_that_is_neither_is_refused_by_name():
    from retrieval.ablation import load_ablation_config
    with pytest.raises(ValueError, match=r"ablation\.reranker: expected true/false, got 'maybe'"):
        load_ablation_config(["ablation.reranker=maybe"])
    with pytest.raises(ValueError, match="k: expected true/false"):
        parse_bool("y", "k")


def test_no_module_reads_yes_no_text_by_itself():
    """dialogbert.config.parse_bool is the one reader: no other source compares text to yes/true."""
    hits = []
    for pkg in ("preprocess", "dialogbert", "retrieval", "bot"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path == ROOT / "dialogbert" / "config.py":
                continue
            text = path.read_text("utf-8")
            if '"yes"' in text or "'yes'" in text or '("1", "true"' in text:
                hits.append(str(path.relative_to(ROOT)))
    assert not hits, f"yes/no text parsed outside dialogbert.config.parse_bool: {hits}"


def test_a_precision_outside_the_known_ones_is_refused_naming_its_key():
    """One check (retrieval.encoder.check_precision) behind every stage's precision key."""
    from bot.settings import load_serve_config
    from retrieval.finetune import load_config
    from retrieval.settings import load_eval_config, load_index_config
    loaders = [("index.precision", lambda o: load_index_config(None, o)),
               ("eval.precision", lambda o: load_eval_config(None, ["eval.report=r", "eval.shards=s", *o])),
               ("serve.precision", lambda o: load_serve_config(None, ["serve.index=i", *o])),
               ("train.precision", lambda o: load_config(None, o))]
    for key, load in loaders:
        with pytest.raises(ValueError, match=rf"{key}='fp16': use one of fp32, bf16, auto"):
            load([f"{key}=fp16"])
        load([f"{key}=bf16"])  # a known one passes
