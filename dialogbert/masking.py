"""The batch collator of pretraining: encode_dialog features padded and masked for the MLM
(80/10/10), never on special tokens, placeholders or padding. Apart from the stream
(dialogbert.data), which decides what the examples are; this decides only how a batch of them is
padded and masked."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from dialogbert.features import pad_batch
from dialogbert.tokenizer import never_mask_ids

if TYPE_CHECKING:
    from dialogbert.data import DataConfig

PAD_MULTIPLE = 8  # pad_batch rounds the sequence length up to this


class MlmCollator:
    """Pads encode_dialog features (:func:`pad_batch`) and masks them with
    ``DataCollatorForLanguageModeling`` (80/10/10), which never masks special tokens,
    placeholders or padding, and never writes one as a 'random' token.

    ``collator(features, generator=None)``: features may carry ``next_turn_label``."""

    def __init__(self, tokenizer, cfg: DataConfig):
        from transformers import DataCollatorForLanguageModeling

        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs [MASK] and [PAD]; train it with dialogbert.tokenizer")
        self.tokenizer = tokenizer
        self.pad_id, self.mask_id = tokenizer.pad_token_id, tokenizer.mask_token_id
        self.inner = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=cfg.mlm_probability,
                                                     return_tensors="pt")
        self.never = torch.tensor(never_mask_ids(tokenizer), dtype=torch.long)
        allowed = torch.ones(len(tokenizer), dtype=torch.bool)
        allowed[self.never] = False
        self.allowed_ids = allowed.nonzero().view(-1)

    def __call__(self, features: Sequence[dict], generator: torch.Generator | None = None) -> dict:
        batch = pad_batch(features, self.pad_id, pad_to_multiple_of=PAD_MULTIPLE)
        if all("next_turn_label" in f for f in features):
            batch["next_turn_label"] = torch.tensor([int(f["next_turn_label"]) for f in features], dtype=torch.long)
        ids = batch["input_ids"]
        special = torch.isin(ids, self.never) | batch["attention_mask"].eq(0)
        self.inner.generator = generator  # torch_mask_tokens draws from it (None: global RNG)
        try:
            masked, labels = self.inner.torch_mask_tokens(ids.clone(), special_tokens_mask=special)
        finally:
            self.inner.generator = None
        # A "random word" that landed on a special token or placeholder: redraw from the rest.
        bad = labels.ne(-100) & masked.ne(self.mask_id) & torch.isin(masked, self.never)
        if bool(bad.any()):
            pick = torch.randint(len(self.allowed_ids), (int(bad.sum()),), generator=generator)
            masked[bad] = self.allowed_ids[pick]
        batch["input_ids"], batch["labels"] = masked, labels
        return batch


def mlm_collator(tokenizer, cfg: DataConfig) -> MlmCollator:
    return MlmCollator(tokenizer, cfg)
