"""The config of `dialogbert serve`: one typed ``[serve]`` section, a TOML file, dotted overrides,
checked by the same loader as every other command's (dialogbert.config). The service writes no
artifact, so the resolved config is printed, not saved.

    cfg = load_serve_config("configs/serve.toml", ["serve.port=8123"])
    bot.server.serve(cfg.app_config(), **cfg.server_kwargs())
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from dialogbert.config import Sections, read_config

APP_DEFAULT = "default"  # serve.rate_limit: the app's own limit (bot.app: 30/minute); "" turns it off


@dataclass
class ServeSection:
    index: str = ""            # index folder written by `dialogbert index` (required)
    model: str = ""            # encoder folder ("" = the one the index names)
    reranker: str = ""         # re-ranker folder ("" = the one the index's ranker.json names)
    precision: str = "auto"    # the dialog model's weights: "auto" = bf16 where the CPU/GPU computes it natively
                               # (1.5x the contexts a second on two cores), "fp32", "bf16"
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = 16          # requests answered at once (bot.server.THREADS)
    batch: int = 0             # requests that arrive together searched in one call, up to this many
                               # (bot/batching.py); 0 = the app's (8), 1 = each request alone
    batch_wait_ms: float = -1.0  # how long a batch waits for more requests, only under load; < 0 = the app's (15)
    search_workers: int = 0    # batches searched at once, each on its share of the cores; 0 = one per core, at most 4
    rate_limit: str = APP_DEFAULT  # POST /api/chat per client address, e.g. 30/minute; "" = off
    max_body_kb: int = 0       # largest request body; 0 = the app's (64)
    behind_proxies: int = 0    # reverse proxies that set X-Forwarded-For in front of the service
    connection_limit: int = 100  # bot.server.CONNECTION_LIMIT
    channel_timeout: int = 30  # seconds (bot.server.CHANNEL_TIMEOUT)


@dataclass
class ServeConfig(Sections):
    serve: ServeSection = field(default_factory=ServeSection)

    def app_config(self) -> dict:
        """The Flask config bot.app.create_app reads (keys left out keep the app's defaults)."""
        s = self.serve
        config = {"INDEX_DIR": s.index, "MODEL_DIR": s.model or None, "RERANKER_DIR": s.reranker or None,
                  "PRECISION": s.precision}
        if s.rate_limit != APP_DEFAULT:
            config["RATE_LIMIT"] = s.rate_limit
        if s.max_body_kb:
            config["MAX_CONTENT_LENGTH"] = s.max_body_kb * 1024
        if s.behind_proxies:
            config["PROXIES"] = s.behind_proxies
        if s.batch:
            config["SEARCH_BATCH"] = s.batch
        if s.batch_wait_ms >= 0:
            config["SEARCH_BATCH_WAIT_MS"] = s.batch_wait_ms
        if s.search_workers:
            config["SEARCH_WORKERS"] = s.search_workers
        return config

    def server_kwargs(self) -> dict:
        s = self.serve
        return {"host": s.host, "port": s.port, "threads": s.threads, "connection_limit": s.connection_limit,
                "channel_timeout": s.channel_timeout}


def load_serve_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ServeConfig:
    cfg = read_config(path, overrides, cls=ServeConfig)
    s = cfg.serve
    if not s.index:
        raise ValueError("no index folder: pass --index DIR (serve.index=DIR)")
    from retrieval.encoder import check_precision
    check_precision(s.precision, "serve.precision")
    if s.max_body_kb < 0 or s.behind_proxies < 0 or s.batch < 0 or s.search_workers < 0:
        raise ValueError("serve.max_body_kb, serve.behind_proxies, serve.batch and serve.search_workers must be >= 0")
    return cfg
