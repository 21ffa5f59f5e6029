"""Readers for messenger exports and the bundled corpora, chosen by content, not file name.

    detect(path) -> format name            (raises FormatError when nothing matches)
    iter_messages(path, fmt=None) -> Iterator[Message | BadLine]

STUB: only the canonical JSONL reader exists so far; the other readers replace this.
"""
from __future__ import annotations

import json
from typing import Iterator

from .base import BadLine, FormatError, Message

__all__ = ["BadLine", "FormatError", "Message", "detect", "iter_messages", "FORMATS"]

FORMATS = ("jsonl",)


def detect(path) -> str:
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.lstrip(b"\xef\xbb\xbf").startswith(b"{"):
        return "jsonl"
    raise FormatError(path, "unknown format")


def iter_messages(path, fmt: str | None = None) -> Iterator[Message | BadLine]:
    fmt = fmt or detect(path)
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                for t in d["turns"]:
                    for m in t["text"].split("\n"):
                        yield Message(str(d["id"]), t["speaker"], m, None, lineno)
            except (ValueError, KeyError, TypeError) as e:
                yield BadLine(lineno, f"not a JSON conversation: {e}", line[:80])
