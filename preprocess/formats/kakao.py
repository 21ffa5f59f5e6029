"""KakaoTalk exports: Windows PC, mobile (Android and iOS, Korean and English UI), macOS CSV.

Every reader takes a text stream (see encoding.open_text) and yields Message | BadLine.
A line that does not start a message continues the previous one (multi-line messages); a line
that looks like a message start but does not parse (a truncated export) is a BadLine.
One mobile reader serves Android and iOS: the shapes differ only in the timestamp, and real
files mix them less than their names suggest, so being liberal here costs nothing.

Heuristics (guesses, documented so they can be revisited):
- up to 4 lines before the first message may be a title, a file name or a saved date;
  other text before the first message is reported as a BadLine;
- PC writes joins/leaves/invites/kicks as bare lines: a bare line that matches
  media.KAKAO_SYSTEM_LINE ("A님이 나갔습니다.", "A invited B and C.") is a system line, even
  when it was really the continuation of a multi-line message (rare);
- deleted messages and notice-board posts (media.is_system_text) are system lines, speaker None;
- macOS CSV rows with an empty User, or whose text is "<User> invited/left ..." are system.
"""
from __future__ import annotations

import re
from datetime import date, datetime
from typing import IO, Iterator

from .base import BadLine, Message
from .clock import clock, combine, make_date, month
from .encoding import iter_line_batches, iter_lines
from .media import _DELETED, _NOTICE_PREFIXES, KAKAO_SYSTEM_LINE, is_system_text
from .pending import add_line, finish, last, outside

HEADER_PREFIXES = ("저장한 날짜", "Date Saved", "Saved on")
_HEADER_LINES = 4            # lines before the first message that may be a title/file name/date

# ---- PC -------------------------------------------------------------------------------------
# PC_MSG is for detection; read_pc cuts the line with str.find (faster than a lazy regex)
PC_MSG = re.compile(r"\[(.+?)\] \[((?:오전|오후|AM|PM) ?\d{1,2}:\d\d|\d{1,2}:\d\d(?: ?[AaPp][Mm])?)\] ?(.*)", re.S)
PC_GARBLED = re.compile(r"\[[^\]]*\] \[(?:오전|오후|AM|PM|\d)")
PC_DIVIDER = re.compile(r"-{4,} (.+?) -{4,}\s*$")
KO_DATE = re.compile(r"(\d{4})(?:년 ?|\. ?)(\d{1,2})(?:월 ?|\. ?)(\d{1,2})(?:일|\.|$)")
EN_DATE = re.compile(r"(?:[A-Za-z]+,? )?([A-Za-z]{3,9})\.? (\d{1,2}),? (\d{4})")

# ---- mobile ---------------------------------------------------------------------------------
# (date, clock, rest): the date and the clock are parsed once each (cached), not per line
M_KO = re.compile(r"(\d{4}년 \d{1,2}월 \d{1,2}일|\d{4}\. \d{1,2}\. \d{1,2}\.?) ((?:오전|오후) \d{1,2}:\d\d|\d{1,2}:\d\d)(.*)", re.S)
M_EN = re.compile(r"([A-Z][a-z]{2,8}\.? \d{1,2}, \d{4}),? (\d{1,2}:\d\d ?[AaPp][Mm])(.*)", re.S)
# old English Android: (clock, date, rest)
M_EN_OLD = re.compile(r"(\d{1,2}:\d\d ?[AaPp][Mm]),? ([A-Z][a-z]{2,8}\.? \d{1,2}, \d{4})(.*)", re.S)
M_GARBLED_KO = re.compile(r"\d{4}(?:년 \d{1,2}월 \d{1,2}일 (?:오전|오후)|\. \d{1,2}\. \d{1,2}\. (?:오전|오후|\d))")
M_GARBLED_EN = re.compile(r"[A-Z][a-z]{2,8}\.? \d{1,2}, \d{4}, \d|\d{1,2}:\d\d ?[ap]m, [A-Z][a-z]+ \d")
DAY_KO = re.compile(r"(\d{4})년 (\d{1,2})월 (\d{1,2})일 [월화수목금토일]요일\s*$")
DAY_EN = re.compile(r"(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, ([A-Z][a-z]+)\.? (\d{1,2}), (\d{4})\s*$")

# ---- macOS CSV ------------------------------------------------------------------------------
CSV_ROW = re.compile(r"(\d{4})-(\d\d)-(\d\d) (\d{1,2}):(\d\d)(?::(\d\d))?,(.*)", re.S)
_CSV_FIELD = re.compile(r'"([^"]*(?:""[^"]*)*)"|([^,"]*)')


def split_csv(s: str) -> list[str] | None:
    """Fields of one CSV record (quotes may hold commas and newlines); None if malformed."""
    out, pos, n = [], 0, len(s)
    while True:
        m = _CSV_FIELD.match(s, pos)
        q = m.group(1)
        out.append(q.replace('""', '"') if q is not None else m.group(2))
        pos = m.end()
        if pos >= n:
            return out
        if s[pos] != ",":
            return None
        pos += 1


def _finish(conv: str, p: list) -> Message:
    return finish(conv, p)


def _outside(ln: int, line: str) -> BadLine | None:
    return outside(ln, line, HEADER_PREFIXES, _HEADER_LINES)


def parse_day(text: str) -> date | None:
    m = KO_DATE.search(text)
    if m:
        return make_date(*m.groups())
    m = EN_DATE.search(text)
    if m:
        return make_date(m.group(3), month(m.group(1)), m.group(2))
    return None


def read_pc(f: IO[str], encoding: str = "") -> Iterator[Message | BadLine]:
    """`[name] [오전 1:01] text` under `--- 2020년 6월 28일 일요일 ---` dividers (ko and en UI)."""
    # The hot loop of the bench: lines come in lists (iter_line_batches) and the pending message
    # lives in locals (speaker, text, more lines, time, line, system), not in a list per message.
    day: date | None = None
    hms: dict[str, tuple[int, int] | None] = {}     # clock string -> (hour, minute) or None
    times: dict[str, datetime | None] = {}          # clock string -> datetime, current day
    pending = False
    ps: str | None = None
    ptext = ""
    pmore: list[str] | None = None
    pt: datetime | None = None
    pln = 0
    psys = False
    ln = 0
    for batch in iter_line_batches(f, encoding):
        for line in batch:
            ln += 1
            if line.__class__ is not str:
                yield line
                continue
            c = line[:1]
            if c == "[":
                # "[name] [오전 1:01] text", cut with str.find (a regex with a lazy name is 5x slower)
                i = line.find("] [", 1)
                if i > 0:
                    j = line.find("]", i + 3)
                    ts = line[i + 3:j] if j > 0 else ""
                    t = times.get(ts, 0)
                    if t == 0:
                        hm = hms.get(ts, 0)
                        if hm == 0:
                            hm = hms[ts] = clock(ts) if 0 < len(ts) <= 12 else None
                        if hm is not None:
                            t = times[ts] = combine(day, hm)
                    if t != 0:
                        if pending:
                            yield (Message("", ps, ptext, pt, pln, psys) if pmore is None
                                   else _finish("", [ps, ptext, pmore, pt, pln, psys]))
                        text = line[j + 2:] if line[j + 1:j + 2] == " " else line[j + 1:]
                        if text in _DELETED or text.startswith(_NOTICE_PREFIXES):    # is_system_text
                            ps, psys = None, True
                        else:
                            ps, psys = line[1:i], False
                        ptext, pmore, pt, pln, pending = text, None, t, ln, True
                        continue
                if PC_GARBLED.match(line):
                    if pending:
                        yield (Message("", ps, ptext, pt, pln, psys) if pmore is None
                               else _finish("", [ps, ptext, pmore, pt, pln, psys]))
                        pending = False
                    yield BadLine(ln, "looks like a message line but does not parse (truncated?)", line[:80])
                    continue
            elif c == "-":
                m = PC_DIVIDER.match(line)
                if m is not None:
                    d = parse_day(m.group(1))
                    if d is not None:
                        if pending:
                            yield (Message("", ps, ptext, pt, pln, psys) if pmore is None
                                   else _finish("", [ps, ptext, pmore, pt, pln, psys]))
                            pending = False
                        day = d
                        times.clear()
                        continue
            if line[-1:] in (".", "다") and KAKAO_SYSTEM_LINE.fullmatch(line):
                if pending:
                    yield (Message("", ps, ptext, pt, pln, psys) if pmore is None
                           else _finish("", [ps, ptext, pmore, pt, pln, psys]))
                    pending = False
                yield Message("", None, line, None, ln, True)
            elif pending:
                if pmore is None:
                    pmore = [line]
                else:
                    pmore.append(line)
            else:
                bad = _outside(ln, line)
                if bad is not None:
                    yield bad
    if pending:
        yield (Message("", ps, ptext, pt, pln, psys) if pmore is None
               else _finish("", [ps, ptext, pmore, pt, pln, psys]))


def read_mobile(f: IO[str], encoding: str = "") -> Iterator[Message | BadLine]:
    """Android and iOS: `<timestamp>, name : text`; `<timestamp>, system text` (Android) or
    `<timestamp>: system text` (iOS); bare timestamps and `2022년 10월 27일 목요일` open a day."""
    p: list | None = None
    dates: dict[str, date | None] = {}
    hms: dict[str, tuple[int, int] | None] = {}
    last_key, last_t = None, None
    for ln, line in iter_lines(f, encoding):
        if line.__class__ is not str:
            yield line
            continue
        c = line[:1]
        m = None
        if "0" <= c <= "9":
            m = M_KO.match(line)
            if m is not None:
                ds, cs, rest = m.groups()
            else:
                m = M_EN_OLD.match(line)
                if m is not None:
                    cs, ds, rest = m.groups()
                elif DAY_KO.match(line):
                    if p is not None:
                        yield _finish("", p)
                        p = None
                    continue
                elif M_GARBLED_KO.match(line) or M_GARBLED_EN.match(line):
                    if p is not None:
                        yield _finish("", p)
                        p = None
                    yield BadLine(ln, "looks like a message line but does not parse (truncated?)", line[:80])
                    continue
        elif "A" <= c <= "Z":
            m = M_EN.match(line)
            if m is not None:
                ds, cs, rest = m.groups()
            elif DAY_EN.match(line):
                if p is not None:
                    yield _finish("", p)
                    p = None
                continue
            elif M_GARBLED_EN.match(line):
                if p is not None:
                    yield _finish("", p)
                    p = None
                yield BadLine(ln, "looks like a message line but does not parse (truncated?)", line[:80])
                continue
        if m is not None:
            if p is not None:
                yield _finish("", p)
                p = None
            key = (ds, cs)
            if key != last_key:
                d = dates.get(ds, 0)
                if d == 0:
                    d = dates[ds] = parse_day(ds)
                hm = hms.get(cs, 0)
                if hm == 0:
                    hm = hms[cs] = clock(cs)
                last_key, last_t = key, combine(d, hm)
            if last_t is None:
                yield BadLine(ln, f"invalid date or time {ds} {cs}", line[:80])
                continue
            if not rest or rest.isspace():
                continue                                   # a bare timestamp opens a day
            if rest[0] == ",":
                body = rest[2:] if rest[1:2] == " " else rest[1:]
                i = body.find(" : ")
                if i > 0:
                    text = body[i + 3:]
                    p = ([None, text, None, last_t, ln, True] if is_system_text(text)
                         else [body[:i], text, None, last_t, ln, False])
                elif body.endswith(" :") and len(body) > 2:
                    p = [body[:-2], "", None, last_t, ln, False]
                else:
                    p = [None, body, None, last_t, ln, True]
            elif rest[0] == ":":
                p = [None, rest[1:].lstrip(" "), None, last_t, ln, True]
            else:
                yield BadLine(ln, "timestamp not followed by ', ' or ': '", line[:80])
            continue
        if p is not None and line.startswith(HEADER_PREFIXES):
            continue
        bad = add_line(p, ln, line, HEADER_PREFIXES, _HEADER_LINES)
        if bad is not None:
            yield bad
    yield from last(p, _finish)


def _finish_csv(p: list) -> Message | BadLine:
    t, rest, more, ln = p
    while more and not more[-1].strip():
        more.pop()
    if more:
        rest = rest + "\n" + "\n".join(more)
    fields = split_csv(rest)
    if fields is None or len(fields) < 2:
        return BadLine(ln, "CSV row with unbalanced quotes or missing fields", rest[:80])
    user, text = fields[0], (fields[1] if len(fields) == 2 else ",".join(fields[1:]))
    if (not user or is_system_text(text)
            or (text.startswith(user + " ") and KAKAO_SYSTEM_LINE.fullmatch(text))):
        return Message("", None, text, t, ln, True)
    return Message("", user, text, t, ln, False)


def read_mac_csv(f: IO[str], encoding: str = "") -> Iterator[Message | BadLine]:
    """`Date,User,Message` then `2015-07-09 20:34:26,"name","text"` (quotes may hold newlines)."""
    p: list | None = None
    for ln, line in iter_lines(f, encoding):
        if line.__class__ is not str:
            yield line
            continue
        m = CSV_ROW.match(line) if "0" <= line[:1] <= "9" else None
        if m is not None:
            if p is not None:
                yield _finish_csv(p)
            g = m.groups()
            try:
                t = datetime(int(g[0]), int(g[1]), int(g[2]), int(g[3]), int(g[4]), int(g[5] or 0))
            except ValueError:
                p = None
                yield BadLine(ln, "invalid date or time", line[:80])
                continue
            p = [t, g[6], None, ln]
        elif p is not None:
            if p[2] is None:
                p[2] = [line]
            else:
                p[2].append(line)
        elif ln > 1 and line.strip():
            yield BadLine(ln, "text outside any CSV row", line[:80])
    if p is not None:
        yield _finish_csv(p)
