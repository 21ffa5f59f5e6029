"""DialogBERT: embedding/head shapes, save/load through the Auto classes, the turn embedding,
speaker-id bounds, and loading a BERT pretraining checkpoint."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, BertConfig, BertForPreTraining

from dialogbert.modeling import DialogBertConfig, DialogBertForPreTraining, DialogBertModel

SIZES = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=64)


def _config(**kw) -> DialogBertConfig:
    return DialogBertConfig(max_turns=8, num_speakers=4, **{**SIZES, **kw})


def _inputs(batch: int = 3, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, SIZES["vocab_size"], (batch, length), generator=g)
    ids[:, 0] = 2
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, -3:] = 0
    turn = torch.randint(1, 9, (batch, length), generator=g)
    turn[:, 0] = 0
    spk = torch.randint(1, 4, (batch, length), generator=g)
    spk[:, 0] = 0
    turn[mask == 0] = 0
    spk[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "turn_ids": turn, "token_type_ids": spk}


@pytest.fixture(scope="module")
def pretrain_model():
    torch.manual_seed(0)
    return DialogBertForPreTraining(_config()).eval()


def test_config_and_embedding_shapes(pretrain_model):
    cfg = pretrain_model.config
    assert cfg.model_type == "dialogbert" and cfg.type_vocab_size == 4
    assert pretrain_model.turn_embeddings.weight.shape == (cfg.max_turns + 1, 32)
    assert pretrain_model.bert.embeddings.token_type_embeddings.weight.shape == (4, 32)
    assert pretrain_model.bert.embeddings.word_embeddings.weight.shape == (120, 32)
    # the MLM decoder is tied to the word embeddings, and its bias to cls.predictions.bias
    assert pretrain_model.cls.predictions.decoder.weight is pretrain_model.bert.embeddings.word_embeddings.weight
    assert pretrain_model.cls.predictions.decoder.bias is pretrain_model.cls.predictions.bias
    with pytest.raises(ValueError, match="type_vocab_size"):
        DialogBertConfig(num_speakers=4, type_vocab_size=2)


def test_head_shapes_and_losses(pretrain_model):
    x = _inputs()
    out = pretrain_model(**x)
    assert out.prediction_logits.shape == (3, 12, 120) and out.next_turn_logits.shape == (3, 2) and out.loss is None
    labels = torch.full((3, 12), -100)
    labels[0, 2], labels[1, 5], labels[2, 7] = 10, 11, 12
    out = pretrain_model(**x, labels=labels, next_turn_label=torch.tensor([0, 1, 0]))
    assert out.prediction_logits.shape == (3, 120)  # only the masked positions are decoded
    assert torch.isfinite(out.loss) and torch.allclose(out.loss, out.mlm_loss + out.next_turn_loss)
    out.loss.backward()
    assert pretrain_model.turn_embeddings.weight.grad is not None
    pretrain_model.zero_grad()
    enc = DialogBertModel(_config()).eval()
    o = enc(**x)
    assert o.last_hidden_state.shape == (3, 12, 32) and o.pooler_output.shape == (3, 32)
    with pytest.raises(TypeError):
        enc(**x, labels=labels)


def test_save_and_reload_through_auto_classes(pretrain_model, tmp_path):
    pretrain_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "dialogbert"
    x = _inputs(seed=1)
    labels = torch.full((3, 12), -100)
    labels[:, 3] = 7
    with torch.no_grad():
        ref = pretrain_model(**x, labels=labels, next_turn_label=torch.tensor([0, 1, 1]))
        ref_enc = pretrain_model.bert(inputs_embeds=pretrain_model.embed(x["input_ids"], x["turn_ids"]),
                                      attention_mask=x["attention_mask"], token_type_ids=x["token_type_ids"])
    again = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    assert isinstance(again, DialogBertForPreTraining)
    assert again.cls.predictions.decoder.weight is again.bert.embeddings.word_embeddings.weight
    enc = AutoModel.from_pretrained(tmp_path).eval()
    assert type(enc) is DialogBertModel
    with torch.no_grad():
        out = again(**x, labels=labels, next_turn_label=torch.tensor([0, 1, 1]))
        enc_out = enc(**x)
    assert torch.allclose(out.loss, ref.loss) and torch.allclose(out.prediction_logits, ref.prediction_logits)
    assert torch.allclose(out.next_turn_logits, ref.next_turn_logits)
    assert torch.allclose(enc_out.last_hidden_state, ref_enc.last_hidden_state, atol=1e-6)
    assert torch.allclose(enc_out.pooler_output, ref_enc.pooler_output, atol=1e-6)
    # an encoder checkpoint round-trips on its own too
    enc.save_pretrained(tmp_path / "enc")
    enc2 = AutoModel.from_pretrained(tmp_path / "enc").eval()
    with torch.no_grad():
        assert torch.allclose(enc2(**x).last_hidden_state, enc_out.last_hidden_state)


def test_turn_embedding_changes_the_output(pretrain_model):
    x = _inputs(seed=2)
    with torch.no_grad():
        a = pretrain_model(**x).prediction_logits
        shifted = dict(x, turn_ids=torch.where(x["turn_ids"] > 0, (x["turn_ids"] % 8) + 1, x["turn_ids"]))
        b = pretrain_model(**shifted).prediction_logits
        c = pretrain_model(**{k: v for k, v in x.items() if k != "turn_ids"}).prediction_logits
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_ids_out_of_range_raise(pretrain_model):
    x = _inputs()
    with pytest.raises(IndexError):
        pretrain_model(**dict(x, token_type_ids=torch.full_like(x["token_type_ids"], 4)))  # num_speakers = 4
    with pytest.raises(ValueError, match="max_turns"):
        pretrain_model(**dict(x, turn_ids=torch.full_like(x["turn_ids"], 9)))


def test_bert_pretraining_checkpoint_loads(tmp_path):
    torch.manual_seed(1)
    bert = BertForPreTraining(BertConfig(type_vocab_size=4, **SIZES))
    with torch.no_grad():
        bert.cls.predictions.bias.normal_()  # nonzero, so a lost bias would show
    bert.save_pretrained(tmp_path)
    model, info = DialogBertForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == {"turn_embeddings.weight"} and not info["unexpected_keys"]
    mine = model.state_dict()
    for k, v in bert.state_dict().items():
        assert torch.equal(mine[k], v), k  # every bert.* and cls.* weight copied (tied ones included)
    std = float(model.turn_embeddings.weight.detach().std())
    assert 0.01 < std < 0.03 and model.config.max_turns == 16  # initialized N(0, initializer_range)
    # with all turn ids 0 the turn embedding adds one constant vector; the model still runs
    x = _inputs()
    assert model(**x).next_turn_logits.shape == (3, 2)


def test_two_type_bert_checkpoint_loads_with_resized_speakers(tmp_path):
    """Public BERT checkpoints have 2 token types: pass a config with type_vocab_size >= num_speakers."""
    bert = BertForPreTraining(BertConfig(**SIZES))
    bert.save_pretrained(tmp_path)
    cfg = BertConfig.from_pretrained(tmp_path).to_dict()
    cfg.pop("model_type", None)
    cfg["type_vocab_size"] = 4
    model, info = DialogBertForPreTraining.from_pretrained(tmp_path, config=DialogBertConfig(**cfg),
                                                           ignore_mismatched_sizes=True, output_loading_info=True)
    assert info["missing_keys"] == {"turn_embeddings.weight"}
    assert {k for k, *_ in info["mismatched_keys"]} == {"bert.embeddings.token_type_embeddings.weight"}
    assert model.bert.embeddings.token_type_embeddings.weight.shape == (4, 32)
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight,
                       bert.bert.encoder.layer[0].attention.self.query.weight)
