"""The shard schema: the one contract between the preprocessor and every later stage.

A shard is a JSON Lines file (``shard-00000.jsonl``); each line is one conversation::

    {"id": "3f2a9c0d1e4b5a67",          # stable: same input, same id
     "source": "kakao-pc",              # the reader that produced it (see preprocess.formats)
     "lang": "ko",                      # "ko", "en" or "other" (by script share)
     "turns": [
        {"speaker": "S1",               # per-conversation pseudonym, S1 = first to speak
         "text": "안녕\\n뭐해?",          # the turn's messages, joined by "\\n" (message boundaries)
         "sentences": ["안녕", "뭐해?"],  # kss split of the turn (at least one entry)
         "time": "2020-06-28T01:01:00"}  # ISO time of the turn's first message, or null
     ]}

A turn may also carry ``"marked": true`` (a speaker named to ``preprocess.pipeline.run``'s
``mark_speakers``, e.g. `dialogbert bot --reply-as`): ``Turn.marked``, written only when true.

A folder of shards carries ``manifest.json`` (see preprocess.pipeline).

Later stages import this module only: readers, the anonymizer and kss stay out of their way.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

SCHEMA_VERSION = 1

# Typed placeholders the anonymizer writes. The tokenizer makes each one a single special token.
PLACEHOLDERS: tuple[str, ...] = (
    "[NAME]", "[PHONE]", "[EMAIL]", "[URL]", "[RRN]", "[CARD]", "[ACCOUNT]", "[ADDRESS]",
    "[POSTCODE]", "[BIZNO]", "[LICENSE]", "[PASSPORT]", "[PLATE]", "[IP]", "[MENTION]",
)

# Share of conversations held out for testing, by source; the evaluation protocol
# (docs/protocol.md) uses 10% for conversation corpora and 20% for question/answer corpora.
QA_SOURCES = frozenset({"chatbotdata"})


@dataclass
class Turn:
    speaker: str
    text: str
    sentences: list[str] = field(default_factory=list)
    time: str | None = None
    marked: bool = False  # a speaker named to preprocess.pipeline.run's mark_speakers

    @property
    def messages(self) -> list[str]:
        return self.text.split("\n")

    def to_dict(self) -> dict:
        d = {"speaker": self.speaker, "text": self.text, "sentences": self.sentences or [self.text], "time": self.time}
        if self.marked:
            d["marked"] = True
        return d


@dataclass
class Conversation:
    id: str
    source: str
    lang: str
    turns: list[Turn]

    def to_dict(self) -> dict:
        return {"id": self.id, "source": self.source, "lang": self.lang,
                "turns": [t.to_dict() for t in self.turns]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> "Conversation":
        turns = [Turn(t["speaker"], t["text"], list(t.get("sentences") or [t["text"]]), t.get("time"),
                      bool(t.get("marked")))
                 for t in d["turns"]]
        return cls(str(d["id"]), d.get("source", "jsonl"), d.get("lang", "other"), turns)


class ShardError(ValueError):
    """A shard line that does not follow the schema; names the file and line."""


def parse_line(line: str, path: str | os.PathLike = "<string>", lineno: int = 0) -> Conversation:
    try:
        d = json.loads(line)
        if not isinstance(d, dict) or not isinstance(d.get("turns"), list) or "id" not in d:
            raise ValueError("expected an object with 'id' and a list of 'turns'")
        for t in d["turns"]:
            if not isinstance(t, dict) or not isinstance(t.get("text"), str) or "speaker" not in t:
                raise ValueError("every turn needs 'speaker' and a string 'text'")
        return Conversation.from_dict(d)
    except (ValueError, KeyError, TypeError) as e:
        raise ShardError(f"{path}:{lineno}: not a dialogbert conversation: {e}") from None


def shard_files(folder: str | os.PathLike) -> list[Path]:
    """The shard files of a folder (or the one file given), in a stable order."""
    p = Path(folder)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such shard folder (run `dialogbert preprocess` first)")
    files = sorted(p.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{p}: holds no *.jsonl shards (run `dialogbert preprocess` first)")
    return files


def read_shards(folder: str | os.PathLike, split: str | None = None) -> Iterator[Conversation]:
    """Stream the conversations of a shard folder; ``split`` = "train" / "test" / None (all)."""
    for path in shard_files(folder):
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                conv = parse_line(line, path, lineno)
                if split is None or split_of(conv) == split:
                    yield conv


def test_fraction(source: str) -> float:
    return 0.2 if source in QA_SOURCES else 0.1


def split_of(conv: Conversation | str, fraction: float | None = None, source: str = "") -> str:
    """Deterministic train/test split by conversation id (a hash, so it scales to any corpus
    and needs no global shuffle). Pretraining, fine-tuning, indexing and evaluation all use it,
    so no test conversation is ever trained on."""
    if isinstance(conv, Conversation):
        conv_id, source = conv.id, conv.source
    else:
        conv_id = conv
    if fraction is None:
        fraction = test_fraction(source)
    h = int.from_bytes(hashlib.sha1(conv_id.encode("utf-8")).digest()[:8], "big") / 2**64
    return "test" if h < fraction else "train"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file so that a reader never sees half of it (tmp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shard(path: str | os.PathLike, conversations: Iterable[Conversation]) -> int:
    """Atomically write one shard; returns the number of conversations."""
    lines = [c.to_json() for c in conversations]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
