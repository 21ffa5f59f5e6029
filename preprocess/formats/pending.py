"""The message being read: line-based readers keep it as a list
``[speaker, text, more_lines, time, line, system]`` until the next message (or the end) closes it.
Shared by the KakaoTalk and LINE readers."""
from __future__ import annotations

from typing import Iterator

from .base import BadLine, Message

OUTSIDE = "text outside any message (a fragment, or an unknown system line)"


def finish(conv: str, p: list, unquote: bool = False) -> Message:
    """Build the pending message. Blank lines before a divider belong to no one; with ``unquote``
    (LINE) a multi-line message loses its wrapping quotes and ``""`` becomes ``"``."""
    speaker, text, more, t, line, system = p
    if more:
        while more and not more[-1].strip():
            more.pop()
        if more:
            text = text + "\n" + "\n".join(more)
            if unquote and len(text) > 1 and text[0] == '"' and text[-1] == '"':
                text = text[1:-1].replace('""', '"')
    return Message(conv, speaker, text, t, line, system)


def outside(ln: int, line: str, header_prefixes: tuple[str, ...], header_lines: int) -> BadLine | None:
    """A line before the first message: a header line is fine, other text is reported."""
    if ln <= header_lines or not line.strip() or line.startswith(header_prefixes):
        return None
    return BadLine(ln, OUTSIDE, line[:80])


def add_line(p: list | None, ln: int, line: str, header_prefixes: tuple[str, ...],
             header_lines: int) -> BadLine | None:
    """A line that starts no message: the pending message's next line or, before any message,
    a header line (fine) or a fragment (reported)."""
    if p is None:
        return outside(ln, line, header_prefixes, header_lines)
    if p[2] is None:
        p[2] = [line]
    else:
        p[2].append(line)
    return None


def new_day(d, day, times: dict):
    """A date divider: the day it opens; the day's cache of parsed times is emptied when it changes."""
    if d != day:
        times.clear()
    return d


def last(p: list | None, finish_one) -> Iterator[Message]:
    """The end of the file: the pending message, if any, closed by the reader's ``finish_one``."""
    if p is not None:
        yield finish_one("", p)
