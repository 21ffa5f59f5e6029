"""What the ranker's own dual encoders (``ngram``, ``use``) share as features: the cosine of the
newest turn and the candidate under an encoder the ranker trains itself (retrieval.towers), stored
in its own folder of the index folder and trained by :meth:`OwnEncoder.train`."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from retrieval.features.base import Batch, Feature, Sources


class OwnEncoder(Feature):
    subdir = ""  # its folder in the index folder
    what = ""    # how messages name it
    # where its encoder class and the error a missing package raises live ("module:Name"), and how
    # to do without it; imported only when the feature is loaded or trained
    encoder_at, missing_at, without = "", "", ""

    def __init__(self, encoder):
        self.encoder = encoder  # a towers.StoredReplyEncoder

    @classmethod
    def encoder_class(cls) -> tuple[type, type[Exception], str]:
        """(its encoder class, the error its load raises where a package is missing, how to do without)."""
        import importlib

        def named(at: str):
            module, name = at.split(":")
            return getattr(importlib.import_module(module), name)
        return named(cls.encoder_at), named(cls.missing_at), cls.without

    @classmethod
    def read(cls, folder):
        """The encoder stored in ``folder/subdir``, or None; a missing package raises, naming the folder."""
        enc_cls, missing, without = cls.encoder_class()
        try:
            return enc_cls.load(folder)
        except missing as e:
            raise missing(f"{folder}: the ranker's {cls.what} ({cls.subdir}/) cannot be "
                          f"loaded: {e}{without}") from e

    @classmethod
    def train(cls, index_dir, shards, fraction: float, sources=None, settings=None):
        """Train (or keep, when trained on the same pairs: towers.fit_and_save) and save the encoder
        in ``index_dir``: its module's ``train_for_index``."""
        import importlib
        module = importlib.import_module(cls.encoder_at.split(":")[0])
        return module.train_for_index(index_dir, shards, fraction, sources, settings)

    @classmethod
    def drop(cls, index_dir) -> None:
        shutil.rmtree(Path(index_dir) / cls.subdir, ignore_errors=True)

    @classmethod
    def load(cls, src: Sources) -> "OwnEncoder | None":
        if src.folder is None:
            return None
        enc = cls.read(src.folder)
        if enc is None:
            return None
        enc.attach_replies(src.folder, src.index.texts, write=src.write)
        return cls(enc)

    def score(self, batch: Batch, temperatures=()) -> np.ndarray:
        return self.encoder.score(batch.contexts, batch.candidates, rows=batch.cand_rows)
