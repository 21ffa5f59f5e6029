"""Live index replacement: the service notices that its index folder changed (`dialogbert bot
--add`, a rebuilt index, a refitted ranker), loads the new retriever beside the old one and swaps
it in. No request is dropped: a request holds the retriever it started with, and the old one
answers until the new one is loaded. A folder that fails to load is logged and the old
retriever stays."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

LOG = logging.getLogger("dialogbert.reload")
WATCHED = ("index_info.json", "ranker.json", "bigindex.json")  # written last by the index build, the ranker fit, `dialogbert bigindex`


class IndexWatcher:
    """``current()`` gives the retriever to use now; at most every ``interval`` seconds it looks at
    the folder's WATCHED files, and once a change has held still for one more look (a build
    writes several files), a background thread loads the folder with ``load()``."""

    def __init__(self, folder: str | Path, load: Callable[[], Any], interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, retriever: Any = None):
        self.folder, self.load, self.interval, self.clock = Path(folder), load, float(interval), clock
        self.stamp = self._stamp()
        self.retriever = load() if retriever is None else retriever
        self.reloads, self.error, self.loaded_at = 0, None, time.time()
        self._checked = clock()
        self._pending: tuple | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _stamp(self) -> tuple:
        out = []
        for name in WATCHED:
            p = self.folder / name
            try:
                st = p.stat()
                out.append((name, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append((name, None, None))
        return tuple(out)

    def current(self) -> Any:
        now = self.clock()
        if self.interval > 0 and now - self._checked >= self.interval:
            with self._lock:
                if now - self._checked >= self.interval and self._thread is None:
                    self._checked = now
                    self._look()
        return self.retriever

    def _look(self) -> None:
        stamp = self._stamp()
        if stamp == self.stamp:
            self._pending = None
        elif stamp != self._pending:
            self._pending = stamp       # changed: wait one more look for the writer to finish
        else:
            self._pending = None
            self._thread = threading.Thread(target=self._reload, args=(stamp,), name="index-reload", daemon=True)
            self._thread.start()

    def _reload(self, stamp: tuple) -> None:
        t0 = time.perf_counter()
        try:
            new = self.load()
        except Exception as e:
            self.error = f"{type(e).__name__} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
            LOG.exception("the changed index in %s did not load; the previous one keeps answering", self.folder)
        else:
            self.retriever, self.error, self.loaded_at = new, None, time.time()
            self.reloads += 1
            LOG.info("index in %s reloaded in %.1fs", self.folder, time.perf_counter() - t0)
        finally:
            self.stamp = stamp          # a broken folder is tried again only once it changes again
            self._thread = None

    def wait(self, timeout: float | None = None) -> None:
        """Until a reload in progress has finished (tests, shutdown)."""
        t = self._thread
        if t is not None:
            t.join(timeout)

    def status(self) -> dict:
        return {"reloads": self.reloads, "loading": self._thread is not None, "last_error": self.error,
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))}
