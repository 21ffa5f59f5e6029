"""DialogBERT: BERT that reads a conversation as a conversation.

The embeddings are BERT's (word + position + token type) plus a **turn embedding**:

* speaker ids ride in BERT's token-type embedding (``type_vocab_size = num_speakers``):
  0 for [CLS]/padding, 1 for the speaker of the newest turn, 2 for the speaker before that, ...
  (relative, so the model learns "who is talking now", not pseudonyms);
* turn ids are added to ``inputs_embeds``: 0 for [CLS]/padding, 1 for the newest turn, 2 for the
  one before it, ..., capped at ``max_turns``;
* with ``word_memory_size`` > 0, a **word memory** row is added to every piece of a known
  multi-piece word (dialogbert.word_memory: the words are found in the token ids, so the inputs
  stay the same; the rows start at zero).

BERT then adds position and token-type embeddings, LayerNorm and dropout as usual, and the MLM
decoder stays tied to the word embeddings. Attribute names ``bert`` and ``cls`` match
``BertForPreTraining`` so BERT checkpoints load into it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, BertConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.bert.modeling_bert import BertModel, BertPreTrainedModel, BertPreTrainingHeads
from transformers.utils import ModelOutput

from dialogbert.word_memory import word_rows


class DialogBertConfig(BertConfig):
    model_type = "dialogbert"

    def __init__(self, max_turns: int = 16, num_speakers: int = 4, word_memory_size: int = 0, **kwargs):
        kwargs.setdefault("type_vocab_size", num_speakers)
        super().__init__(**kwargs)
        self.max_turns = max_turns
        self.num_speakers = num_speakers
        self.word_memory_size = word_memory_size
        if self.type_vocab_size < num_speakers:
            raise ValueError(f"type_vocab_size={self.type_vocab_size} is smaller than "
                             f"num_speakers={num_speakers}; set type_vocab_size >= num_speakers")


class DialogBertPreTrainedModel(BertPreTrainedModel):
    config_class = DialogBertConfig
    base_model_prefix = "bert"

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DialogBertModel):
            module.turn_embeddings.weight.data.normal_(0.0, self.config.initializer_range)
            if module.word_memory is not None:
                module.word_memory.weight.data.zero_()  # a fresh memory leaves the model's function as it was


@dataclass
class DialogBertPreTrainingOutput(ModelOutput):
    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    next_turn_loss: torch.Tensor | None = None
    prediction_logits: torch.Tensor | None = None
    next_turn_logits: torch.Tensor | None = None


class DialogBertModel(DialogBertPreTrainedModel):
    """The encoder: BertModel plus the turn embedding. Loads with ``AutoModel``."""
    _keys_to_ignore_on_load_unexpected = [r"^cls\."]  # pretraining heads, unused by the encoder

    def __init__(self, config: DialogBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self._build_encoder(config, add_pooling_layer)
        self.post_init()

    def _build_encoder(self, config: DialogBertConfig, add_pooling_layer: bool = True) -> None:
        self.bert = BertModel(config, add_pooling_layer=add_pooling_layer)
        self.turn_embeddings = nn.Embedding(config.max_turns + 1, config.hidden_size)
        size = getattr(config, "word_memory_size", 0)
        self.word_memory = nn.Embedding(size + 1, config.hidden_size, padding_idx=0) if size else None
        if size:  # the key table and the piece tables travel in the checkpoint with the rows
            self.register_buffer("word_keys", torch.zeros(size, dtype=torch.long))
            self.register_buffer("piece_starts", torch.zeros(config.vocab_size, dtype=torch.bool))
            self.register_buffer("piece_breaks", torch.ones(config.vocab_size, dtype=torch.bool))

    def get_input_embeddings(self):
        return self.bert.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.bert.embeddings.word_embeddings = value

    def embed(self, input_ids: torch.Tensor, turn_ids: torch.Tensor | None) -> torch.Tensor:
        emb = self.bert.embeddings.word_embeddings(input_ids)
        if self.word_memory is not None:
            emb = emb + self.word_memory(word_rows(input_ids, self.piece_starts, self.piece_breaks, self.word_keys))
        if turn_ids is not None:
            if int(turn_ids.max()) > self.config.max_turns:
                raise ValueError(f"turn id {int(turn_ids.max())} > max_turns={self.config.max_turns}")
            emb = emb + self.turn_embeddings(turn_ids)
        return emb

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, turn_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, **kwargs) -> BaseModelOutputWithPooling:
        """``position_ids`` as BERT's (default 0, 1, ...): several dialogs packed into one row each
        restart at 0, with a block-diagonal 4D ``attention_mask`` (retrieval.encoder packs so)."""
        if kwargs.pop("labels", None) is not None or kwargs.pop("next_turn_label", None) is not None:
            raise TypeError("DialogBertModel takes no labels: use DialogBertForPreTraining")
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        return self.bert(inputs_embeds=self.embed(input_ids, turn_ids), attention_mask=attention_mask,
                         token_type_ids=token_type_ids, position_ids=position_ids, return_dict=True)


class DialogBertForPreTraining(DialogBertModel):
    """Masked language modelling plus next-turn prediction on [CLS].

    Same attributes as the encoder (``bert``, ``turn_embeddings``) plus BERT's ``cls`` heads, so
    ``AutoModel`` loads the encoder out of a pretraining checkpoint and BERT checkpoints load in.
    ``labels``: token ids for masked positions, -100 elsewhere (ignored by the loss).
    ``next_turn_label``: 0 when the last turn is the true continuation, 1 when it is not
    (BERT's next-sentence convention). Either may be omitted to switch that objective off.
    """
    # Tie the decoder bias too (as BertForPreTraining does): BERT checkpoints store the MLM output
    # bias only as cls.predictions.bias, and forward() reads cls.predictions.decoder.bias.
    _tied_weights_keys = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                          "cls.predictions.decoder.bias": "cls.predictions.bias"}

    def __init__(self, config: DialogBertConfig):
        DialogBertPreTrainedModel.__init__(self, config)
        self._build_encoder(config)
        self.cls = BertPreTrainingHeads(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def next_turn_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         token_type_ids: torch.Tensor | None = None,
                         turn_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The next-turn head alone, (B, 2), without the vocabulary projection (a re-ranker's call)."""
        pooled = DialogBertModel.forward(self, input_ids, attention_mask=attention_mask,
                                         token_type_ids=token_type_ids, turn_ids=turn_ids).pooler_output
        return self.cls.seq_relationship(pooled)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, turn_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, next_turn_label: torch.Tensor | None = None,
                **kwargs) -> DialogBertPreTrainingOutput:
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        out = super().forward(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                              turn_ids=turn_ids)
        seq, pooled = out.last_hidden_state, out.pooler_output
        mlm_loss = nt_loss = None
        if labels is not None:
            # Decode only the masked positions: the vocabulary projection is the costliest matmul.
            sel = labels.ne(-100)
            prediction_logits = self.cls.predictions(seq[sel])
            mlm_loss = (nn.functional.cross_entropy(prediction_logits.float(), labels[sel])
                        if bool(sel.any()) else seq.sum() * 0.0)
        else:
            prediction_logits = self.cls.predictions(seq)
        nt_logits = self.cls.seq_relationship(pooled)
        if next_turn_label is not None:
            nt_loss = nn.functional.cross_entropy(nt_logits.float(), next_turn_label.view(-1))
        losses = [x for x in (mlm_loss, nt_loss) if x is not None]
        loss = sum(losses) if losses else None
        return DialogBertPreTrainingOutput(loss=loss, mlm_loss=mlm_loss, next_turn_loss=nt_loss,
                                           prediction_logits=prediction_logits, next_turn_logits=nt_logits)


def attention_for_device(model: nn.Module, device: str | torch.device) -> str:
    """Set ``model``'s attention kernel for where it runs and return it: "eager" (BERT's own
    matmuls and softmax) on a CPU, torch's SDPA elsewhere.

    Why: without attention dropout (the fine-tuning recipe's ``model.dropout = 0``) SDPA on a CPU
    runs its flash kernel, whose backward takes 11 ms a call for dialog-length inputs (16 rows of
    at most 64 tokens), 30% of a fine-tuning step; the plain matmuls compute the same attention in
    a fraction of that: a step 1.36x faster on the benchmark's batches (docs/benchmarks.md,
    "Fine-tuning"), 16-19% more steps in 20 minutes of the demo's recipe, the same encoding speed. On a GPU
    the fused kernels are the fast ones. For any transformers model (BERT, DialogBERT)."""
    want = "sdpa" if torch.device(device).type == "cuda" else "eager"
    if model.config._attn_implementation != want:
        model.set_attn_implementation(want)
    return model.config._attn_implementation


AutoConfig.register("dialogbert", DialogBertConfig)
AutoModel.register(DialogBertConfig, DialogBertModel)
AutoModelForPreTraining.register(DialogBertConfig, DialogBertForPreTraining)
