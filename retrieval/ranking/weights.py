"""The ranker's weights (ranker.json): one score from the features, sum of weight x feature / scale.

The scale is a feature's spread on the fitting set, so the weights are comparable; a language of
the newest context turn may have its own weights (retrieval.ranking.fitting chooses them).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from preprocess.schema import atomic_write_text
from retrieval.features import FEATURES, REGISTRY

RANKER_FILE = "ranker.json"  # in the index folder it was fitted for


def context_language(context) -> str:
    """"ko", "en" or "other": the language of a context's newest turn, what the user just wrote
    (preprocess.pipeline.detect_lang): the key of the per-language weights."""
    from preprocess.pipeline import detect_lang
    return detect_lang([context[-1][1]]) if len(context) else "other"


@dataclass
class Ranker:
    weights: dict[str, float] = field(default_factory=lambda: {"dual": 1.0})
    scales: dict[str, float] = field(default_factory=dict)
    neighbours: int = 20
    temperature: float = 0.1
    lexical_temperature: float = 0.1
    rerank_top: int = 20
    reranker: str | None = None     # the re-ranker folder the weights were fitted with
    fitted_on: dict = field(default_factory=dict)
    # weights for contexts whose newest turn is in that language (context_language); others: ``weights``
    languages: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def active(self) -> list[str]:
        used = {f for ws in (self.weights, *self.languages.values()) for f, w in ws.items() if w}
        return [f for f in FEATURES if f in used]

    def row_weights(self, names: Sequence[str], languages: Sequence[str] | None, m: int) -> np.ndarray:
        """(m, len(names)) weights: row i's language's own weights, else the shared ones."""
        shared = [self.weights.get(f, 0.0) for f in names]
        if not self.languages or languages is None:
            return np.tile(np.asarray(shared, np.float64), (m, 1))
        table = {lang: [ws.get(f, 0.0) for f in names] for lang, ws in self.languages.items()}
        return np.asarray([table.get(lang, shared) for lang in languages], np.float64)

    @property
    def temperatures(self) -> dict[str, float]:
        """{feature: softmax temperature} of the neighbour features (each names its field here)."""
        return {f.name: getattr(self, f.temperature) for f in REGISTRY if f.temperature}

    def combine(self, feats: dict[str, np.ndarray], names: Sequence[str] | None = None,
                languages: Sequence[str] | None = None) -> np.ndarray:
        """sum of weight x feature / scale, row by row with the weights of each row's language
        (``languages``, one per context; None: the shared weights everywhere)."""
        names = [f for f in (self.active if names is None else names) if f in feats]
        if not names:
            raise ValueError(f"none of the ranker's features {self.active} was computed")
        m = len(next(iter(feats[f] for f in names)))
        W = self.row_weights(names, languages, m)
        out = None
        for k, f in enumerate(names):
            w = W[:, k:k + 1]
            # a weight of 0 adds nothing, even where the feature is undefined (outside the re-ranked top)
            part = np.where(w == 0, 0.0, w * feats[f] / self.scales.get(f, 1.0))
            out = part if out is None else out + part
        return out.astype(np.float32)

    def save(self, folder: str | Path) -> Path:
        p = Path(folder) / RANKER_FILE
        atomic_write_text(p, json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")
        return p

    @classmethod
    def load(cls, folder: str | Path, info: dict | None = None) -> "Ranker | None":
        """The folder's ranker.json, or None. With ``info`` (the index's index_info.json), a ranker
        fitted for another model or another build of the index is refused."""
        p = Path(folder) / RANKER_FILE
        if not p.exists():
            return None
        d = _read_json(p, fix="refit it with `dialogbert index`")
        fit = d.get("fitted_on", {})
        if info is not None and fit.get("index_build") and fit["index_build"] != info.get("build"):
            # the index was rebuilt since (the index never touches ranker.json: the ranker checks)
            print(f"ranker: {p} was fitted for an earlier build of this index: ignored (the dual encoder "
                  f"ranks alone); refit it with `dialogbert index`")
            return None
        if info is not None and fit.get("model_sha256") and fit["model_sha256"] != info.get("model_sha256"):
            raise ValueError(f"{p} was fitted for model sha256 {fit['model_sha256'][:12]}..., but the index "
                             f"holds {str(info.get('model_sha256'))[:12]}...: refit it with `dialogbert index`")
        unknown = {f for ws in (d.get("weights", {}), *d.get("languages", {}).values()) for f in ws} - set(FEATURES)
        if unknown:
            raise ValueError(f"{p}: unknown features {sorted(unknown)}; known: {list(FEATURES)}")
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _read_json(path: Path, fix: str = "") -> dict:
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg})" + (f"; {fix}" if fix else "")) from e
