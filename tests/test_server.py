"""The production server for real: waitress on a free loopback port, over HTTP (urllib), stopped by
SIGTERM; and `dialogbert serve`'s arguments reaching it."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

STUB = Path(__file__).resolve().parent / "serve_stub.py"


def _request(url: str, body: bytes | None = None):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _raw(base: str, data: bytes) -> bytes:
    """Send bytes on a fresh connection, return the first bytes of the answer."""
    import socket

    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=10) as s:
        s.sendall(data)
        return s.recv(65536)


@pytest.fixture
def server():
    """(base url, process) of tests/serve_stub.py: the real waitress server, rate limit 4/minute."""
    proc = subprocess.Popen([sys.executable, str(STUB), "4/minute"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()   # printed once the socket listens
    found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not found:
        proc.kill()
        pytest.fail(f"the server did not start: {line!r} {proc.communicate(timeout=10)}")
    yield f"http://127.0.0.1:{found.group(1)}", proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate(timeout=10)


def test_waitress_serves_chat_and_health_and_stops_cleanly_on_sigterm(server):
    base, proc = server
    status, headers, body = _request(base + "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    assert headers["Server"] == "dialogbert" and headers["X-Frame-Options"] == "DENY"

    secret = "비밀 메시지야 정말로 secret"
    status, headers, body = _request(base + "/api/chat", json.dumps({"message": secret}).encode())
    reply = json.loads(body)
    assert status == 200 and reply["reply"] == "좋아요, 내일 봐요!" and reply["session_id"]
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    status, _, body = _request(base + "/api/chat", json.dumps({"message": "what's up?",
                                                              "session_id": reply["session_id"]}).encode())
    assert status == 200 and json.loads(body)["reply"] == "Sounds good, see you tomorrow!"
    # over MAX_CONTENT_LENGTH (4 KiB here): the app's JSON 413; far over it, waitress's own 413
    status, _, body = _request(base + "/api/chat", json.dumps({"message": "x" * 8000}).encode())
    assert status == 413 and json.loads(body)["error"]
    assert _raw(base, b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n{").startswith(
        b"HTTP/1.1 413")   # refused from the headers, before a byte of the body is read
    status, headers, body = _request(base + "/api/chat", json.dumps({"message": "안녕"}).encode())
    assert status == 200
    status, headers, body = _request(base + "/api/chat", json.dumps({"message": "안녕"}).encode())
    assert status == 429 and json.loads(body)["error"] and int(headers["Retry-After"]) > 0

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "chat service stopped" in out
    access = [line for line in err.splitlines() if "dialogbert.access" in line]
    assert any("GET /healthz 200" in line for line in access) and any("POST /api/chat 429" in line for line in access)
    assert "비밀" not in err and "secret" not in err and reply["session_id"] not in err


def test_a_slow_client_holds_no_worker(server):
    """A client that opens connections and sends half a request ties up no thread: others get answers."""
    import socket

    base, proc = server
    port = int(base.rsplit(":", 1)[1])
    stalled = []
    for _ in range(6):   # more than the 2 worker threads
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        stalled.append(s)
    t0 = time.perf_counter()
    status, _, body = _request(base + "/healthz")
    assert status == 200 and time.perf_counter() - t0 < 5
    for s in stalled:
        s.close()


def test_serve_arguments_reach_the_server(monkeypatch):
    import bot.server
    from dialogbert.cli import main

    seen = {}
    monkeypatch.setattr(bot.server, "serve", lambda config, **kw: seen.update(config=config, **kw) or 0)
    assert main(["serve", "--index", "runs/x/index", "--port", "8123", "--threads", "3", "--rate-limit", "",
                 "--max-body-kb", "16", "--batch", "1"]) == 0
    assert seen["config"] == {"INDEX_DIR": "runs/x/index", "MODEL_DIR": None, "RERANKER_DIR": None, "PRECISION": "auto",
                              "RATE_LIMIT": "", "MAX_CONTENT_LENGTH": 16 * 1024, "SEARCH_BATCH": 1}
    assert (seen["port"], seen["threads"], seen["host"]) == (8123, 3, "127.0.0.1")
    assert main(["serve", "--index", "runs/x/index"]) == 0
    assert "RATE_LIMIT" not in seen["config"] and "SEARCH_BATCH" not in seen["config"]   # the app's own defaults
    assert seen["threads"] == bot.server.THREADS == 16
    assert main(["serve", "--index", "runs/x/index", "--batch", "-1"]) == 2
    assert (seen["connection_limit"], seen["channel_timeout"]) == (bot.server.CONNECTION_LIMIT, bot.server.CHANNEL_TIMEOUT)


def test_make_server_refuses_nonsense():
    from bot.app import create_app
    from bot.server import make_server

    with pytest.raises(ValueError, match="threads"):
        make_server(create_app({"RETRIEVER": object(), "RATE_LIMIT": ""}), port=0, threads=0)
