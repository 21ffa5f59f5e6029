"""The configs of `dialogbert index` and `dialogbert eval`: typed sections, a TOML file, dotted
overrides, checked by the same loader as pretraining's and fine-tuning's (dialogbert.config).

    cfg = load_index_config("configs/index_demo.toml", ["ngram.max_minutes=2", "use.enabled=false"])
    cfg.fit_kwargs()   # what retrieval.ranker.fit_for_index is given

The stages these drive are run by the orchestration (dialogbert.commands: index_stage, eval_stage),
which writes the resolved config beside the artifact (``CONFIG_FILE``).

``[ngram]`` and ``[use]`` mirror the ranker's own encoders' settings (retrieval.ngram.NgramSettings,
retrieval.use.UseSettings), so a field added there is configurable here without an edit, plus
``enabled``. With no file and no override every key is the command's old default.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dialogbert.config import Sections, mirror_section, read_config, settings_from
from retrieval.encoder import check_precision
from retrieval.ngram import NgramSettings
from retrieval.use import UseSettings

CONFIG_FILE = "config.resolved.toml"  # the resolved config beside an artifact (pretraining's name too)
FIT_ONLY = ("analyser", "base_sha256", "trained")  # settings fields that training sets, not the user


@dataclass
class IndexSection:
    factory: str = "Flat"  # FAISS factory string: "Flat", "IVF4096,PQ32", "HNSW32"
    gpu: bool = False      # build and search on GPU (faiss-gpu)
    batch_size: int = 64   # texts encoded at once
    memory: bool = True    # also encode the training contexts (the ranker's neighbour features); false: replies only
    precision: str = "fp32"  # "bf16": encode the stored texts under bfloat16 autocast; "auto": bf16 where the hardware has it natively (retrieval.encoder.resolve_precision)


@dataclass
class RankerSection:
    enabled: bool = True   # false: no ranker.json (rank by the dual encoder alone)
    reranker: str = ""     # a cross-encoder folder to fit into the ranker ("" = none)
    max_examples: int = 1000  # validation examples the weights are fitted on
    copy_negatives: bool = True   # one wrong candidate of each fitting example a copy of its newest context turn


NgramSection = mirror_section("NgramSection", NgramSettings, skip=FIT_ONLY, first=[("enabled", True)])
UseSection = mirror_section("UseSection", UseSettings, skip=FIT_ONLY, first=[("enabled", True)])


@dataclass
class IndexConfig(Sections):
    index: IndexSection = field(default_factory=IndexSection)
    ranker: RankerSection = field(default_factory=RankerSection)
    ngram: Any = field(default_factory=NgramSection)
    use: Any = field(default_factory=UseSection)

    def ngram_settings(self) -> NgramSettings:
        return settings_from(self.ngram, NgramSettings)

    def use_settings(self) -> UseSettings:
        return settings_from(self.use, UseSettings)

    def fit_kwargs(self) -> dict:
        """The keyword arguments of retrieval.ranker.fit_for_index this config stands for."""
        return {"reranker_dir": self.ranker.reranker or None, "max_examples": self.ranker.max_examples,
                "copy_negatives": self.ranker.copy_negatives,
                "ngram": self.ngram.enabled, "use": self.use.enabled,
                "ngram_settings": self.ngram_settings(), "use_settings": self.use_settings()}


def load_index_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> IndexConfig:
    """Defaults, then the TOML file, then dotted overrides, every key checked; the settings built
    once, so a bad value (``ngram.heads=0``) is refused before anything is built."""
    cfg = read_config(path, overrides, cls=IndexConfig)
    for section, build in (("ngram", cfg.ngram_settings), ("use", cfg.use_settings)):
        try:
            build()
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path or 'the defaults'} with overrides {list(overrides)}: [{section}]: {e}") from None
    if not cfg.index.factory:
        raise ValueError("index.factory is empty: give a FAISS factory string such as Flat")
    check_precision(cfg.index.precision, "index.precision")
    if cfg.index.batch_size < 1 or cfg.ranker.max_examples < 1:
        raise ValueError("index.batch_size and ranker.max_examples must be >= 1")
    return cfg


@dataclass
class EvalSection:
    model: str = ""        # encoder folder ("" = the baselines alone)
    index: str = ""        # index folder for full-index recall ("" = none)
    shards: str = ""       # its test split (required without candidates); with candidates, the lexical baselines' fit
    candidates: str = ""   # fixed candidate sets (JSONL or Ubuntu/Douban tab-separated): score exactly those
    report: str = ""       # the report folder to write (required)
    max_examples: int = 0  # 0 = all
    reranker: str = ""     # re-ranker folder ("" = the one the index's ranker.json names)
    peer: bool = False     # also score all-MiniLM-L6-v2 off the shelf
    precision: str = "auto"  # the dialog model's weights, as `dialogbert serve` runs them ("auto": bf16 where native)
    sources: list[str] = field(default_factory=list)  # only these corpora's conversations ([] = all)


@dataclass
class EvalConfig(Sections):
    eval: EvalSection = field(default_factory=EvalSection)


def load_eval_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> EvalConfig:
    cfg = read_config(path, overrides, cls=EvalConfig)
    e = cfg.eval
    if not e.report:
        raise ValueError("no report folder: pass --report DIR (eval.report=DIR)")
    if not (e.shards or e.candidates):
        raise ValueError("pass --shards DIR (the protocol's test split) or --candidates FILE (fixed candidate sets)")
    if e.max_examples < 0:
        raise ValueError("eval.max_examples must be >= 0 (0: all)")
    check_precision(e.precision, "eval.precision")
    return cfg
