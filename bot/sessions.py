"""The chat service's per-session dialogue history (:class:`Sessions`): bounded in number and in
length, forgotten when idle, safe under the server's threads. Apart from the routes (bot/app.py):
it knows nothing of HTTP, the retriever or personal data (what is kept is already anonymized)."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from typing import Callable, Sequence


class Sessions:
    """Per-session dialogue history, bounded in number and in length, forgotten when idle.

    At most ``max_sessions`` sessions (the least recently used one is dropped on every path that
    adds one), each keeping its last ``max_turns`` turns; a session not used for ``idle_seconds``
    is dropped (checked on every call, oldest first, so the cost is one comparison per call plus
    one per expired session). ``clock`` is a monotonic clock in seconds (injectable for tests).
    One lock guards everything: Flask serves requests on several threads."""

    def __init__(self, max_sessions: int, max_turns: int, idle_seconds: float = 1800.0,
                 clock: Callable[[], float] = time.monotonic):
        if max_sessions < 1 or max_turns < 1 or idle_seconds <= 0:
            raise ValueError(f"Sessions needs max_sessions >= 1, max_turns >= 1 and idle_seconds > 0 "
                             f"(got {max_sessions}, {max_turns}, {idle_seconds}): set MAX_SESSIONS / "
                             f"SESSION_IDLE_SECONDS in the app config")
        self.max_sessions, self.max_turns, self.idle_seconds = max_sessions, max_turns, idle_seconds
        self._clock = clock
        # sid -> [last use, turns], in order of last use (oldest first)
        self._data: OrderedDict[str, list] = OrderedDict()
        self._lock = threading.Lock()

    def _expire(self) -> float:
        now = self._clock()
        data, limit = self._data, now - self.idle_seconds
        while data:
            sid, (last, _) = next(iter(data.items()))
            if last > limit:
                break
            del data[sid]
        return now

    def history(self, sid: str) -> list[tuple[str, str]]:
        """The session's turns, oldest first ([] for an unknown or expired session; creates nothing)."""
        with self._lock:
            now = self._expire()
            entry = self._data.get(sid)
            if entry is None:
                return []
            entry[0] = now
            self._data.move_to_end(sid)
            return list(entry[1])

    def extend(self, sid: str, turns: Sequence[tuple[str, str]]) -> None:
        """Add (speaker, text) turns, creating the session (and dropping the least recently used
        ones beyond ``max_sessions``) if needed."""
        with self._lock:
            now = self._expire()
            entry = self._data.get(sid)
            if entry is None:
                entry = self._data[sid] = [now, deque(maxlen=self.max_turns)]
                while len(self._data) > self.max_sessions:
                    self._data.popitem(last=False)
            else:
                entry[0] = now
                self._data.move_to_end(sid)
            entry[1].extend(turns)

    def append(self, sid: str, speaker: str, text: str) -> None:
        self.extend(sid, ((speaker, text),))

    def reset(self, sid: str) -> None:
        with self._lock:
            self._expire()
            self._data.pop(sid, None)

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._data)
