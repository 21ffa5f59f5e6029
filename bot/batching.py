"""Request batching: the chat requests that arrive while the model is busy are answered together.

On two CPU cores a search of eight contexts in one call costs a few times one, not eight
(docs/benchmarks.md, "Serving through the server"): the dialog model's matrix products are too
small at one context to keep the cores busy, and the FAISS scan reads the reply vectors once for
all of them. :class:`SearchBatcher` puts every
``search`` call on a queue; a worker thread takes what is waiting (up to ``max_batch`` contexts),
makes one call of the retriever for all of it and hands each caller its own rows. A lone request
waits for nobody: only while requests overlap does a batch wait a few milliseconds for more, so
batching costs nothing at one client and raises what the cores answer under load
(bench/server.py, docs/benchmarks.md).

It also means that a fixed number of threads run the model (``workers``), instead of every server
thread competing for the same cores. Several workers pay on a CPU because a chat-sized batch is
too small for torch's threads: on two cores one call of 8 contexts answers about as many a second
with two threads as with one, and two calls side by side with one thread each 1.6-1.9x as many
(docs/experiments/2026-12-06-search-workers.md). So a batch that starts with no other worker busy
and nothing waiting runs on all the cores (a lone request is not slowed), and any other on its
share of them. A batch that fails is answered again one request at a time, so a request that
breaks the retriever fails alone.
"""
from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from typing import Any, Callable, Sequence

LOG = logging.getLogger("dialogbert.batching")
PEAK_SECONDS = 1.0  # how long the most requests seen in flight at once sets the batches' size


class _Job:
    __slots__ = ("contexts", "k", "done", "result", "error")

    def __init__(self, contexts: list, k: int):
        self.contexts, self.k = contexts, k
        self.done = threading.Event()
        self.result: list | None = None
        self.error: BaseException | None = None


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(cores: int | None = None) -> int:
    """Search workers when none are asked for: one per core, at most 4 (measured only on two cores)."""
    return max(1, min(4, cores or usable_cores()))


def set_threads(n: int) -> None:
    """This thread's torch and faiss (OpenMP) threads: the setting holds per calling thread. Only
    libraries the retriever already imported are touched."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        faiss.omp_set_num_threads(n)


class SearchBatcher:
    """``search(contexts, k)`` as the retriever that ``current()`` gives, batched across threads.

    ``current`` is called once per batch (the live retriever, which an index reload may swap).
    ``wait``: seconds a batch waits for more requests, only under load (15 ms measured best of
    5-40 on two cores at 8 clients, bench/server.py). ``workers``: batches run at once, each in
    its own thread; a worker starts with a request that finds every running one busy and ends
    after ``idle`` seconds without one. ``cores``: what the workers share (default: the usable
    cores when ``workers`` > 1; with one worker and no ``cores`` the libraries' thread counts are
    left as they are)."""

    def __init__(self, current: Callable[[], Any], max_batch: int = 8, wait: float = 0.015, idle: float = 60.0,
                 workers: int = 1, cores: int | None = None):
        if max_batch < 1 or wait < 0 or workers < 1:
            raise ValueError(f"max_batch and workers must be >= 1 and wait >= 0 (got {max_batch}, {workers}, {wait})")
        self.current, self.max_batch, self.wait, self.idle = current, int(max_batch), float(wait), float(idle)
        self.workers, self.cores = int(workers), cores if cores is not None else (usable_cores() if workers > 1 else None)
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._collecting = threading.Lock()  # held by the worker that gathers the next batch
        self._running = 0   # worker threads alive
        self._idle = 0      # of them, waiting on the queue
        self._busy = 0      # of them, inside the retriever
        self._names = 0
        self._inflight = 0  # contexts asked for and not yet answered
        self._peak, self._peak_at = 1, 0.0  # the most in flight within the last PEAK_SECONDS
        self.batches = 0
        self.largest = 0

    def search(self, contexts: Sequence, k: int) -> list[list[tuple[float, dict]]]:
        job = _Job(list(contexts), int(k))
        if not job.contexts:
            return []
        with self._lock:
            self._inflight += len(job.contexts)
            now = time.monotonic()
            if self._inflight >= self._peak or now - self._peak_at > PEAK_SECONDS:
                self._peak, self._peak_at = self._inflight, now
            self._queue.put(job)
            self._start_worker_if_needed()
        job.done.wait()
        with self._lock:
            self._inflight -= len(job.contexts)
        if job.error is not None:
            raise job.error
        return job.result

    def _start_worker_if_needed(self) -> None:
        """One more worker when requests wait, none is free to take them and fewer than ``workers``
        run (the caller holds the lock). Asked when a request arrives and when a worker has taken
        its batch, so a burst that arrives at once still gets a second worker."""
        if self._running < self.workers and self._idle == 0 and not self._queue.empty():
            self._running += 1
            self._idle += 1
            self._names += 1
            name = "search-batcher" if self.workers == 1 else f"search-batcher-{self._names}"
            threading.Thread(target=self._loop, name=name, daemon=True).start()

    def _loop(self) -> None:
        while True:
            jobs = self._gather()
            if jobs is None:
                return
            size = sum(len(j.contexts) for j in jobs)
            with self._lock:
                self._busy += 1
                busy = self._busy
                self.batches += 1
                self.largest = max(self.largest, size)
            try:
                if self.cores is not None:
                    alone = busy == 1 and self._queue.empty()
                    set_threads(self.cores if alone else max(1, self.cores // self.workers))
                for k in sorted({j.k for j in jobs}):   # one call per k: search(k)[:k'] need not be search(k')
                    self._answer([j for j in jobs if j.k == k], k)
            finally:
                with self._lock:
                    self._busy -= 1
                    self._idle += 1

    def _gather(self) -> list[_Job] | None:
        """The next batch, or None when this worker has been idle for ``idle`` seconds and ends.

        One worker gathers at a time, so a batch is as full as the requests in flight allow (up to
        ``max_batch``) before the next worker starts another: at 8 clients the batches are one
        of 8 at a time, as with one worker; only more requests than a batch holds keep several
        workers busy. Under load a batch waits up to ``wait`` for more: the clients that the last
        batches answered are sending again, and one batch of 8 costs less than two of 4 (without
        the wait the requests settle into half batches that take turns). A lone client, the only
        request in flight, waits for nobody."""
        with self._collecting:
            while True:
                try:
                    jobs = [self._queue.get(timeout=self.idle)]
                    break
                except queue.Empty:
                    with self._lock:   # a request queued after the timeout is seen here, or starts a new thread
                        if self._queue.empty():
                            self._running -= 1
                            self._idle -= 1
                            return None
            size = len(jobs[0].contexts)
            target = min(self.max_batch, self._peak)
            deadline = time.monotonic() + self.wait
            while size < self.max_batch:
                try:
                    job = self._queue.get_nowait() if size >= target else \
                        self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                jobs.append(job)
                size += len(job.contexts)
            with self._lock:
                self._idle -= 1
                self._start_worker_if_needed()  # what this batch left waiting
            return jobs

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
        return {"max_batch": self.max_batch, "workers": self.workers, "batches": self.batches, "largest": self.largest}
