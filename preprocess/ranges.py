"""One big export as several tasks: byte ranges cut where a message starts, read in parallel,
joined into exactly the part file that one reading of the whole file writes.

    plan(path, fmt, split_bytes) -> [(start, end), ...]      byte ranges; one for most files
    scan(path, sha, fmt, opts, start, end, first)    -> (meta, the range's own sessions spooled)
    stitch(path, sha, fmt, opts, metas)               -> the sessions that span ranges, spooled
    finish(pre, body, names, ..., post)               -> (part text, counts)

Why the pieces join exactly: a range starts at a line that resets the reader (a day divider
or a line that carries its own date), so every message is read as the whole-file reader reads
it. Sessions are the only state that crosses ranges: a range's sessions are final only after
its first time gap (the "boundary"); the messages before it (the head) and the session still
open at its end (the tail) are replayed in order by :func:`stitch`, with the same gap and cap
rules. Names are collected by every range and joined before anyone anonymizes (a name first
seen late must still be masked early). Only one-room exports (one conversation key) in an
ASCII-compatible encoding, not gzip-compressed, are cut; every other file is one range.
"""
from __future__ import annotations

import io
import os
import re
from collections import Counter
from pathlib import Path

from . import inputs
from .formats import kakao, line, read_stream
from .formats.encoding import open_text
from .processor import BAD_LINE_EXAMPLES, MAX_SESSION_MESSAGES, Options, _FileProcessor, _Session

BLANK = 4          # blank lines put before a range: beyond the readers' header lines (kakao: 4)
_SCAN = 1 << 16    # bytes read past a planned cut while looking for a line a range may start at


def _mobile_start(ln: str) -> bool:
    c = ln[:1]
    if "0" <= c <= "9":
        return bool(kakao.M_KO.match(ln) or kakao.M_EN_OLD.match(ln) or kakao.DAY_KO.match(ln))
    return "A" <= c <= "Z" and bool(kakao.M_EN.match(ln) or kakao.DAY_EN.match(ln))


def _pc_start(ln: str) -> bool:
    m = kakao.PC_DIVIDER.match(ln)
    return m is not None and kakao.parse_day(m.group(1)) is not None


def _line_start(ln: str) -> bool:
    return bool(ln) and "\t" not in ln and ln[0] not in " \"" and ln[-1:] != '"' and line.parse_day(ln) is not None


# Lines where a format's reader forgets everything before (the pending message, the day): a
# range may start there. LINE desktop learns names from the head of the file; corpora hold
# many conversation keys or one JSON document: those are never cut.
STARTS = {"kakao-pc": _pc_start, "kakao-android": _mobile_start, "kakao-ios": _mobile_start,
          "line-mobile": _line_start}
_CUT_ENCODINGS = {"utf-8", "utf-8-sig", "cp949"}


def plan(path: str, fmt: str, split_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of ``path``, about ``split_bytes`` each, each starting at a line where the
    reader may start; [(0, size)] for a file that is small or cannot be cut."""
    size = inputs.size(path)
    starts = STARTS.get(fmt)
    if starts is None or size <= split_bytes:
        return [(0, size)]
    f, enc = open_text(path)
    f.close()
    if enc not in _CUT_ENCODINGS:
        return [(0, size)]
    with inputs.open_binary(path) as b:
        if b.read(2) == b"\x1f\x8b":
            return [(0, size)]
        cuts = [0]
        target = split_bytes
        while target < size:
            b.seek(target)
            b.readline()                            # the rest of the line the target falls in
            pos = b.tell()
            cut = None
            while pos < size and pos - target < max(_SCAN, split_bytes):
                raw = b.readline()
                if starts(raw.decode(enc, "replace").rstrip("\r\n")):
                    cut = pos
                    break
                pos += len(raw)
            if cut is None:
                target = pos + split_bytes          # no start near here: look further on
                continue
            if cut > cuts[-1]:
                cuts.append(cut)
            target = cut + split_bytes
    return list(zip(cuts, cuts[1:] + [size]))


class _Range(io.RawIOBase):
    """Bytes [start, end) of a file, after ``prefix``; counts the text lines that pass
    (universal newlines: \\n, \\r\\n and a lone \\r each end one)."""

    def __init__(self, path: str, start: int, end: int, prefix: bytes = b""):
        super().__init__()
        self.f = inputs.open_binary(path)
        self.f.seek(start)
        self.left, self.prefix = end - start, prefix
        self.lines, self._cr = 0, False

    def readable(self):
        return True

    def readinto(self, buf) -> int:
        if self.prefix:
            n = min(len(buf), len(self.prefix))
            buf[:n], self.prefix = self.prefix[:n], self.prefix[n:]
            return n
        data = self.f.read(min(len(buf), self.left))
        self.left -= len(data)
        if data:
            crlf = data.count(b"\r\n") + (self._cr and data[:1] == b"\n")
            self.lines += data.count(b"\n") + data.count(b"\r") - crlf
            self._cr = data[-1:] == b"\r"
        buf[:len(data)] = data
        return len(data)

    def close(self):
        self.f.close()
        super().close()


class RangeProcessor(_FileProcessor):
    """The reading pass over one range of a cut file: sessions closed after the range's first
    time gap are spooled; the messages before it (head) and the session open at the end (tail)
    are kept raw for :func:`stitch`."""

    def __init__(self, path, sha256, fmt, opts, start: int, end: int, first: bool):
        super().__init__(path, sha256, fmt, opts, None)
        self.start, self.end, self.first = start, end, first
        self.head: list[tuple] = []
        self.tail: list[tuple] = []
        self.bounded = False
        self.range = None

    def items(self):
        f, enc = open_text(self.path)
        f.close()
        self.range = _Range(self.path, self.start, self.end, b"" if self.first else b"\n" * BLANK)
        text = io.TextIOWrapper(io.BufferedReader(self.range), encoding=enc if self.first else enc.replace("-sig", ""),
                                errors="dialogbert-mark", newline=None)
        return read_stream(text, self.fmt, enc)

    def _close(self, sess: _Session, spool, why: str) -> None:
        if sess.key != "":
            raise ValueError(f"{self.path}: a cut file must hold one conversation (key {sess.key!r})")
        if self.bounded:
            if why == "end":
                self.tail = sess.messages
            else:
                self._spool(sess, spool)
            return
        self.head.extend(sess.messages)
        if why == "gap" and sess.messages[-1][2] is not None:
            self.bounded = True                 # from here on, this range's sessions are final
        elif why == "cap":
            self.c["sessions_capped"] -= 1      # recounted by stitch()


def scan(path: str, sha: str, fmt: str, opts_dict: dict, start: int, end: int, first: bool) -> tuple[dict, bytes]:
    """Read one range: (what stitch and the merge need, the range's final sessions spooled)."""
    proc = RangeProcessor(path, sha, fmt, Options(**opts_dict), start, end, first)
    spool = io.BytesIO()
    names = proc.read(spool)
    meta = {"counts": proc.c, "drops": proc.drops, "media": proc.media, "bad_line_examples": proc.bad_examples,
            "names": {k: sorted(v) for k, v in names.items()}, "head": proc.head, "tail": proc.tail,
            "bounded": proc.bounded, "lines": proc.range.lines, "shift": 0 if first else BLANK}
    return meta, spool.getvalue()


def _replay(msgs: list[tuple], gap_s: float, c: Counter) -> tuple[list[_Session], _Session | None]:
    """The reading pass's session rules (gap, then cap) for one key over raw messages:
    (the sessions they close, the one left open)."""
    closed, sess = [], None
    for m in msgs:
        t = m[2]
        if sess is not None:
            last = sess.last_time
            if t is not None and last is not None and (t - last).total_seconds() > gap_s:
                closed.append(sess)
                sess = None
            elif len(sess.messages) >= MAX_SESSION_MESSAGES:
                c["sessions_capped"] += 1
                closed.append(sess)
                sess = None
        if sess is None:
            sess = _Session("")
        sess.messages.append(m)
        if t is not None:
            sess.last_time = t
    return closed, sess


def stitch(path: str, sha: str, fmt: str, opts_dict: dict, metas: list[dict]) -> tuple[list[bytes], bytes, _FileProcessor]:
    """The sessions that cross ranges, in reading order: (spooled before each range's own
    sessions, spooled after the last range's, the processor holding their counts)."""
    proc = _FileProcessor(path, sha, fmt, Options(**opts_dict), None)
    pre, open_msgs = [], []
    for m in metas:
        buf = io.BytesIO()
        closed, sess = _replay(open_msgs + m["head"], proc.gap_s, proc.c)
        if m["bounded"]:
            closed.append(sess)                 # the range's first gap ends it
            open_msgs = m["tail"]
        else:
            open_msgs = sess.messages if sess is not None else []
        for s in closed:
            proc._spool(s, buf)
        pre.append(buf.getvalue())
    buf = io.BytesIO()
    if open_msgs:
        last = _Session("")
        last.messages = open_msgs
        proc._spool(last, buf)
    return pre, buf.getvalue(), proc


def finish(pre: bytes, body: bytes, names: dict[str, list[str]], path: str, sha: str, fmt: str, opts_dict: dict,
           post: bytes = b"") -> tuple[str, dict]:
    """A range's spooled sessions (``pre`` and ``post`` from stitch, ``body`` from scan) -> part
    lines, anonymized with the whole file's names; and the counts."""
    out = io.StringIO()
    proc = _FileProcessor(path, sha, fmt, Options(**opts_dict), out)
    proc.write(io.BytesIO(pre + body + post), {k: set(v) for k, v in names.items()})
    return out.getvalue(), {"counts": proc.c, "pii": proc.pii, "kss_calls": proc.splitter.kss_calls}


def _relined(examples: list[str], path: str, offset: int) -> list[str]:
    """A range's bad-line examples with their line numbers counted from the file's start."""
    out = []
    for ex in examples:
        m = re.match(re.escape(path) + r":(\d+): ", ex)
        out.append(f"{path}:{int(m.group(1)) + offset}: {ex[m.end():]}" if m else ex)
    return out


def names_of(metas: list[dict]) -> dict[str, list[str]]:
    """The names every range collected, joined per conversation key."""
    names: dict[str, set[str]] = {}
    for m in metas:
        for k, v in m["names"].items():
            names.setdefault(k, set()).update(v)
    return {k: sorted(v) for k, v in names.items()}


def merged_stats(fmt: str, sha: str, path: str, metas: list[dict], stitcher: _FileProcessor,
                 finished: list[dict]) -> dict:
    """One file's stats from its ranges: the same dict one reading of the whole file gives."""
    c, drops, media, pii, examples, lines = Counter(), Counter(), Counter(), Counter(), [], 0
    for m in metas:
        c.update(m["counts"])
        drops.update(m["drops"])
        media.update(m["media"])
        examples += _relined(m["bad_line_examples"], path, lines - m["shift"])
        lines += m["lines"]
    c.update(stitcher.c)
    drops.update(stitcher.drops)
    for f in finished:
        c.update(f["counts"])
        pii.update(f["pii"])

    def nonzero(x: Counter) -> dict:
        return {k: v for k, v in sorted(x.items()) if v}

    return {"format": fmt, "sha256": sha, "counts": nonzero(c), "drops": nonzero(drops), "media": nonzero(media),
            "pii": nonzero(pii), "bad_line_examples": examples[:BAD_LINE_EXAMPLES],
            "kss_calls": sum(f["kss_calls"] for f in finished)}


def write_part(parts: list[str], tmp: Path) -> None:
    """The part texts of a file's ranges, in order, into one file (fsynced)."""
    with open(tmp, "w", encoding="utf-8") as out:
        for text in parts:
            out.write(text)
        out.flush()
        os.fsync(out.fileno())
