"""Pretraining: config, schedule, a tiny run that does not diverge, a small corpus it learns,
exact resume, HF export,
switchable objectives, init_from a plain BERT. CPU, fp32, 1 thread."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import read_log, tiny_pretrain_overrides as tiny, train_losses
from dialogbert import train as train_mod
from dialogbert.config import Config, TrainSection, apply_overrides, load_config
from dialogbert.train import lr_at, pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # torch on 1 thread, restored after the module


# ------------------------------------------------------------------------------ config
def test_overrides_are_typed():
    cfg = apply_overrides(Config(), ["train.lr=3e-4", "train.max_steps=1e3", "objectives.mlm=false",
                                     "train.precision=bf16", "data.batch_size=8"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 1000 and isinstance(cfg.train.max_steps, int)
    assert cfg.objectives.mlm is False and cfg.train.precision == "bf16"
    assert cfg.data_config().batch_size == 8 and cfg.data_config().mlm is False
    with pytest.raises(ValueError, match="expected an integer"):
        apply_overrides(Config(), ["train.max_steps=1.5"])
    with pytest.raises(ValueError, match="true/false"):
        apply_overrides(Config(), ["objectives.mlm=maybe"])
    # a string written as in TOML, quotes and all (a shell passes 'key=""' so): its value, not its quotes
    assert apply_overrides(Config(), ['train.precision=""']).train.precision == ""
    assert apply_overrides(Config(), ["train.precision='bf16'"]).train.precision == "bf16"
    assert apply_overrides(Config(), ['train.precision="a b"']).train.precision == "a b"
    assert apply_overrides(Config(), ["train.precision="]).train.precision == ""
    with pytest.raises(ValueError, match="not a TOML string"):
        apply_overrides(Config(), ['train.precision="a"b"'])


def test_list_overrides_take_commas_or_a_toml_array():
    from retrieval.finetune import load_config as finetune_config
    for text in ("chatbotdata,xpersona", '["chatbotdata", "xpersona"]', "[ 'chatbotdata','xpersona' ]"):
        assert finetune_config(None, [f"data.sources={text}"]).data.sources == ["chatbotdata", "xpersona"], text
    assert finetune_config(None, ["data.sources=[]"]).data.sources == []
    with pytest.raises(ValueError, match=r"data\.sources.*not a TOML array"):
        finetune_config(None, ['data.sources=["chatbotdata"'])
    with pytest.raises(ValueError, match=r"data\.sources: expected a list of strings"):
        finetune_config(None, ["data.sources=[1, 2]"])


def test_unknown_keys_are_rejected_with_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"train\.lrr.*max_steps.*warmup_steps"):
        apply_overrides(Config(), ["train.lrr=1"])
    with pytest.raises(ValueError, match="unknown config section 'optim'"):
        apply_overrides(Config(), ["optim.lr=1"])
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nhidden_size = 64\nnum_layers = 2\n')
    with pytest.raises(ValueError, match=r"bad\.toml.*model\.num_layers.*num_hidden_layers"):
        load_config(bad)


def test_config_file_paths_and_checks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.toml", ["run.out=here"])
    assert cfg.run.out == str(tmp_path / "here")
    assert Path(cfg.data.shards).is_absolute()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        load_config(None, ["data.max_length=512", "model.max_position_embeddings=128"])
    with pytest.raises(ValueError, match="both false"):
        load_config(None, ["objectives.mlm=false", "objectives.next_turn=false"])


def test_lr_schedule():
    t = TrainSection(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, t) == pytest.approx(1e-4)
    assert lr_at(4, t) == pytest.approx(5e-4)
    assert lr_at(9, t) == pytest.approx(1e-3)
    assert lr_at(10, t) == pytest.approx(1e-3)
    assert lr_at(60, t) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way through the cosine
    assert lr_at(110, t) == pytest.approx(1e-4)
    assert lr_at(500, t) == pytest.approx(1e-4)
    lrs = [lr_at(s, t) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lr_at(0, TrainSection(warmup_steps=0, lr=1.0, max_steps=10)) == pytest.approx(1.0)


# ------------------------------------------------------------------------------ runs
@pytest.fixture(scope="module")
def tiny_run(tiny_shards, pretrain_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_run")
    final = pretrain(None, tiny(tiny_shards, pretrain_tokenizer, out, train__max_steps=50,
                                train__eval_every=25, train__save_every=25, train__plot=True,
                                train__tensorboard=True))
    return out, final


@pytest.mark.xdist_group("tiny_run")  # one worker builds the module fixture once
def test_tiny_run_loss_does_not_climb_and_writes_a_run_folder(tiny_run):
    out, final = tiny_run
    assert final == out / "checkpoints" / "step-50"
    losses = train_losses(out)
    assert sorted(losses) == list(range(1, 51))
    first = sum(losses[s] for s in range(1, 11)) / 10
    last = sum(losses[s] for s in range(41, 51)) / 10
    # The MLM bias starts at the unigram prior (test_fresh_model_starts_at_the_unigram_prior), so
    # the loss starts at the unigram level instead of ln(vocab); 50 steps of a 0.2M model do not
    # get far below it (the demo's 500 steps do), but the loss must not climb (the margin covers
    # the run-to-run spread from the tokenizer, whose training is not deterministic upstream:
    # huggingface/tokenizers#1794).
    assert last < first + 0.15, (first, last)
    evals = [r for r in read_log(out) if r["eval_mlm_loss"]]
    assert [int(r["step"]) for r in evals] == [0, 25, 50]
    assert float(evals[0]["eval_mlm_loss"]) < math.log(2000) - 1.0
    assert float(evals[-1]["eval_mlm_loss"]) < float(evals[0]["eval_mlm_loss"]) + 0.05
    # next-turn accuracy counts right answers over the 64 fixed held-out examples (train.eval_examples)
    assert all((float(r["eval_next_turn_acc"]) * 64).is_integer() for r in evals), evals
    assert (out / "curves.png").stat().st_size > 1000
    assert any((out / "tb").iterdir())
    assert (out / "config.resolved.toml").is_file()
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-25", "step-50"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "config.resolved.toml", "trainer_state.pt"):
        assert (final / name).is_file(), name
    # the resolved config reloads and names the same run
    assert load_config(final / "config.resolved.toml").train.max_steps == 50


def test_pretraining_learns_a_small_corpus(tmp_path):
    """200 steps on 10 conversations: the training loss falls well below where it starts (the
    unigram prior). Measured: 5.96 -> 5.56 over three tokenizer retrains (spread 0.01)."""
    from conftest import sample_conversations

    from dialogbert.tokenizer import train_tokenizer
    from preprocess.schema import write_shard

    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard(shards / "shard-00000.jsonl", sample_conversations()[:10])
    tok = tmp_path / "tok"
    train_tokenizer(shards, tok, vocab_size=500)
    pretrain(None, tiny(shards, tok, tmp_path / "run", train__max_steps=200, train__lr=5e-3,
                        train__eval_every=1000, train__save_every=1000))
    losses = train_losses(tmp_path / "run")
    first = sum(losses[s] for s in range(1, 11)) / 10
    last = sum(losses[s] for s in range(191, 201)) / 10
    assert last < first - 0.25, (first, last)


@pytest.mark.xdist_group("tiny_run")
def test_checkpoint_loads_with_auto_classes(tiny_run, pretrain_tokenizer):
    from transformers import AutoModel, AutoModelForPreTraining, AutoTokenizer

    import dialogbert.modeling  # noqa: F401  (registers the dialogbert model type)
    from dialogbert.modeling import DialogBertForPreTraining, DialogBertModel

    _, final = tiny_run
    enc = AutoModel.from_pretrained(final)
    full = AutoModelForPreTraining.from_pretrained(final)
    assert isinstance(enc, DialogBertModel) and isinstance(full, DialogBertForPreTraining)
    assert enc.config.type_vocab_size == 4
    tok = AutoTokenizer.from_pretrained(final)
    assert len(tok) == 2000
    from safetensors.torch import load_file
    saved = load_file(str(final / "model.safetensors"))
    assert torch.equal(full.bert.encoder.layer[0].attention.self.query.weight,
                       saved["bert.encoder.layer.0.attention.self.query.weight"])
    assert torch.equal(enc.bert.embeddings.word_embeddings.weight, full.bert.embeddings.word_embeddings.weight)
    assert full.cls.predictions.decoder.weight.data_ptr() == full.bert.embeddings.word_embeddings.weight.data_ptr()
    ids = torch.tensor([[tok.cls_token_id, 10, 11, tok.sep_token_id]])
    out = enc(ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.tensor([[0, 1, 1, 1]]),
              turn_ids=torch.tensor([[0, 1, 1, 1]]))
    assert out.last_hidden_state.shape == (1, 4, 64)


def test_resume_after_an_interrupt_continues_the_same_curve(tiny_shards, pretrain_tokenizer, tmp_path, monkeypatch):
    common = dict(train__max_steps=20, train__save_every=5, train__eval_every=10)
    straight = tmp_path / "straight"
    pretrain(None, tiny(tiny_shards, pretrain_tokenizer, straight, **common))

    def crash(step):
        if step == 13:
            raise KeyboardInterrupt

    broken = tmp_path / "broken"
    monkeypatch.setattr(train_mod, "_after_step", crash)
    with pytest.raises(KeyboardInterrupt):
        pretrain(None, tiny(tiny_shards, pretrain_tokenizer, broken, **common))
    assert [s for s, _ in train_mod.list_checkpoints(broken)] == [5, 10]
    monkeypatch.setattr(train_mod, "_after_step", lambda step: None)
    final = pretrain(None, tiny(tiny_shards, pretrain_tokenizer, broken, **common))  # resume="auto"
    assert final.name == "step-20"

    a, b = train_losses(straight), train_losses(broken)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    for s in range(1, 21):
        assert math.isclose(a[s], b[s], rel_tol=0, abs_tol=1e-6), (s, a[s], b[s])
    ev_a = [r for r in read_log(straight) if r["eval_mlm_loss"]]
    ev_b = [r for r in read_log(broken) if r["eval_mlm_loss"]]
    assert [r["step"] for r in ev_a] == [r["step"] for r in ev_b] == ["0", "10", "20"]
    assert float(ev_a[-1]["eval_mlm_loss"]) == pytest.approx(float(ev_b[-1]["eval_mlm_loss"]), abs=1e-5)


@pytest.mark.parametrize("mlm,next_turn", [(True, False), (False, True)])
def test_objectives_are_switchable(tiny_shards, pretrain_tokenizer, tmp_path, mlm, next_turn):
    out = tmp_path / "run"
    pretrain(None, tiny(tiny_shards, pretrain_tokenizer, out, train__max_steps=3, train__eval_every=3,
                        objectives__mlm=mlm, objectives__next_turn=next_turn))
    rows = read_log(out)
    train_rows = [r for r in rows if r["loss"]]
    assert len(train_rows) == 3
    assert all(bool(r["mlm_loss"]) == mlm and bool(r["next_turn_loss"]) == next_turn for r in train_rows)
    for r in train_rows:
        part = float(r["mlm_loss"] or r["next_turn_loss"])
        assert float(r["loss"]) == pytest.approx(part, rel=1e-5)
    evals = [r for r in rows if r["eval_mlm_loss"] or r["eval_next_turn_acc"]]
    assert evals and all(bool(r["eval_mlm_acc"]) == mlm and bool(r["eval_next_turn_acc"]) == next_turn
                         for r in evals)


def test_init_from_a_plain_bert(tiny_shards, pretrain_tokenizer, tmp_path):
    from safetensors.torch import load_file
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(1)
    bert = BertForPreTraining(BertConfig(vocab_size=2000, hidden_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=128,
                                         max_position_embeddings=64, type_vocab_size=2))
    src = tmp_path / "bert"
    bert.save_pretrained(src)  # no tokenizer there: data.tokenizer is used
    out = tmp_path / "run"
    # lr 0: the single step changes nothing, so the checkpoint holds the initial weights
    final = pretrain(None, tiny(tiny_shards, pretrain_tokenizer, out, train__max_steps=1, train__lr=0.0,
                                train__eval_every=1, model__init_from=src, model__hidden_size=32,
                                model__num_hidden_layers=1))
    got = load_file(str(final / "model.safetensors"))
    want = bert.state_dict()
    for key in ("bert.encoder.layer.1.output.dense.weight", "bert.embeddings.word_embeddings.weight",
                "bert.embeddings.position_embeddings.weight", "bert.pooler.dense.weight",
                "cls.seq_relationship.weight", "cls.predictions.transform.dense.weight"):
        assert torch.equal(got[key], want[key]), key
    tt = got["bert.embeddings.token_type_embeddings.weight"]
    assert tt.shape == (4, 64)  # resized from BERT's 2 segment types to 4 speakers
    assert torch.equal(tt[:2], want["bert.embeddings.token_type_embeddings.weight"])
    assert got["turn_embeddings.weight"].shape == (9, 64)  # new, initialised
    resolved = load_config(final / "config.resolved.toml")
    assert (resolved.model.hidden_size, resolved.model.num_hidden_layers) == (64, 2)  # BERT's architecture won


def test_init_from_an_uncased_sentence_encoder(tiny_shards, pretrain_tokenizer, tmp_path):
    """A sentence-transformers-style folder (a BertModel without MLM head, an uncased tokenizer
    without our placeholders): its tokenizer is adopted (placeholders added), the word embeddings
    grow by those rows with the original rows kept, and the fresh MLM head starts at the unigram
    prior; the checkpoint's tokenizer reloads with the placeholders as single tokens."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizer

    from dialogbert.tokenizer import load_tokenizer
    from preprocess.schema import PLACEHOLDERS

    ours = load_tokenizer(pretrain_tokenizer).get_vocab()
    words = sorted({t.lower() for t in ours if not t.startswith("[")})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    src = tmp_path / "st"
    src.mkdir()
    (src / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(vocab=str(src / "vocab.txt"), do_lower_case=True).save_pretrained(src)
    torch.manual_seed(2)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(src)
    want = load_file(str(src / "model.safetensors"))["embeddings.word_embeddings.weight"]
    with pytest.warns(UserWarning, match="lowercases"):
        final = pretrain(None, tiny(tiny_shards, pretrain_tokenizer, out=tmp_path / "run", train__max_steps=1,
                                    train__lr=0.0, train__eval_every=1, model__init_from=src))
    got = load_file(str(final / "model.safetensors"))
    emb = got["bert.embeddings.word_embeddings.weight"]
    assert emb.shape == (len(vocab) + len(PLACEHOLDERS), 32)
    assert torch.equal(emb[:len(vocab)], want)
    bias = got["cls.predictions.bias"]
    assert bias.std() > 0.5  # the unigram prior, not BERT's zeros
    tok = AutoTokenizer.from_pretrained(str(final))
    assert len(tok) == emb.shape[0]
    assert "[PHONE]" in tok.tokenize("hi [PHONE] there") and "[" not in tok.tokenize("hi [PHONE] there")


def test_fresh_model_starts_at_the_unigram_prior(tiny_shards, pretrain_tokenizer):
    """A fresh model's MLM bias is the log unigram distribution (not 0), tied to the decoder: its
    first eval loss is the unigram entropy, well under ln(vocab), so the embeddings are not
    dragged toward one 'frequent token' direction while the bias catches up."""
    from dialogbert.data import DataConfig, eval_batches
    from dialogbert.tokenizer import load_tokenizer
    from dialogbert.train import init_output_bias, unigram_log_probs

    cfg = load_config(None, tiny(tiny_shards, pretrain_tokenizer, Path("unused")))
    tok = load_tokenizer(pretrain_tokenizer)
    torch.manual_seed(0)
    model, _ = train_mod.build_model(cfg, len(tok), tok.pad_token_id)
    data_cfg = DataConfig(max_length=64, batch_size=16)
    logp = unigram_log_probs(tiny_shards, tok, data_cfg, max_batches=20)
    assert torch.isfinite(logp).all() and abs(float(logp.exp().sum()) - 1.0) < 1e-4
    batches = eval_batches(tiny_shards, tok, data_cfg, max_examples=64)

    def mlm_loss() -> float:
        model.eval()
        with torch.no_grad():
            return sum(float(model(**b).mlm_loss) for b in batches) / len(batches)

    before = mlm_loss()
    init_output_bias(model, logp)
    after = mlm_loss()
    bias = model.cls.predictions.bias
    assert model.cls.predictions.decoder.bias is bias or torch.equal(model.cls.predictions.decoder.bias, bias)
    assert int(bias.argmax()) not in set(tok.all_special_ids)
    assert abs(before - math.log(len(tok))) < 0.1
    assert after < before - 1.0, (before, after)


def test_word_embeddings_grow_only_with_their_own_tokenizer():
    """Rows of another vocabulary are other tokens: copied only when the source's own tokenizer
    (grown by added tokens) is used; otherwise they start fresh."""
    from dialogbert.modeling import DialogBertConfig, DialogBertForPreTraining
    from dialogbert.train import copy_compatible_weights

    cfg = DialogBertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=32)
    src = {"embeddings.word_embeddings.weight": torch.randn(90, 16), "cls.predictions.bias": torch.randn(90)}
    grown = copy_compatible_weights(DialogBertForPreTraining(cfg), src, grow_vocab=True)
    assert any(r.startswith("bert.embeddings.word_embeddings.weight (90, 16)->(100, 16)") for r in grown["resized"])
    assert any(r.startswith("cls.predictions.bias") for r in grown["resized"])
    model = DialogBertForPreTraining(cfg)
    other = copy_compatible_weights(model, src)
    assert any(r.startswith("bert.embeddings.word_embeddings.weight") for r in other["ignored"])
    assert not torch.equal(model.bert.embeddings.word_embeddings.weight[:90], src["embeddings.word_embeddings.weight"])


def test_turn_embeddings_keep_their_rows_across_max_turns():
    """A warm start's turn embedding (e5's are zero: no turn information yet) is copied row by row
    into a model with fewer or more turns, not dropped for a fresh random one."""
    from dialogbert.modeling import DialogBertConfig, DialogBertForPreTraining
    from dialogbert.train import copy_compatible_weights

    cfg = DialogBertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=32, max_turns=8)
    src = {"turn_embeddings.weight": torch.zeros(17, 16)}
    model = DialogBertForPreTraining(cfg)
    report = copy_compatible_weights(model, src)
    assert "turn_embeddings.weight (17, 16)->(9, 16)" in report["resized"]
    assert torch.equal(model.turn_embeddings.weight, torch.zeros(9, 16))


def test_encoder_lr_ratio_slows_the_pretrained_encoder_only():
    from dialogbert.engine import TorchEngine, param_groups
    from dialogbert.modeling import DialogBertConfig, DialogBertForPreTraining

    model = DialogBertForPreTraining(DialogBertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                      num_attention_heads=2, intermediate_size=32,
                                                      max_position_embeddings=32))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 0.01, encoder_lr_ratio=0.1)
    for g in groups:
        encoder = {names[id(p)].startswith("bert.") for p in g["params"]}
        assert len(encoder) == 1 and g["lr_mult"] == (0.1 if encoder.pop() else 1.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(param_groups(model, 0.01)) == 2  # without a ratio: the two decay groups as before
    engine = TorchEngine(model, TrainSection(lr=1e-3, encoder_lr_ratio=0.1, device="cpu"))
    engine.set_lr(1e-3)
    lrs = {names[id(g["params"][0])].startswith("bert."): g["lr"] for g in engine.optimizer.param_groups}
    assert lrs == {True: pytest.approx(1e-4), False: pytest.approx(1e-3)}


def test_the_pretraining_benchmark_measures_a_given_dialogbert_folder(tmp_path):
    """bench/pretrain.py --base DIR: both arms take the folder's shape and tokenizer (ours its
    weights too), on the same examples, and the report names the folder."""
    import re
    import subprocess
    import sys

    from conftest import save_random_dialogbert
    root = Path(__file__).resolve().parent.parent
    base = save_random_dialogbert(tmp_path / "base", hidden=32, layers=1)
    out = subprocess.run([sys.executable, str(root / "bench" / "pretrain.py"), "--base", str(base), "--examples", "32",
                          "--batch-size", "16", "--rounds", "1", "--warmup", "1", "--data", str(tmp_path / "data"),
                          "--no-write"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"the DialogBERT of `{base}`" in out.stdout and "1 layers x 32 hidden" in out.stdout
    rows = {m.group(1): int(m.group(2).replace(",", ""))
            for m in re.finditer(r"^\| (ours|reference)[^|]*\| 32 \| \d+ \| ([\d,]+) \|", out.stdout, re.M)}
    assert rows.keys() == {"ours", "reference"} and rows["ours"] == rows["reference"] > 0  # the same useful tokens
    assert not (tmp_path / "data" / "tokenizer").exists()  # the folder's own tokenizer, none trained
