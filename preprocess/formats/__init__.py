"""Readers for messenger exports and the bundled corpora, chosen by content, not file name.

    detect(path) -> format name            (raises FormatError for empty/binary/unknown files)
    iter_messages(path, fmt=None) -> Iterator[Message | BadLine]    (streams; bounded memory)
    read_stream(f, fmt, encoding) -> the same over an open text stream
    media_kind(text) -> "photo" | "emoticon" | ... | None          (media placeholder texts)
    FORMATS                                 all format names (the `source` field of shards)

Any input may be gzip-compressed and UTF-8 (with or without BOM), UTF-16 or CP949; see
encoding.py. Each format's reader lives in kakao.py, line.py or corpora.py.

Detection: JSON/CSV/YAML corpora by their first bytes or header row; messenger exports by
scoring the first 400 lines against every format's line shapes (headers count double, LINE
desktop needs two hits) and taking the best. Android and iOS English differ only in details
(full month names and bare timestamp lines vs. abbreviations, weekday day lines and "PM: "
system lines); both are read by the same reader, so a wrong guess there only mislabels `source`.
"""
from __future__ import annotations

import re
from typing import Callable, Iterator

from . import corpora, kakao, line
from .base import BadLine, FormatError, Message
from .clock import clock
from .encoding import open_text
from .media import media_kind

__all__ = ["BadLine", "FormatError", "Message", "detect", "iter_messages", "media_kind", "FORMATS"]

_READERS: dict[str, Callable] = {
    "kakao-pc": kakao.read_pc,
    "kakao-android": kakao.read_mobile,
    "kakao-ios": kakao.read_mobile,
    "kakao-mac-csv": kakao.read_mac_csv,
    "line-mobile": line.read_mobile,
    "line-desktop": line.read_desktop,
    "jsonl": corpora.read_jsonl,
    "chitchat": corpora.read_chitchat,
    "chatbotdata": corpora.read_chatbotdata,
    "chatterbot": corpora.read_chatterbot,
    "xpersona": corpora.read_xpersona,
}
_NEEDS_PATH = frozenset({"chitchat", "chatterbot", "xpersona"})
FORMATS: tuple[str, ...] = tuple(_READERS)

SNIFF_CHARS = 1 << 16
SNIFF_LINES = 400
_CHITCHAT = re.compile(r'\{\s*"(?:[^"\\]|\\.)*"\s*:\s*\{\s*"messages"\s*:')
_SAVED = re.compile(r"(?:저장한 날짜|Date Saved) ?: ?(\S+)")


def detect(path) -> str:
    """The format of ``path`` from its first 64K characters (never from its name)."""
    f, _ = open_text(path)
    with f:
        head = f.read(SNIFF_CHARS)
        complete = len(head) < SNIFF_CHARS
    return sniff(head, path, complete)


def sniff(head: str, path="<text>", complete: bool = True) -> str:
    s = head.lstrip("\ufeff \t\r\n")
    if not s:
        raise FormatError(path, "empty file")
    first = s.split("\n", 1)[0].strip()
    if s[0] == "{":
        if '"turns"' in first:
            return "jsonl"
        if _CHITCHAT.match(s):
            return "chitchat"
        raise FormatError(path, "unknown JSON: neither dialogbert shards ({\"id\", \"turns\"} per line) "
                                "nor chitchat ({id: {\"messages\": ...}})")
    if s[0] == "[" and re.match(r"\[\s*\{", s):
        if '"dialogue"' in s[:SNIFF_CHARS]:
            return "xpersona"
        raise FormatError(path, "unknown JSON list: expected xpersona [{\"persona\", \"dialogue\"}]")
    flat = first.replace(" ", "")
    if flat.startswith("Q,A"):
        return "chatbotdata"
    if flat == "Date,User,Message":
        return "kakao-mac-csv"
    if re.search(r"^conversations:\s*$", s, re.M):
        return "chatterbot"
    lines = s.split("\n")
    if not complete and len(lines) > 1:
        lines.pop()                                  # the last line may be cut short
    score = dict.fromkeys(FORMATS, 0.0)
    for ln in lines[:SNIFF_LINES]:
        _score_line(ln.rstrip("\r"), score)
    if score["line-desktop"] < 2:
        score["line-desktop"] = 0
    best = max(score, key=score.get)
    if score[best] < 1:
        raise FormatError(path, f"unknown format (first line {first[:60]!r}); "
                                f"expected one of: {', '.join(FORMATS)}")
    return best


def _score_line(ln: str, score: dict) -> None:
    c = ln[:1]
    if not c:
        return
    if c == "[":
        if kakao.PC_MSG.match(ln):
            score["kakao-pc"] += 1
        elif ln.startswith("[LINE]"):
            score["line-mobile"] += 3
        return
    if c == "-":
        m = kakao.PC_DIVIDER.match(ln)
        if m and kakao.parse_day(m.group(1)):
            score["kakao-pc"] += 1
        return
    m = _SAVED.match(ln)
    if m:
        v = m.group(1)
        if re.match(r"\d{4}-\d\d-\d\d", v):
            score["kakao-pc"] += 2
        elif re.match(r"\d{4}년", v):
            score["kakao-android"] += 2
        elif re.match(r"\d{4}\.", v):
            score["kakao-ios"] += 2
        elif v[:1].isalpha():
            _en_month(v, score, 2)
        return
    if "\t" in ln:
        if clock(ln.split("\t", 1)[0][:12]):
            score["line-mobile"] += 1
        return
    if "0" <= c <= "9" or "A" <= c <= "Z":
        m = kakao.M_KO.match(ln) or kakao.M_EN.match(ln)
        if m:
            ds, _, rest = m.groups()
            if "년" in ds:
                score["kakao-android"] += 1
            elif ". " in ds:
                score["kakao-ios"] += 1
            else:
                _en_month(ds, score, 1)
            if rest[:1] == ":":
                score["kakao-ios"] += 1
            elif not rest.strip():
                score["kakao-android"] += 1          # a bare timestamp opens an Android day
            return
        if kakao.M_EN_OLD.match(ln):
            score["kakao-android"] += 1
            return
        if kakao.DAY_KO.match(ln) or kakao.DAY_EN.match(ln):
            score["kakao-ios"] += 1
        if kakao.CSV_ROW.match(ln):
            score["kakao-mac-csv"] += 1
            return
    if line.parse_day(ln):
        score["line-desktop"] += 0.5
        score["line-mobile"] += 0.5
    elif line.D_MSG.match(ln):
        score["line-desktop"] += 1


def _en_month(ts: str, score: dict, w: float) -> None:
    """Android writes full month names, iOS abbreviations; "May" is both."""
    mon = ts.split(" ", 1)[0].rstrip(".,")
    if mon == "May":
        score["kakao-android"] += w / 2
        score["kakao-ios"] += w / 2
    else:
        score["kakao-android" if len(mon) > 3 else "kakao-ios"] += w


def iter_messages(path, fmt: str | None = None) -> Iterator[Message | BadLine]:
    """Stream the messages (and system lines, and BadLines) of one export. Raises FormatError
    at once for a file that cannot be read as ``fmt`` (detected when None)."""
    if fmt is None:
        fmt = detect(path)
    reader = _READERS.get(fmt)
    if reader is None:
        raise FormatError(path, f"unknown format name {fmt!r}; expected one of: {', '.join(FORMATS)}")
    f, enc = open_text(path)
    if fmt in _NEEDS_PATH:
        return _closing(f, reader(f, enc, path=str(path)))
    return _closing(f, reader(f, enc))


def read_stream(f, fmt: str, encoding: str = "") -> Iterator[Message | BadLine]:
    """iter_messages over an open text stream (a byte range of a big export, say); not for the
    formats whose reader needs the file's path. Closes ``f`` at the end."""
    if fmt in _NEEDS_PATH or fmt not in _READERS:
        raise ValueError(f"format {fmt!r} cannot be read from a stream")
    return _closing(f, _READERS[fmt](f, encoding))


def _closing(f, it: Iterator) -> Iterator:
    with f:
        yield from it
