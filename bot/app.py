"""The chat service: a JSON API and a web chat page over the response index.

    create_app(config=None) -> Flask app

Config keys: ``INDEX_DIR`` and ``MODEL_DIR`` (what `dialogbert index` / `finetune` wrote; the index's
fitted ranker, ranker.json, ranks the candidates, with the re-ranker it names or ``RERANKER_DIR``; a
folder `dialogbert bigindex` wrote is served by the dialog model alone, retrieval.bigserve;
``PRECISION`` the dialog model's weights there, "auto" (default: bf16 where the hardware computes it
natively, retrieval.encoder.Encoder.for_inference), "fp32" or "bf16"), or
``RETRIEVER`` (any object with ``search(contexts, k)``, see :class:`Retriever`; tests inject one);
``CONTEXT_TURNS`` (turns of history fed to the encoder, default 5), ``TOP_K`` (candidates ranked,
default 20), ``MAX_SESSIONS`` (sessions kept in memory, least recently used dropped, default 10000),
``SESSION_IDLE_SECONDS`` (a session unused this long is forgotten, default 1800), ``SESSION_CLOCK``
(the monotonic clock the sessions use, default ``time.monotonic``; tests inject one),
``MAX_MESSAGE_CHARS`` (default 1000), ``MAX_CONTENT_LENGTH`` (Flask's request body limit, default 64 KiB),
``RATE_LIMIT`` (requests to /api/chat per client address, Flask-Limiter's notation such as
"30/minute" or "5/second;100/hour", counted in memory, per process; default "30/minute"; empty: no
limit); ``PROXIES`` (reverse proxies in front that set X-Forwarded-For, default 0);
``RELOAD_SECONDS`` (how often the INDEX_DIR is looked at for a changed index, which is then loaded
and swapped in without dropping a request, bot/reload.py; default 5, 0: never) and
``RETRIEVER_LOADER`` (what loads INDEX_DIR; default the ranker's HybridRetriever, or BigRetriever);
``SEARCH_BATCH`` (chat requests that arrive together are searched in one call of the retriever, up to
this many contexts, bot/batching.py; default 8, 1: each request alone in its own thread) and
``SEARCH_BATCH_WAIT_MS`` (how long a batch waits for more requests, only under load; default 15) and
``SEARCH_WORKERS`` (batches searched at once, each in its own thread on its share of the cores, a
lone one on all of them; default 0: one per core, at most 4).

Routes (bot/openapi.py describes them, served at ``GET /api/openapi.json``): ``GET /`` the chat
page; ``POST /api/chat`` {"message", "session_id"?} -> {"reply", "session_id", "candidates"};
``POST /api/reset`` {"session_id"}; ``GET /api/info`` (version, model, index, ranker: no personal
data); ``GET /healthz`` (a fixed probe message through the retriever: 200 {"status": "ok"}, or 503
with the reason). Every error under ``/api/`` is JSON ``{"error": "..."}`` with its status (400 for
a body that is not a JSON object or a message that is not clean text: lone surrogates, control
characters other than tab and newline; 413 for a body over MAX_CONTENT_LENGTH or a message over
MAX_MESSAGE_CHARS; 429 over RATE_LIMIT, with Retry-After; 404, 405, 500). A message is checked
before anything is kept, and kept only once its reply exists: a bad or failed request
leaves its session as it was.

Every response carries SECURITY_HEADERS (a Content-Security-Policy that allows only the service's own
origin: the page's script and style are files under static/, never inline). Each request is logged
to the ``dialogbert.access`` logger as method, path, status, bytes and milliseconds: never a body,
a query string, a session id or a client address.

Personal data never leaves: the user's message is anonymized (Korean and English detectors,
preprocess.anonymize) before it is kept as context or searched with, and every candidate reply
passes the same detectors (and carries no placeholder) before it can be returned, whatever the
index holds: a reply that fails is passed over for the next candidate. After a message that held
personal data, a reply claiming to have saved or remembered it is passed over too.

The reply is in the language of the user's newest message (Korean or English, detect_lang): the best
candidate in that language, the best overall only when none of the candidates is.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import secrets
import time
from pathlib import Path
from typing import Protocol, Sequence

from flask import Blueprint, Flask, abort, current_app, g, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException, InternalServerError

from bot.openapi import document
from bot.sessions import Sessions
from preprocess.anonymize import anonymize, contains_pii
from preprocess.pii_korean import kiwi
from preprocess.pipeline import detect_lang

USER, BOT = "U", "B"
FALLBACK_REPLY = {"ko": "음, 잘 모르겠어요. 다르게 말해 줄래요?", "en": "Hmm, I'm not sure. Could you say it another way?"}
PLACEHOLDER = re.compile(r"\[[A-Z]+\]")  # a typed placeholder left by the anonymizer ([NAME], [PHONE], ...)
# a reply that says the bot kept what it was told
_STORE_CLAIM = re.compile(r"저장|기억(?:할|해\s?둘|해\s?놓|하고\s?있)|적어\s?(?:둘|놓|뒀)|메모(?:할|했|해\s?둘)|"
                          r"(?i:\bsav(?:ed|e it|ing it)\b|\bstored?\b|\bnoted\b|\bwrote (?:it|that) down|"
                          r"\bremember(?:ed)? (?:it|that|this)\b|\bi'?ll remember\b|\bgot it down\b)")
# surrogates (never text on their own) and control characters other than tab, newline, CR
_NOT_TEXT = re.compile("[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
SECURITY_HEADERS = {
    # only this origin: scripts, styles, fetches; no plugins, no <base>, never inside a frame
    "Content-Security-Policy": "default-src 'self'; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
ACCESS_LOG = logging.getLogger("dialogbert.access")
HEALTH_PROBE = "안녕하세요"  # what /healthz asks the retriever


class Retriever(Protocol):
    def search(self, contexts: Sequence[Sequence[tuple[str, str]]], k: int) -> list[list[tuple[float, dict]]]:
        """For each context (turns oldest first, as (speaker, text)), the k best (score, row) where
        row["text"] is the stored response (retrieval.index.ResponseIndex.search)."""


def is_servable(text: str) -> bool:
    """The last guard before a stored sentence reaches a stranger."""
    return bool(text.strip()) and not PLACEHOLDER.search(text) and not contains_pii(text)


def choose_reply(candidates: Sequence[tuple[str, float]], history: Sequence[tuple[str, str]],
                 user_gave_pii: bool = False, lang: str | None = None) -> str | None:
    """The best-scoring servable candidate that the bot has not said in this session yet. With
    ``lang`` ("ko" or "en": the language of the user's newest message, detect_lang), the choice is
    among the candidates in that language, and among all of them only when none is: the reply
    follows the user's language even where the session began in another. When the user's message
    held personal data (it reached the bot as placeholders), a candidate that claims to save or
    remember something ("저장했어요", "I'll remember that") is not chosen either: the bot keeps no
    such data and must not say it does."""
    said = {t for s, t in history if s == BOT}
    servable = [t for t, _ in candidates if is_servable(t)
                and not (user_gave_pii and _STORE_CLAIM.search(t))]
    if lang in FALLBACK_REPLY:
        servable = [t for t in servable if detect_lang([t]) == lang] or servable
    for text in servable:
        if text not in said:
            return text
    return servable[0] if servable else None


def _retriever() -> Retriever:
    """The retriever for this request: the live one, swapped when the index folder changes."""
    watcher = current_app.extensions.get("dialogbert.watcher")
    return watcher.current() if watcher is not None else current_app.config["RETRIEVER"]


def _searcher() -> Retriever:
    """What a request searches with: the batcher in front of the live retriever, or that retriever."""
    return current_app.extensions.get("dialogbert.batcher") or _retriever()


bp = Blueprint("chat", __name__)


@bp.get("/")
def page():
    return send_from_directory(Path(__file__).parent / "static", "chat.html")


@bp.get("/healthz")
def healthz():
    """200 {"status": "ok"} when the retriever answers HEALTH_PROBE with at least one reply; else
    503 with the reason (the exception's type only: its message, in the log, may name paths)."""
    try:
        hits = _searcher().search([[(USER, HEALTH_PROBE)]], 1)
        if not (hits and hits[0] and isinstance(hits[0][0][1].get("text"), str)):
            return jsonify(status="failing", reason="the retriever found no reply to the probe message"), 503
    except Exception as e:
        current_app.logger.exception("health probe failed")
        return jsonify(status="failing", reason=f"the retriever failed on the probe message "
                                                f"({type(e).__name__}; the cause is in the server log)"), 503
    return jsonify(status="ok")


@bp.get("/api/info")
def info():
    c, watcher = current_app.config, current_app.extensions.get("dialogbert.watcher")
    out = service_info(_retriever(), c["INDEX_DIR"], c["MODEL_DIR"])
    if watcher is not None:
        out["reload"] = watcher.status()
    batcher = current_app.extensions.get("dialogbert.batcher")
    if batcher is not None:
        out["batching"] = batcher.status()
    return jsonify(out)


@bp.get("/api/openapi.json")
def openapi():
    return jsonify(document(_package_version()))


def _json_object(example: str) -> dict:
    """The request's JSON body, which must be an object; anything else is a 400 (a JSON error
    naming ``example``). Nesting too deep for the parser is a 400 too, not a RecursionError."""
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        body = None
    if not isinstance(body, dict):
        abort(400, description=f"send a JSON object like {example}")
    return body


def _check_text(text: str) -> None:
    """Refuse text that is not clean Unicode (a lone surrogate cannot even be encoded as UTF-8 and
    breaks the tokenizer) before any of it is kept."""
    bad = _NOT_TEXT.search(text)
    if bad:
        abort(400, description=f"the message holds a character that is not text (U+{ord(bad.group()):04X} "
                               f"at position {bad.start()}): send plain UTF-8 text")


@bp.post("/api/chat")
def chat():
    body = _json_object('{"message": "안녕", "session_id": "..."}')
    if not isinstance(body.get("message"), str):
        abort(400, description='send JSON like {"message": "안녕", "session_id": "..."}')
    _check_text(body["message"])
    message = " ".join(body["message"].split())
    if not message:
        abort(400, description="the message is empty")
    limit = current_app.config["MAX_MESSAGE_CHARS"]
    if len(message) > limit:
        abort(413, description=f"the message is longer than {limit} characters")
    sid = body.get("session_id")
    if not isinstance(sid, str) or not re.fullmatch(r"[A-Za-z0-9_-]{8,64}", sid):
        sid = secrets.token_urlsafe(12)
    sessions: Sessions = current_app.config["SESSIONS"]
    # The user's own personal data is not kept, not even in memory; and nothing is kept until the
    # reply exists, so a request that fails leaves the session as it was.
    turn = (USER, anonymize(message))
    history = sessions.history(sid)
    context = (history + [turn])[-current_app.config["CONTEXT_TURNS"]:]
    hits = _searcher().search([context], current_app.config["TOP_K"])[0]
    candidates = [(row["text"], score) for score, row in hits]
    lang = detect_lang([turn[1]])
    reply = choose_reply(candidates, history, user_gave_pii=bool(PLACEHOLDER.search(turn[1])), lang=lang)
    if reply is None:
        reply = FALLBACK_REPLY["ko" if lang == "ko" else "en"]
    sessions.extend(sid, (turn, (BOT, reply)))
    shown = [{"text": t, "score": round(float(s), 4)} for t, s in candidates if is_servable(t)][:5]
    return jsonify(reply=reply, session_id=sid, candidates=shown)


@bp.post("/api/reset")
def reset():
    sid = _json_object('{"session_id": "..."}').get("session_id")
    if isinstance(sid, str):
        current_app.config["SESSIONS"].reset(sid)
    return jsonify(ok=True)


def _api_error(e: HTTPException):
    """Errors under /api/ as JSON {"error": ...} with their status; elsewhere Flask's own page."""
    if not request.path.startswith("/api/"):
        return e
    if isinstance(e, InternalServerError):
        # the cause is in the log (Flask logs it before calling this); the client learns only that
        description = "the server failed on this request; it was not kept, try again"
    elif e.code == 429:  # Flask-Limiter's RateLimitExceeded: the description is the limit
        description = f"too many messages from this address (at most {e.description}); wait and send again"
    else:
        description = e.description
    return jsonify(error=description), e.code


@functools.lru_cache(maxsize=1)
def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("dialogbert")
    except PackageNotFoundError:   # a checkout that was never installed
        return "unknown"


def service_info(retriever, index_dir=None, model_dir=None) -> dict:
    """What /api/info says: the package's version, the model's folder name and hash, the index's size
    and the sha256 of its index_info.json (a bigindex's bigindex.json), the ranker's features. Names
    only, never a path (paths carry user and folder names), no session count, nothing from the
    conversations."""
    index = getattr(retriever, "index", None)
    folder = index_dir or getattr(index, "folder", None)
    meta, meta_sha = getattr(index, "info", None), None
    for name in ("index_info.json", "bigindex.json"):
        path = Path(folder) / name if folder else None
        if path is not None and path.is_file():
            raw = path.read_bytes()
            meta_sha = hashlib.sha256(raw).hexdigest()
            if name == "index_info.json":
                meta = json.loads(raw)
            break
    meta = meta if isinstance(meta, dict) else {}
    model = model_dir or meta.get("model")
    enc = getattr(retriever, "encoder", None) or getattr(getattr(retriever, "scorer", None), "encoder", None)
    return {"version": _package_version(),
            "model": {"name": Path(model).name if model else None, "sha256": meta.get("model_sha256"),
                      "precision": getattr(enc, "weights_precision", None)},
            "index": {"size": meta.get("count"), "memory": meta.get("memory"), "dimension": meta.get("dimension"),
                      "factory": meta.get("factory"), "updated": meta.get("updated"), "info_sha256": meta_sha},
            "ranker": {"features": list(getattr(getattr(retriever, "ranker", None), "active", []))}}


def _start_clock() -> None:
    g.started = time.perf_counter()


def _finish(response):
    """Security headers on every response, and one access-log line without any of the request's text."""
    response.headers.update(SECURITY_HEADERS)
    started = g.get("started")
    ACCESS_LOG.info("%s %s %d %dB %.1fms", request.method, request.path, response.status_code,
                    response.content_length or 0, 1000 * (time.perf_counter() - started) if started else -1.0)
    return response


def _rate_limiter(app: Flask):
    """Flask-Limiter over /api/chat alone: RATE_LIMIT per client address, in this process's memory
    (each process counts for itself). None when RATE_LIMIT is empty."""
    rate = app.config["RATE_LIMIT"]
    if not rate:
        return None
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address
    from limits import parse_many
    try:
        parse_many(rate)
    except ValueError:
        raise ValueError(f"RATE_LIMIT {rate!r} is not a rate: write it like '30/minute' or "
                         f"'5/second;100/hour' (`dialogbert serve --rate-limit`), or leave it empty for none")
    return Limiter(get_remote_address, app=app, default_limits=[rate], storage_uri="memory://",
                   strategy="moving-window", headers_enabled=True,
                   default_limits_exempt_when=lambda: request.endpoint != "chat.chat")


def create_app(config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(CONTEXT_TURNS=5, TOP_K=20, MAX_SESSIONS=10000, SESSION_IDLE_SECONDS=1800.0,
                      SESSION_CLOCK=time.monotonic, MAX_MESSAGE_CHARS=1000, MAX_CONTENT_LENGTH=64 * 1024,
                      RATE_LIMIT="30/minute", INDEX_DIR=None, MODEL_DIR=None, RERANKER_DIR=None, PRECISION="auto", RETRIEVER=None,
                      JSON_AS_ASCII=False, PROXIES=0, RELOAD_SECONDS=5.0, RETRIEVER_LOADER=None, SEARCH_BATCH=8,
                      SEARCH_BATCH_WAIT_MS=15.0, SEARCH_WORKERS=0)
    app.config.update(config or {})
    if app.config["PROXIES"]:
        # behind N reverse proxies: the client address (what the rate limit counts by) is the
        # N-th X-Forwarded-For entry from the right; without this every client is the proxy
        from werkzeug.middleware.proxy_fix import ProxyFix
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=int(app.config["PROXIES"]), x_proto=int(app.config["PROXIES"]))
    if app.config["RETRIEVER"] is None and not app.config["INDEX_DIR"]:
        raise ValueError("create_app needs INDEX_DIR (a folder written by `dialogbert index`) or RETRIEVER")
    app.register_error_handler(HTTPException, _api_error)
    app.before_request(_start_clock)   # before the limiter's check, so a 429 is timed too
    app.after_request(_finish)
    app.extensions["dialogbert.limiter"] = _rate_limiter(app)
    app.config["SESSIONS"] = Sessions(app.config["MAX_SESSIONS"], max(2 * app.config["CONTEXT_TURNS"], 10),
                                      app.config["SESSION_IDLE_SECONDS"], app.config["SESSION_CLOCK"])
    load = app.config["RETRIEVER_LOADER"]   # an injected RETRIEVER without a loader is never reloaded
    if load is None and app.config["INDEX_DIR"] and app.config["RETRIEVER"] is None:
        def load():
            from retrieval.bigserve import BigRetriever, is_bigindex
            if is_bigindex(app.config["INDEX_DIR"]):  # `dialogbert bigindex`: the dialog model alone, at scale
                if app.config["RERANKER_DIR"]:
                    raise ValueError(f"{app.config['INDEX_DIR']} is a bigindex: it is served by the dialog model "
                                     f"alone, without a re-ranker")
                return BigRetriever.load(app.config["INDEX_DIR"], app.config["MODEL_DIR"], app.config["PRECISION"])
            from retrieval.ranker import HybridRetriever
            return HybridRetriever.load(app.config["INDEX_DIR"], app.config["MODEL_DIR"], app.config["RERANKER_DIR"],
                                        app.config["PRECISION"])
    if app.config["RETRIEVER"] is None:
        # loaded now (after the cheap checks above), so a wrong folder or a model/index mismatch
        # stops the service at start-up with the loader's message, not at the first chat request
        app.config["RETRIEVER"] = load()
        kiwi()  # the Korean name detector's analyser (~1 s), now rather than on a user's first message
    if app.config["INDEX_DIR"] and app.config["RELOAD_SECONDS"] and load is not None:
        from bot.reload import IndexWatcher
        app.extensions["dialogbert.watcher"] = IndexWatcher(app.config["INDEX_DIR"], load,
                                                            app.config["RELOAD_SECONDS"],
                                                            app.config["SESSION_CLOCK"], app.config["RETRIEVER"])
    if int(app.config["SEARCH_BATCH"]) > 1:
        from bot.batching import SearchBatcher, default_workers
        watcher = app.extensions.get("dialogbert.watcher")
        live = watcher.current if watcher is not None else lambda: app.config["RETRIEVER"]
        app.extensions["dialogbert.batcher"] = SearchBatcher(live, int(app.config["SEARCH_BATCH"]),
                                                             wait=float(app.config["SEARCH_BATCH_WAIT_MS"]) / 1000,
                                                             workers=int(app.config["SEARCH_WORKERS"]) or default_workers())
    app.json.ensure_ascii = False
    app.register_blueprint(bp)
    return app
