"""Request batching in the chat service (bot/batching.py): overlapping searches go to the
retriever in one call, every caller gets its own rows, and a failing request fails alone."""
from __future__ import annotations

import threading
import time

import pytest

from bot.app import create_app
from bot.batching import SearchBatcher


class Recording:
    """A retriever whose first call blocks until released, so the calls behind it queue up; each
    row names the newest turn of its context, so a caller can tell whose answer it got."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple[int, int]] = []   # (contexts, k) per call
        self.release, self.entered = threading.Event(), threading.Event()
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def search(self, contexts, k):
        self.threads.add(threading.current_thread().name)
        if not self.calls:
            self.entered.set()
            self.release.wait(10)
        self.calls.append((len(contexts), k))
        if self.fail_on and any(c[-1][1] == self.fail_on for c in contexts):
            raise RuntimeError("this context breaks the retriever")
        return [[(1.0 - i / 10, {"text": f"re: {c[-1][1]} #{i}"}) for i in range(k)] for c in contexts]


def _concurrently(batcher, messages, k=3):
    out, errors = {}, {}

    def ask(m):
        try:
            out[m] = batcher.search([[("U", m)]], k)
        except Exception as e:
            errors[m] = e

    threads = [threading.Thread(target=ask, args=(m,)) for m in messages]
    for t in threads:
        t.start()
    return threads, out, errors


def _queued(batcher, n: int) -> None:
    """Until ``n`` requests wait on the batcher's queue (the first call holds the retriever)."""
    deadline = time.time() + 10
    while batcher._queue.qsize() < n and time.time() < deadline:
        time.sleep(0.01)
    assert batcher._queue.qsize() == n


def test_overlapping_searches_are_one_call_and_each_caller_gets_its_own_rows():
    r = Recording()
    b = SearchBatcher(lambda: r, max_batch=8)
    first, out, errors = _concurrently(b, ["m0"])
    assert r.entered.wait(10)                         # m0 is inside the retriever, holding it
    rest, out2, _ = _concurrently(b, [f"m{i}" for i in range(1, 7)])
    _queued(b, 6)                                     # the six queue behind it
    r.release.set()
    for t in first + rest:
        t.join(10)
    out.update(out2)
    assert not errors
    assert r.calls == [(1, 3), (6, 3)]                # the six waiting requests: one call
    for m, (hits,) in out.items():
        assert [row["text"] for _, row in hits] == [f"re: {m} #{i}" for i in range(3)]
    assert r.threads == {"search-batcher"} and b.status() == {"max_batch": 8, "workers": 1, "batches": 2, "largest": 6}


def test_a_batch_holds_at_most_max_batch_contexts():
    r = Recording()
    b = SearchBatcher(lambda: r, max_batch=4)
    first, out, _ = _concurrently(b, ["m0"])
    assert r.entered.wait(10)
    rest, out2, _ = _concurrently(b, [f"m{i}" for i in range(1, 10)])
    _queued(b, 9)
    r.release.set()
    for t in first + rest:
        t.join(10)
    out.update(out2)
    assert len(out) == 10 and max(n for n, _ in r.calls) <= 4 and sum(n for n, _ in r.calls) == 10
    assert len(r.calls) == 1 + 3                      # 9 waiting: 4 + 4 + 1


def test_a_request_that_breaks_the_retriever_fails_alone():
    r = Recording(fail_on="boom")
    b = SearchBatcher(lambda: r, max_batch=8)
    first, out, errors = _concurrently(b, ["m0"])
    assert r.entered.wait(10)
    rest, out2, errors2 = _concurrently(b, ["a", "boom", "b"])
    _queued(b, 3)
    r.release.set()
    for t in first + rest:
        t.join(10)
    out.update(out2)
    errors.update(errors2)
    assert set(out) == {"m0", "a", "b"} and set(errors) == {"boom"}
    assert isinstance(errors["boom"], RuntimeError)
    assert out["a"][0][0][1]["text"] == "re: a #0"
    assert r.calls[1] == (3, 3) and sorted(r.calls[2:]) == [(1, 3)] * 3   # the batch, then one by one
    assert b.search([[("U", "later")]], 2)[0][0][1]["text"] == "re: later #0"   # the thread lives on


def test_requests_with_different_k_are_not_mixed():
    r = Recording()
    b = SearchBatcher(lambda: r, max_batch=8)
    first, _, _ = _concurrently(b, ["m0"])
    assert r.entered.wait(10)
    rest, out, _ = _concurrently(b, ["x", "y"], k=2)
    rest2, out2, _ = _concurrently(b, ["z"], k=5)
    _queued(b, 3)
    r.release.set()
    for t in first + rest + rest2:
        t.join(10)
    assert sorted(r.calls[1:]) == [(1, 5), (2, 2)]
    assert len(out2["z"][0]) == 5 and len(out["x"][0]) == 2


def test_the_thread_ends_when_idle_and_comes_back():
    r = Recording()
    r.release.set()
    b = SearchBatcher(lambda: r, max_batch=8, idle=0.05)
    assert b.search([[("U", "one")]], 1)[0][0][1]["text"] == "re: one #0"
    deadline = time.time() + 5
    while b._running and time.time() < deadline:
        time.sleep(0.02)
    assert b._running == 0
    assert b.search([[("U", "two")]], 1)[0][0][1]["text"] == "re: two #0"
    assert b.search([], 1) == []
    with pytest.raises(ValueError, match="max_batch"):
        SearchBatcher(lambda: r, max_batch=0)
    with pytest.raises(ValueError, match="workers"):
        SearchBatcher(lambda: r, workers=0)


def test_the_service_batches_and_says_so():
    r = Recording()
    r.release.set()
    client = create_app({"RETRIEVER": r, "SEARCH_BATCH": 4}).test_client()
    body = client.post("/api/chat", json={"message": "안녕"}).get_json()
    assert body["reply"] == "re: 안녕 #0"
    from bot.batching import default_workers
    workers = default_workers()
    assert client.get("/api/info").get_json()["batching"] == {"max_batch": 4, "workers": workers, "batches": 1,
                                                              "largest": 1}
    assert len(r.threads) == 1 and r.threads.pop().startswith("search-batcher")
    assert create_app({"RETRIEVER": r, "SEARCH_WORKERS": 3}).extensions["dialogbert.batcher"].workers == 3
    assert client.application.extensions["dialogbert.batcher"].wait == pytest.approx(0.015)  # the default
    app = create_app({"RETRIEVER": Recording(), "SEARCH_BATCH": 4, "SEARCH_BATCH_WAIT_MS": 5})
    assert app.extensions["dialogbert.batcher"].wait == pytest.approx(0.005)
    off = Recording()
    off.release.set()
    client = create_app({"RETRIEVER": off, "SEARCH_BATCH": 1}).test_client()
    assert client.post("/api/chat", json={"message": "안녕"}).status_code == 200
    assert "batching" not in client.get("/api/info").get_json() and "search-batcher" not in off.threads


def test_under_load_a_batch_waits_briefly_for_more_and_a_lone_request_does_not():
    r = Recording()
    r.release.set()
    b = SearchBatcher(lambda: r, max_batch=8, wait=0.5)
    t = time.perf_counter()
    b.search([[("U", "alone")]], 1)                   # the last batch held one: no wait
    assert time.perf_counter() - t < 0.4
    b.search([[("U", "a"), ], [("U", "b")]], 1)       # a batch of two: now under load
    first, out, _ = _concurrently(b, ["c"], k=1)
    time.sleep(0.15)                                  # arrives within the wait of the first
    second, out2, _ = _concurrently(b, ["d"], k=1)
    for th in first + second:
        th.join(10)
    assert r.calls[-1] == (2, 1) and {**out, **out2}.keys() == {"c", "d"}
    with pytest.raises(ValueError, match="wait"):
        SearchBatcher(lambda: r, wait=-1)


class Timing:
    """A retriever that takes ``seconds`` a call and records how many calls overlap and the torch
    threads each call ran with."""

    def __init__(self, seconds: float):
        self.seconds, self.lock = seconds, threading.Lock()
        self.inside = self.most_inside = 0
        self.threads: list[int] = []
        self.names: set[str] = set()

    def search(self, contexts, k):
        import torch
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.threads.append(torch.get_num_threads())
            self.names.add(threading.current_thread().name)
        time.sleep(self.seconds)
        with self.lock:
            self.inside -= 1
        return [[(1.0, {"text": f"re: {c[-1][1]}"})] for c in contexts]


def test_workers_search_batches_at_once_with_the_cores_shared_and_a_lone_request_gets_them_all():
    import torch
    main_threads = torch.get_num_threads()
    r = Timing(0.2)
    b = SearchBatcher(lambda: r, max_batch=2, wait=0.0, workers=2, cores=4)
    assert b.search([[("U", "alone")]], 1)[0][0][1]["text"] == "re: alone"
    assert r.threads == [4]                           # nobody else busy: all four cores
    threads, out, errors = _concurrently(b, [f"m{i}" for i in range(8)], k=1)
    for t in threads:
        t.join(10)
    assert not errors and all(out[m][0][0][1]["text"] == f"re: {m}" for m in out) and len(out) == 8
    assert r.most_inside == 2                         # two calls at once, never more
    assert 2 in r.threads[1:]                         # two busy workers: two cores each
    assert r.names == {"search-batcher-1", "search-batcher-2"}
    assert torch.get_num_threads() == main_threads    # the setting is the worker thread's own


def test_one_worker_runs_one_call_at_a_time_and_leaves_the_thread_counts_alone():
    import torch
    r = Timing(0.05)
    b = SearchBatcher(lambda: r, max_batch=1, wait=0.0)
    threads, out, errors = _concurrently(b, [f"m{i}" for i in range(4)], k=1)
    for t in threads:
        t.join(10)
    assert len(out) == 4 and not errors and r.most_inside == 1
    fresh = []   # what any new thread runs with (OpenMP's default; the main thread's setting is its own)
    t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert set(r.threads) == set(fresh) and r.names == {"search-batcher"}


def test_a_burst_that_arrives_at_once_still_gets_the_second_worker():
    """Every request queued before the first worker gathers: once it has taken its batch, it starts
    the second for what is left waiting."""
    r = Timing(0.3)
    b = SearchBatcher(lambda: r, max_batch=2, wait=0.0, workers=2, cores=2)
    with b._collecting:                               # the first worker cannot gather yet
        threads, out, errors = _concurrently(b, [f"m{i}" for i in range(4)], k=1)
        _queued(b, 4)
        assert b._running == 1
    for t in threads:
        t.join(10)
    assert len(out) == 4 and not errors
    assert r.most_inside == 2 and r.names == {"search-batcher-1", "search-batcher-2"}
