"""Dates and clock times as the messengers print them, turned into naive datetimes."""
from __future__ import annotations

import re
from datetime import date, datetime

MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_PM = frozenset({"오후", "pm", "PM", "Pm", "下午", "午後", "p"})
_AMPM_WORDS = frozenset({"오전", "오후", "am", "pm", "AM", "PM", "Am", "Pm", "上午", "下午", "午前", "午後"})

# "오후 3:05", "3:05 PM", "03:05pm", "下午04:46", "15:05", "AM 3:05"
_CLOCK = re.compile(r"(오전|오후|上午|下午|午前|午後|[AaPp][Mm])? ?(\d{1,2}):(\d\d)(?::\d\d)? ?([AaPp][Mm])?")


def hour24(hour: int, ampm: str | None) -> int:
    if not ampm:
        return hour
    pm = ampm in _PM or ampm[0] in "Pp"
    if hour == 12:
        return 12 if pm else 0
    return hour + 12 if pm else hour


def clock(text: str) -> tuple[int, int] | None:
    """(hour, minute) of a clock string, or None when it is not one (or out of range)."""
    m = _CLOCK.fullmatch(text.strip())
    if not m or (m.group(1) and m.group(4)):
        return None
    ampm = m.group(1) or m.group(4)
    h, mi = int(m.group(2)), int(m.group(3))
    if mi > 59 or h > 23 or (ampm and not 1 <= h <= 12 and h != 0):
        return None
    h = hour24(h, ampm)
    return (h, mi) if h < 24 else None


def month(name: str) -> int | None:
    return MONTHS.get(name[:3].lower())


def make_date(y: int | str, m: int | str | None, d: int | str) -> date | None:
    try:
        return date(int(y), int(m), int(d)) if m else None
    except (TypeError, ValueError):
        return None


def combine(day: date | None, hm: tuple[int, int] | None) -> datetime | None:
    if day is None or hm is None:
        return None
    return datetime(day.year, day.month, day.day, hm[0], hm[1])
