"""The pretraining config: typed sections, a TOML file per run, dotted overrides.

    cfg = load_config("configs/tiny.toml", ["train.lr=3e-4", "model.num_hidden_layers=4"])
    save_config(cfg, "runs/tiny/config.resolved.toml")

Every key has a typed default here; a file or an override naming a key that does not exist is
an error that lists the valid keys (minGPT's ``CfgNode`` rule). Override values are parsed by the
type of the default (``true``/``false`` for booleans). Paths are resolved against the current
directory when the config is loaded, so the resolved config saved beside every checkpoint names
absolute paths and can be rerun from anywhere.

``[data]`` holds the shard and tokenizer folders plus every field of ``dialogbert.data.DataConfig``
except ``mlm`` / ``next_turn``, which live in ``[objectives]`` (the ablation switch).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from dialogbert.data import DataConfig

OBJECTIVE_KEYS = ("mlm", "next_turn")


@dataclass
class RunSection:
    out: str = "runs/tiny"
    seed: int = 0


def _data_section_fields() -> list[tuple[str, type, Any]]:
    out: list[tuple[str, type, Any]] = [("shards", str, field(default="")), ("tokenizer", str, field(default=""))]
    for f in fields(DataConfig):
        if f.name in OBJECTIVE_KEYS:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, type(default), field(default=default)))
    return out


# [data] mirrors DataConfig, so a field added there is configurable here without an edit.
DataSection = dataclasses.make_dataclass("DataSection", _data_section_fields())


@dataclass
class ModelSection:
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 128
    max_turns: int = 8
    num_speakers: int = 4
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    # A local Hugging Face BERT / dialogbert folder: its architecture and compatible weights are
    # used, new embeddings initialised, token types resized to num_speakers; its tokenizer too.
    init_from: str = ""


@dataclass
class TrainSection:
    max_steps: int = 300
    lr: float = 5e-4
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    encoder_lr_ratio: float = 1.0  # < 1: a warm-started encoder (bert.*) learns at lr * this, new heads at lr
    grad_accum: int = 1
    clip: float = 1.0
    eval_every: int = 100
    eval_examples: int = 512
    save_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 on CUDA only; bf16 on CPU via autocast/deepspeed)
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int = 0  # torch CPU threads; 0 leaves torch's default
    tensorboard: bool = True
    progress: bool = True  # tqdm bar on rank 0
    plot: bool = True  # curves.png at each eval


@dataclass
class ObjectivesSection:
    mlm: bool = True
    next_turn: bool = True


class Sections:
    """A config made of sections (dataclasses of typed keys): `to_dict` and the checked loaders
    below work for any such class (pretraining's :class:`Config`, fine-tuning's, the index's,
    the ablation's, eval's and serve's)."""

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {s.name: dataclasses.asdict(getattr(self, s.name)) for s in fields(self)}


def _section_field(default: Any) -> tuple[type, Any]:
    if isinstance(default, (list, tuple)):
        item = type(default[0]) if default else str
        return list[item], field(default_factory=lambda d=tuple(default): list(d))  # type: ignore[valid-type]
    return type(default), field(default=default)


def mirror_section(name: str, source: type, skip: Iterable[str] = (), first: Iterable[tuple[str, Any]] = ()) -> type:
    """A config section with the fields of the settings dataclass ``source`` and their defaults
    (less ``skip``), after the keys ``first`` ((name, default) pairs): a field added to the
    settings is configurable without an edit here. Tuples become lists (TOML arrays)."""
    skip = set(skip)
    out = [(k, *_section_field(v)) for k, v in first]
    for f in fields(source):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, *_section_field(default)))
    return dataclasses.make_dataclass(name, out)


def settings_from(section: Any, target: type):
    """``target`` (a settings dataclass) built from the keys of a :func:`mirror_section` section
    it has (lists back to tuples where its default is one); its other fields keep their defaults."""
    kw = {}
    for f in fields(target):
        if f.init and hasattr(section, f.name):
            value = getattr(section, f.name)
            kw[f.name] = tuple(value) if isinstance(f.default, tuple) else value
    return target(**kw)


@dataclass
class Config(Sections):
    run: RunSection = field(default_factory=RunSection)
    data: Any = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    objectives: ObjectivesSection = field(default_factory=ObjectivesSection)

    def data_config(self) -> DataConfig:
        """The DataConfig the stream and the eval batches use (objectives folded in)."""
        kw = {f.name: getattr(self.data, f.name) for f in fields(DataConfig) if f.name not in OBJECTIVE_KEYS}
        return DataConfig(**kw, mlm=self.objectives.mlm, next_turn=self.objectives.next_turn)


PATH_KEYS = {("run", "out"), ("data", "shards"), ("data", "tokenizer"), ("model", "init_from")}
PRECISIONS = ("fp32", "bf16", "fp16")


def _valid_keys(section: Any) -> list[str]:
    return [f.name for f in fields(section)]


def parse_bool(text: str, key: str) -> bool:
    """The one reader of yes/no values in the project: true/1/yes/on, false/0/no/off (any case)."""
    low = str(text).strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{key}: expected true/false, got {text!r}")


def parse_value(text: str, default: Any, key: str, item: type = str) -> Any:
    """Parse an override string by the type of the key's default (a list: comma-separated items
    of type ``item``, or a TOML array as the config file writes it: ``["a", "b"]``)."""
    if isinstance(default, list):
        if text.strip().startswith("["):
            return _coerce(_toml_literal(text, key, "a TOML array (or write the items comma-separated)"),
                           default, key, item)
        return [parse_value(x.strip(), item(), key) for x in text.split(",") if x.strip()]
    if isinstance(default, bool):
        return parse_bool(text, key)
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            try:
                as_float = float(text)  # allow 1e3 for integers when it is whole
            except ValueError:
                raise ValueError(f"{key}: expected an integer, got {text!r}") from None
            if not as_float.is_integer():
                raise ValueError(f"{key}: expected an integer, got {text!r}") from None
            return int(as_float)
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{key}: expected a number, got {text!r}") from None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":  # a TOML string, quotes and all: key=""
        return _toml_literal(text, key, "a TOML string (leave the quotes out)")
    return text


def _toml_literal(text: str, key: str, what: str) -> Any:
    """An override value written as in a TOML file (a quoted string, an array), parsed by TOML."""
    import tomllib
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        raise ValueError(f"{key}: {text} is not {what}") from None


def _coerce(value: Any, default: Any, key: str, item: type = str) -> Any:
    """Check a value read from TOML against the default's type (ints are fine for floats)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true/false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list of {ITEM_NAMES[item]}, got {value!r}")
        try:
            return [_coerce(x, item(), key) for x in value]
        except ValueError:
            raise ValueError(f"{key}: expected a list of {ITEM_NAMES[item]}, got {value!r}") from None
    return value


ITEM_NAMES = {str: "strings", int: "integers", float: "numbers", bool: "true/false values"}


def _item_type(sec: Any, key: str, default: Any) -> type:
    """The item type of a list key: from its annotation (``list[int]``), else its default's first
    item, else str."""
    if not isinstance(default, list):
        return str
    try:
        hint = typing.get_type_hints(type(sec)).get(key)
    except Exception:  # an annotation that does not resolve: fall back to the default
        hint = None
    args = typing.get_args(hint) if hint is not None else ()
    if args and args[0] in ITEM_NAMES:
        return args[0]
    return type(default[0]) if default and type(default[0]) in ITEM_NAMES else str


def _set(cfg: Config, section: str, key: str, value: Any, *, from_text: bool, where: str) -> None:
    sections = _valid_keys(cfg)
    if section not in sections:
        raise ValueError(f"{where}: unknown config section {section!r}; valid sections: {', '.join(sections)}")
    sec = getattr(cfg, section)
    valid = _valid_keys(sec)
    if key not in valid:
        raise ValueError(f"{where}: unknown config key '{section}.{key}'; valid keys in [{section}]: "
                         f"{', '.join(valid)}")
    default = getattr(sec, key)
    name = f"{section}.{key}"
    item = _item_type(sec, key, default)
    try:
        setattr(sec, key, parse_value(value, default, name, item) if from_text else _coerce(value, default, name, item))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected section.key=value, e.g. train.lr=3e-4")
        dotted, value = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2:
            raise ValueError(f"override {item!r}: expected section.key=value, e.g. train.lr=3e-4")
        _set(cfg, parts[0], parts[1], value.strip(), from_text=True, where=f"override {item!r}")
    return cfg


def config_from_dict(d: dict[str, Any], where: str = "<dict>", cls: type = Config):
    cfg = cls()
    for section, values in d.items():
        if not isinstance(values, dict):
            raise ValueError(f"{where}: [{section}] must be a table of keys")
        for key, value in values.items():
            _set(cfg, section, key, value, from_text=False, where=where)
    return cfg


def resolve_paths(cfg: Config, base: str | os.PathLike | None = None) -> Config:
    base = Path(base) if base is not None else Path.cwd()
    for section, key in PATH_KEYS:
        value = getattr(getattr(cfg, section), key)
        if value:
            setattr(getattr(cfg, section), key, str((base / Path(value).expanduser()).resolve()))
    return cfg


def validate(cfg: Config) -> Config:
    m, d, t = cfg.model, cfg.data, cfg.train
    if t.precision not in PRECISIONS:
        raise ValueError(f"train.precision={t.precision!r}: use one of {', '.join(PRECISIONS)}")
    if not (cfg.objectives.mlm or cfg.objectives.next_turn):
        raise ValueError("objectives.mlm and objectives.next_turn are both false: switch one on")
    if m.hidden_size % m.num_attention_heads:
        raise ValueError(f"model.hidden_size={m.hidden_size} is not divisible by "
                         f"model.num_attention_heads={m.num_attention_heads}")
    if d.max_length > m.max_position_embeddings:
        raise ValueError(f"data.max_length={d.max_length} > model.max_position_embeddings="
                         f"{m.max_position_embeddings}: lower the first or raise the second")
    if d.max_turns > m.max_turns:
        raise ValueError(f"data.max_turns={d.max_turns} > model.max_turns={m.max_turns}: the turn "
                         "embedding has no row for the oldest turns; set them equal")
    if d.num_speakers > m.num_speakers:
        raise ValueError(f"data.num_speakers={d.num_speakers} > model.num_speakers={m.num_speakers}: "
                         "set them equal")
    for key in ("max_steps", "grad_accum", "eval_every", "save_every", "log_every", "keep_checkpoints"):
        if getattr(t, key) < 1:
            raise ValueError(f"train.{key}={getattr(t, key)} must be >= 1")
    if t.warmup_steps < 0 or not 0.0 <= t.min_lr_ratio <= 1.0:
        raise ValueError("train.warmup_steps must be >= 0 and train.min_lr_ratio within [0, 1]")
    return cfg


def read_config(path: str | os.PathLike | None, overrides: Iterable[str] = (), cls: type = Config):
    """Defaults of ``cls``, then a TOML (or JSON) file, then dotted overrides; every key checked."""
    if path is None:
        cfg = cls()
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found (try configs/tiny.toml)")
        text = path.read_text("utf-8")
        try:
            d = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from None
        cfg = config_from_dict(d, where=str(path), cls=cls)
    return apply_overrides(cfg, overrides)


def load_config(path: str | os.PathLike | None, overrides: Iterable[str] = ()) -> Config:
    """The pretraining config: read (file + dotted overrides), resolve paths, validate."""
    return validate(resolve_paths(read_config(path, overrides)))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(d: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for section, values in d.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


def save_config(cfg: Sections, path: str | os.PathLike, what: str = "pretraining") -> Path:
    from preprocess.schema import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, f"# resolved dialogbert {what} config\n" + dumps_toml(cfg.to_dict()))
    return path
