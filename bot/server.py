"""The production server: the chat service (bot.app) on waitress.

    serve(config, host="127.0.0.1", port=8000, threads=16) -> 0 once stopped

What `dialogbert serve` and the demo's last stage call. ``config`` is create_app's (INDEX_DIR,
MODEL_DIR, RATE_LIMIT, MAX_CONTENT_LENGTH, ...). Waitress reads every request whole on its own
event loop before a worker thread sees it, so a slow or half-open client holds a connection (at
most ``connection_limit``, idle ones closed after ``channel_timeout`` seconds), never one of the
``threads`` that run the model. It stops reading a body at 16 x MAX_CONTENT_LENGTH (1 MiB at the
default), with its own plain-text 413; a body between the two reaches the app, whose 413 is JSON.
SIGTERM and Ctrl-C stop it: the worker threads are joined (5 s at most) and serve returns 0.
Flask's development server is for tests only.
"""
from __future__ import annotations

import logging
import signal
import sys

from bot.app import create_app

THREADS = 16              # requests answered at once (their searches batched: bot/batching.py); enough to
                          # give two search workers a full batch of 8 each (bench/server.py)
CONNECTION_LIMIT = 100    # open connections; more wait in the listen backlog
CHANNEL_TIMEOUT = 30      # seconds an idle connection (or a client that stopped sending) is kept
HEADER_LIMIT = 32 * 1024  # bytes of request headers (waitress's default is 256 KiB)


def make_server(app, host: str = "127.0.0.1", port: int = 8000, threads: int = THREADS,
                connection_limit: int = CONNECTION_LIMIT, channel_timeout: int = CHANNEL_TIMEOUT):
    """A waitress server for ``app``, bound and listening (port 0: a free port, ``.effective_port``)."""
    from waitress import create_server
    if threads < 1 or connection_limit < 1 or channel_timeout < 1:
        raise ValueError(f"serve needs threads, connection limit and channel timeout of at least 1 (got "
                         f"{threads}, {connection_limit}, {channel_timeout}): see `dialogbert serve --help`")
    return create_server(
        app, host=host, port=port, threads=threads, connection_limit=connection_limit,
        channel_timeout=channel_timeout, cleanup_interval=max(1, channel_timeout // 2),
        max_request_body_size=max(16 * app.config["MAX_CONTENT_LENGTH"], 1 << 20),
        max_request_header_size=HEADER_LIMIT, ident="dialogbert", asyncore_use_poll=True)


def _log_to_stderr() -> None:
    """The access log (dialogbert.access) and waitress's own messages, one line each, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    for name in ("dialogbert.access", "waitress"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


def _stop(signum, frame):
    raise SystemExit(0)  # waitress's run() takes it as the signal to join its threads and return


def serve(config: dict, host: str = "127.0.0.1", port: int = 8000, threads: int = THREADS,
          connection_limit: int = CONNECTION_LIMIT, channel_timeout: int = CHANNEL_TIMEOUT) -> int:
    """Load the service (create_app(config)) and serve it on waitress until SIGTERM or Ctrl-C."""
    app = create_app(config)
    server = make_server(app, host, port, threads, connection_limit, channel_timeout)
    _log_to_stderr()
    previous = signal.signal(signal.SIGTERM, _stop)
    rate = app.config["RATE_LIMIT"] or "no"
    print(f"chat page on http://{host}:{getattr(server, 'effective_port', port)}/  (waitress, {threads} threads, "
          f"{rate} rate limit on POST /api/chat; API: /api/openapi.json)", flush=True)
    try:
        server.run()   # returns after SIGTERM or Ctrl-C, its worker threads joined
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
    print("chat service stopped", flush=True)
    return 0
