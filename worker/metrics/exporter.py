"""The ``/metrics`` endpoint: ``delivery-worker metrics``, one process per worker host.

It sums the multiprocess files that every worker process on the host writes into
``PROMETHEUS_MULTIPROC_DIR`` (prefork children, dead ones included) and adds the gauges read
from the shared Redis state (:mod:`worker.metrics.shared`). It is a process of its own rather
than a thread in Celery's main process: a scrape never competes with the process that forks the
pool, and ``/metrics`` keeps answering while the worker restarts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from worker.config import Settings
from worker.metrics.shared import SharedStateCollector
from worker.runtime import breaker_config
from worker.stores import Stores
from worker.stores.keys import keys_for

__all__ = [
    "MULTIPROC_ENV",
    "OWN_PREFIX",
    "OwnSeries",
    "build_registry",
    "make_metrics_server",
    "render",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OWN_PREFIX = "delivery_"
"""Every series the workers define starts with this (``worker.metrics.record``)."""


class OwnSeries(Collector):
    """The workers' series from the multiprocess files, and only theirs.

    Any other program started with the workers' environment writes its own files into the same
    directory (Flower: ``flower_*``); they are not this endpoint's to serve, and Flower serves
    them on its own ``/metrics``.
    """

    def __init__(self, path: str) -> None:
        self._files = MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        for family in self._files.collect():  # type: ignore[no-untyped-call]
            if family.name.startswith(OWN_PREFIX):
                yield family


def build_registry(
    settings: Settings, client: redis.Redis, multiproc_dir: str | None
) -> CollectorRegistry:
    """Counters and histograms of every process writing ``multiproc_dir`` (none: skipped),
    plus the shared-state gauges read through ``client``."""
    registry = CollectorRegistry()
    if multiproc_dir:
        os.makedirs(multiproc_dir, exist_ok=True)
        registry.register(OwnSeries(multiproc_dir))
    stores = Stores.on_redis(
        client,
        breaker=breaker_config(settings),
        safety_margin_s=settings.limiter_safety_margin_s,
        keys=keys_for(settings),
    )
    registry.register(SharedStateCollector(stores, client, settings))
    return registry


def render(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_metrics_server(registry: CollectorRegistry, host: str, port: int) -> WSGIServer:
    """A server answering ``GET /metrics`` (and 404 elsewhere); call ``serve_forever()``."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/metrics":
            body: Iterable[bytes] = metrics_app(environ, start_response)
            return body
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"metrics are at /metrics\n"]

    return make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
