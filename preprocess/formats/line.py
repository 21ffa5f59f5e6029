"""LINE exports: the mobile `.txt` export (tab-separated) and the desktop "save chat" file.

Mobile:  `03:05pm<TAB>name<TAB>text`; an empty name or only two fields is a system line.
Desktop: `16:10 name text`, single spaces, so a name with spaces is ambiguous. Heuristic
(``NameResolver``): a first pass over up to 50,000 message lines counts how often each 1-3 word
prefix starts a line and which words follow it. A prefix is extended by the next word when
every word that ever follows it does so at least twice (the rest of a name repeats on every
line of that person; the first word of free text does not), and names learned from system lines
("X joined the group.") win outright. A person with one message and a multi-word name is cut
after the first word; one whose every message starts with one of a few repeated words gets
those words in the name. Both are rare in real chats and reported nowhere: they are guesses.
Both: day lines in many styles set the date; multi-line messages are wrapped in double quotes
(a line that is not a message continues the previous one; the quotes are removed at the end).
"""
from __future__ import annotations

import re
from collections import Counter
from datetime import date, datetime
from typing import IO, Iterator

from .base import BadLine, Message
from .clock import clock, combine, make_date
from .encoding import iter_lines
from .media import is_system_text
from .pending import add_line, finish, last, new_day

HEADER_PREFIXES = ("[LINE]", "Saved on", "保存日時", "저장한 날짜", "저장 날짜", "儲存日期", "保存日期")
_HEADER_LINES = 4

DAY = re.compile(
    r"(\d{4})[./-] ?(\d{1,2})[./-] ?(\d{1,2})\.?"
    r"(?: ?(?:\([^()\t]{1,12}\)|（[^\t]{1,12}）|[A-Za-z]{3,9}\.?|[월화수목금토일]요일|[月火水木金土日]曜日))?\s*$"
    r"|(?:[A-Za-z]{3,9}\.?,? )?(\d{1,2})/(\d{1,2})/(\d{4})(?: ?\([^()\t]{1,12}\))?\s*$"
    r"|(\d{4})[年년] ?(\d{1,2})[月월] ?(\d{1,2})[日일]"
    r"(?: ?(?:\([^()\t]{1,6}\)|（[^\t]{1,6}）|[월화수목금토일]요일|[月火水木金土日]曜日|星期.))?\s*$")

# desktop: "16:10 name text" (also "오후 4:10 ...", "4:10 PM ...")
D_MSG = re.compile(r"((?:(?:오전|오후|午前|午後|上午|下午) ?)?\d{1,2}:\d\d(?: [AP]M(?= ))?) (.*)", re.S)

SYSTEM = re.compile(
    r"(.+?) (?:joined the (?:group|chat)|left the (?:group|chat)|has left the (?:group|chat)|unsent a message"
    r"|invited .+ to the group|removed .+ from the group|changed the group (?:name|photo|icon).*)\.?"
    r"|(.+?)が(?:グループに参加しました|退出しました|メッセージの送信を取り消しました|.+をグループに招待しました"
    r"|.+を退会させました)。?"
    r"|(.+?)님이 (?:그룹에 참여했습니다|.*초대했습니다|나갔습니다|퇴장했습니다|메시지 전송을 취소했습니다)\.?"
    r"|Message unsent\.?|메시지 전송을 취소했습니다\.?")


def parse_day(line: str) -> date | None:
    """The date of a day line, or None when the line is not one."""
    m = DAY.match(line)
    if m is None:
        return None
    g = m.groups()
    if g[0]:
        return make_date(g[0], g[1], g[2])
    if g[3]:
        mo, d = int(g[3]), int(g[4])
        if mo > 12 >= d:                     # a day-first locale
            mo, d = d, mo
        return make_date(g[5], mo, d)
    if g[6]:
        return make_date(g[6], g[7], g[8])
    return make_date(g[9], g[10], g[11])


def _finish(conv: str, p: list) -> Message:
    return finish(conv, p, unquote=True)


def read_mobile(f: IO[str], encoding: str = "") -> Iterator[Message | BadLine]:
    """`time<TAB>name<TAB>text` under day lines; an empty name or two fields is a system line."""
    day: date | None = None
    hms: dict[str, tuple[int, int] | None] = {}      # time field -> (hour, minute) or None
    times: dict[str, datetime | None] = {}           # time field -> datetime, current day
    p: list | None = None
    for ln, line in iter_lines(f, encoding):
        if line.__class__ is not str:
            yield line
            continue
        tab = line.find("\t")
        if tab > 0:
            tf = line[:tab]
            t = times.get(tf, 0)
            if t == 0:
                hm = hms.get(tf, 0)
                if hm == 0:
                    hm = hms[tf] = clock(tf) if len(tf) <= 12 else None
                if hm is not None:
                    t = times[tf] = combine(day, hm)
            if t != 0:
                if p is not None:
                    yield _finish("", p)
                rest = line[tab + 1:]
                j = rest.find("\t")
                if j < 0:
                    p = [None, rest, None, t, ln, True]
                elif j == 0 or is_system_text(rest[j + 1:]):
                    p = [None, rest[j + 1:], None, t, ln, True]
                else:
                    p = [rest[:j], rest[j + 1:], None, t, ln, False]
                continue
            if ":" in tf and len(tf) <= 12 and any(ch.isdigit() for ch in tf):
                if p is not None:
                    yield _finish("", p)
                    p = None
                yield BadLine(ln, "looks like a message line but the time does not parse (truncated?)", line[:80])
                continue
        elif line and line[0] not in " \"" and line[-1:] != '"':
            d = parse_day(line) if "\t" not in line else None
            if d is not None:
                if p is not None:
                    yield _finish("", p)
                p, day = None, new_day(d, day, times)
                continue
            if line.startswith(HEADER_PREFIXES):
                continue
        bad = add_line(p, ln, line, HEADER_PREFIXES, _HEADER_LINES)
        if bad is not None:
            yield bad
    yield from last(p, _finish)


class NameResolver:
    """Splits `name text` when names may contain spaces (see the module docstring)."""

    MAX_WORDS = 3

    def __init__(self) -> None:
        self.count: Counter = Counter()
        self.followers: dict[str, set | None] = {}
        self.known: set[str] = set()
        self._ext: dict[str, bool] = {}

    def add(self, rest: str) -> None:
        words = rest.split(" ", self.MAX_WORDS + 1)
        prefix = ""
        for k in range(min(self.MAX_WORDS, len(words) - 1)):
            prefix = words[0] if k == 0 else prefix + " " + words[k]
            self.count[prefix] += 1
            fol = self.followers.get(prefix, ())
            if fol is None:
                continue
            if fol == ():
                fol = self.followers[prefix] = set()
            fol.add(words[k + 1])
            if len(fol) > 8:
                self.followers[prefix] = None

    def extendable(self, prefix: str) -> bool:
        e = self._ext.get(prefix)
        if e is None:
            fol = self.followers.get(prefix)
            e = self._ext[prefix] = bool(
                fol and self.count[prefix] >= 2 and all(self.count[prefix + " " + w] >= 2 for w in fol))
        return e

    def split(self, rest: str) -> tuple[str, str]:
        for name in self.known:
            if rest.startswith(name) and rest[len(name):len(name) + 1] == " " and " " in name:
                return name, rest[len(name) + 1:]
        words = rest.split(" ", self.MAX_WORDS)
        if len(words) == 1:
            return rest, ""
        k, prefix = 1, words[0]
        while k < len(words) - 1 and k < self.MAX_WORDS and self.extendable(prefix):
            prefix += " " + words[k]
            k += 1
        return prefix, rest[len(prefix) + 1:]


def _system_name(m: re.Match) -> str | None:
    return m.group(1) or m.group(2) or m.group(3)


def read_desktop(f: IO[str], encoding: str = "", sample_lines: int = 50_000) -> Iterator[Message | BadLine]:
    """`16:10 name text` under `2025.08.04 Monday`; two passes over the stream (seek(0)):
    the first learns the names (NameResolver), the second reads."""
    names = NameResolver()
    seen = 0
    for _, line in iter_lines(f, encoding):
        if line.__class__ is not str or not ("0" <= line[:1] <= "9" or line[:1] in "오午上下"):
            continue
        m = D_MSG.match(line)
        if m is None:
            continue
        rest = m.group(2)
        s = SYSTEM.fullmatch(rest)
        if s is not None:
            if _system_name(s):
                names.known.add(_system_name(s))
            continue
        names.add(rest)
        seen += 1
        if seen >= sample_lines:
            break
    f.seek(0)

    day: date | None = None
    times: dict[str, datetime | None] = {}
    p: list | None = None
    for ln, line in iter_lines(f, encoding):
        if line.__class__ is not str:
            yield line
            continue
        c = line[:1]
        if "0" <= c <= "9" or c in "오午上下":
            m = D_MSG.match(line)
            if m is not None:
                tf, rest = m.groups()
                t = times.get(tf, 0)
                if t == 0:
                    t = times[tf] = combine(day, clock(tf))
                if p is not None:
                    yield _finish("", p)
                if SYSTEM.fullmatch(rest) is not None:
                    p = [None, rest, None, t, ln, True]
                else:
                    speaker, text = names.split(rest)
                    p = ([None, text, None, t, ln, True] if is_system_text(text)
                         else [speaker, text, None, t, ln, False])
                continue
            d = parse_day(line)
            if d is not None:
                if p is not None:
                    yield _finish("", p)
                p, day = None, new_day(d, day, times)
                continue
        bad = add_line(p, ln, line, HEADER_PREFIXES, _HEADER_LINES)
        if bad is not None:
            yield bad
    yield from last(p, _finish)
