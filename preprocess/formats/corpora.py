"""Readers for our own shards (jsonl) and the bundled public corpora.

conv is the conversation's key: the shard id, the chitchat id, or the 1-based record number
(chatbotdata row, xpersona dialogue, chatterbot conversation). line is the file line for the
line-based formats (jsonl, chatbotdata) and the 1-based record number for JSON and YAML.
JSON corpora are decoded one top-level item at a time, so a big file is never held whole;
chatterbot YAML files are small lists and are loaded whole (up to 16 MB).
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import IO, Iterator

from .base import BadLine, FormatError, Message
from .encoding import MAX_LINE, iter_lines
from .kakao import split_csv

MAX_ITEM = 16 << 20          # characters of one JSON item / one YAML file
_CHUNK = 1 << 20
_WS = " \t\r\n"


def _iso(ts) -> datetime | None:
    if not isinstance(ts, str) or not ts:
        return None
    if ts[-1] == "Z":                       # Python 3.10's fromisoformat does not take "Z"
        ts = ts[:-1]
    try:
        return datetime.fromisoformat(ts).replace(tzinfo=None)
    except ValueError:
        return None


def read_jsonl(f: IO[str], encoding: str = "") -> Iterator[Message | BadLine]:
    """Our shard schema: one conversation per line; a turn's text holds its messages joined by
    "\\n", so each line of it is yielded as one message."""
    loads = json.loads
    for ln, line in iter_lines(f, encoding):
        if line.__class__ is not str:
            yield line
            continue
        if not line.strip():
            continue
        try:
            d = loads(line)
            conv = str(d["id"])
            turns = d["turns"]
            out = []
            for t in turns:
                speaker, when = t["speaker"], _iso(t.get("time"))
                for m in t["text"].split("\n"):
                    out.append(Message(conv, speaker, m, when, ln))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            yield BadLine(ln, f"not a dialogbert conversation: {e}", line[:80])
            continue
        yield from out


class _JsonItems:
    """Top-level items of a JSON array or object, decoded one at a time from a text stream."""

    def __init__(self, f: IO[str], path):
        self.f, self.path = f, path
        self.buf, self.pos, self.eof = "", 0, False
        self.dec = json.JSONDecoder()

    def _more(self, need: int = _CHUNK) -> bool:
        if self.eof:
            return False
        if self.pos > len(self.buf) // 2:
            self.buf, self.pos = self.buf[self.pos:], 0
        chunk = self.f.read(max(_CHUNK, need))
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _peek(self) -> str:
        while True:
            buf, pos = self.buf, self.pos
            while pos < len(buf) and buf[pos] in _WS:
                pos += 1
            self.pos = pos
            if pos < len(buf):
                return buf[pos]
            if not self._more():
                return ""

    def _value(self):
        need = _CHUNK
        while True:
            try:
                v, end = self.dec.raw_decode(self.buf, self.pos)
                self.pos = end
                return v
            except json.JSONDecodeError:
                if len(self.buf) - self.pos > MAX_ITEM or not self._more(need):
                    raise
                need *= 2

    def items(self) -> Iterator[tuple[str | None, object]]:
        c = self._peek()
        if c not in ("[", "{"):
            raise FormatError(self.path, "expected a JSON array or object")
        is_obj = c == "{"
        self.pos += 1
        while True:
            c = self._peek()
            if c in ("]", "}"):
                return
            if c == ",":
                self.pos += 1
                continue
            key = None
            if is_obj:
                key = self._value()
                if self._peek() != ":":
                    raise json.JSONDecodeError("expected ':'", self.buf, self.pos)
                self.pos += 1
                self._peek()
            yield key, self._value()
            c = self._peek()
            if c == "":
                raise json.JSONDecodeError("unexpected end of file", self.buf, self.pos)


def _json_records(f: IO[str], path) -> Iterator[tuple[int, str | None, object] | BadLine]:
    n = 0
    try:
        for key, value in _JsonItems(f, path).items():
            n += 1
            yield n, key, value
    except json.JSONDecodeError as e:
        yield BadLine(n + 1, f"JSON ends early or is malformed ({e.msg}); the rest of the file is skipped", "")
    except (OSError, EOFError) as e:
        yield BadLine(n + 1, f"the file ends early or is corrupt ({e})", "")


def _json_conversations(f: IO[str], path, convert, shape: str) -> Iterator[Message | BadLine]:
    """Each record of a JSON corpus through ``convert(n, key, value)`` -> its messages; a record
    that is not of the expected shape is reported (``shape`` formatted with ``n`` and ``key``) and
    skipped."""
    for rec in _json_records(f, path):
        if rec.__class__ is BadLine:
            yield rec
            continue
        n, key, value = rec
        try:
            out = convert(n, key, value)
        except (KeyError, TypeError) as e:
            yield BadLine(n, f"{shape.format(n=n, key=key)} ({e})", "")
            continue
        yield from out


def read_chitchat(f: IO[str], encoding: str = "", path="<chitchat>") -> Iterator[Message | BadLine]:
    """{id: {"messages": [[{text, timestamp, sender}, ...], ...]}}: each inner list is one turn."""
    def convert(n, key, value):
        return [Message(str(key), str(m["sender"]), str(m["text"]), _iso(m.get("timestamp")), n)
                for turn in value["messages"] for m in turn]
    return _json_conversations(f, path, convert, "conversation {key!r} is not {{'messages': [[{{text, sender}}]]}}")


def read_xpersona(f: IO[str], encoding: str = "", path="<xpersona>") -> Iterator[Message | BadLine]:
    """[{"persona": [...], "dialogue": [[u, r], ...]}]: speakers A and B alternate."""
    def convert(n, key, value):
        texts = [t for pair in value["dialogue"] for t in pair]
        return [Message(str(n), "AB"[i % 2], t, None, n) for i, t in enumerate(texts)
                if isinstance(t, str) and t.strip()]
    return _json_conversations(f, path, convert, "dialogue {n} has no list of [u, r] pairs")


def read_chatbotdata(f: IO[str], encoding: str = "") -> Iterator[Message | BadLine]:
    """CSV `Q,A,label`: each row one conversation, speakers "Q" and "A"."""
    it = iter_lines(f, encoding)
    first, row = True, 0
    for ln, line in it:
        if line.__class__ is not str:
            yield line
            continue
        quotes = line.count('"')
        if quotes % 2:                                  # a quoted field goes on over lines
            parts, size = [line], len(line)
            while quotes % 2 and size <= MAX_LINE:
                nxt = next(it, None)
                if nxt is None or nxt[1].__class__ is not str:
                    break
                parts.append(nxt[1])
                quotes += nxt[1].count('"')
                size += len(nxt[1])
            if quotes % 2:
                yield BadLine(ln, "unterminated quote in a CSV row", line[:80])
                continue
            line = "\n".join(parts)
        if first:
            first = False
            if line.replace(" ", "").startswith("Q,A"):
                continue
        if not line.strip():
            continue
        fields = split_csv(line)
        if fields is None or len(fields) < 2:
            yield BadLine(ln, "CSV row without Q and A fields", line[:80])
            continue
        row += 1
        conv = str(row)
        if fields[0]:
            yield Message(conv, "Q", fields[0], None, ln)
        if fields[1]:
            yield Message(conv, "A", fields[1], None, ln)


def read_chatterbot(f: IO[str], encoding: str = "", path="<chatterbot>") -> Iterator[Message | BadLine]:
    """YAML `conversations:` lists; each list one conversation, speakers A and B alternating."""
    import yaml

    text = f.read(MAX_ITEM + 1)
    if len(text) > MAX_ITEM:
        raise FormatError(path, f"chatterbot YAML larger than {MAX_ITEM >> 20} MB; split it")
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        yield BadLine(mark.line + 1 if mark else 1, f"malformed YAML: {getattr(e, 'problem', e)}", "")
        return
    convs = d.get("conversations") if isinstance(d, dict) else None
    if not isinstance(convs, list):
        raise FormatError(path, "YAML without a 'conversations:' list")
    for n, conv in enumerate(convs, 1):
        if not isinstance(conv, list):
            yield BadLine(n, f"conversation {n} is not a list of lines", str(conv)[:80])
            continue
        for i, t in enumerate(conv):
            if t is not None and str(t).strip():
                yield Message(str(n), "AB"[i % 2], str(t), None, n)
