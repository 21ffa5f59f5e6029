"""Types every export reader yields. A reader turns one file into a stream of these."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(slots=True)
class Message:
    """One message (or one system line) as the export shows it, before anonymization."""
    conv: str                 # conversation key inside the file ("" for a one-room export)
    speaker: str | None       # display name as exported; None for system lines
    text: str                 # message text; a multi-line message keeps its "\n"
    time: datetime | None     # naive local time as exported, None when the format has none
    line: int                 # 1-based line (or record) number where the message starts
    system: bool = False      # invites, leaves, deleted messages, notices, date lines...


@dataclass(slots=True)
class BadLine:
    """A line the reader could not parse; the pipeline reports it (file:line) and goes on."""
    line: int
    reason: str
    preview: str = ""


class FormatError(ValueError):
    """The whole file cannot be read (binary, unknown format, undecodable); names the file."""

    def __init__(self, path, reason: str, line: int | None = None):
        self.path, self.reason, self.line = str(path), reason, line
        where = f"{path}:{line}" if line else f"{path}"
        super().__init__(f"{where}: {reason}")
