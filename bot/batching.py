"""Request batching: the chat requests that arrive while the model is busy are answered together.

On two CPU cores a search of eight contexts in one call costs a few times one, not eight
(docs/benchmarks.md, "Serving through the server"): the dialog model's matrix products are too
small at one context to keep the cores busy, and the FAISS scan reads the reply vectors once for
all of them. :class:`SearchBatcher` puts every
``search`` call on a queue; one thread takes whatever is waiting (up to ``max_batch`` contexts),
makes one call of the retriever for all of it and hands each caller its own rows. A lone request
waits for nobody: only while requests overlap does a batch wait a few milliseconds for more, so
batching costs nothing at one client and raises what the cores answer under load
(bench/server.py, docs/benchmarks.md).

It also means that only one thread runs the model at a time, instead of every server thread
competing for the same cores. A batch that fails is answered again one request at a time, so a
request that breaks the retriever fails alone.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Sequence

LOG = logging.getLogger("dialogbert.batching")


class _Job:
    __slots__ = ("contexts", "k", "done", "result", "error")

    def __init__(self, contexts: list, k: int):
        self.contexts, self.k = contexts, k
        self.done = threading.Event()
        self.result: list | None = None
        self.error: BaseException | None = None


class SearchBatcher:
    """``search(contexts, k)`` as the retriever that ``current()`` gives, batched across threads.

    ``current`` is called once per batch (the live retriever, which an index reload may swap).
    ``wait``: seconds a batch waits for more requests, only under load (15 ms measured best of
    5-40 on two cores at 8 clients, bench/server.py). The thread starts with the first request
    and ends after ``idle`` seconds without one."""

    def __init__(self, current: Callable[[], Any], max_batch: int = 8, wait: float = 0.015, idle: float = 60.0):
        if max_batch < 1 or wait < 0:
            raise ValueError(f"max_batch must be >= 1 and wait >= 0 (got {max_batch}, {wait})")
        self.current, self.max_batch, self.wait, self.idle = current, int(max_batch), float(wait), float(idle)
        self._last = 1
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.largest = 0

    def search(self, contexts: Sequence, k: int) -> list[list[tuple[float, dict]]]:
        job = _Job(list(contexts), int(k))
        if not job.contexts:
            return []
        self._queue.put(job)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="search-batcher", daemon=True)
                self._thread.start()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _loop(self) -> None:
        while True:
            try:
                jobs = [self._queue.get(timeout=self.idle)]
            except queue.Empty:
                with self._lock:   # a request queued after the timeout is seen here, or starts a new thread
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            size = len(jobs[0].contexts)
            # under load (the last batch held several requests) wait up to ``wait`` for more: the
            # clients the last batch answered are sending again, and one batch of 8 costs less than
            # two of 4 (without the wait the requests settle into two half batches that take turns)
            deadline = time.monotonic() + (self.wait if self._last > 1 else 0.0)
            while size < self.max_batch:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                jobs.append(job)
                size += len(job.contexts)
            self._last = size
            self.batches += 1
            self.largest = max(self.largest, size)
            for k in sorted({j.k for j in jobs}):   # one call per k: search(k)[:k'] need not be search(k')
                self._answer([j for j in jobs if j.k == k], k)

    def _answer(self, jobs: list[_Job], k: int) -> None:
        try:
            retriever = self.current()
            hits = retriever.search([c for j in jobs for c in j.contexts], k)
            if len(hits) != sum(len(j.contexts) for j in jobs):
                raise RuntimeError(f"the retriever answered {len(hits)} contexts for "
                                   f"{sum(len(j.contexts) for j in jobs)}")
        except BaseException as e:   # noqa: BLE001 - handed to the waiting request, never kills the thread
            if len(jobs) > 1:
                LOG.warning("a batch of %d requests failed (%s); answering them one by one",
                            len(jobs), type(e).__name__)
                for job in jobs:
                    self._answer([job], k)
                return
            jobs[0].error = e
            jobs[0].done.set()
            return
        at = 0
        for job in jobs:
            job.result = hits[at:at + len(job.contexts)]
            at += len(job.contexts)
            job.done.set()

    def status(self) -> dict:
        return {"max_batch": self.max_batch, "batches": self.batches, "largest": self.largest}
