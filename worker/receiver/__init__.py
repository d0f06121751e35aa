"""The tracking receiver: the web service providers push delivery news to.

A small ASGI app (``worker.receiver.app``, Starlette) served by uvicorn: ``delivery-worker
receiver --host --port``. It verifies what arrives (Postal's RSA signatures, the callback
tokens of SMS/Voice Partner hints), answers at once and hands the work to Celery
(``worker.receiver.publish``). Why Starlette + uvicorn: both are small, typed, maintained by
the Encode team with frequent releases, and the ASGI pair every Python deployment guide
covers; the receiver needs routing, streamed bodies and a fast server, nothing more (no ORM,
templates or sessions).
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_from_env", "serve"]


def build_from_env() -> Any:
    """The app for this process's ``DELIVERY_*`` settings (uvicorn's factory, one per worker)."""
    from worker.app import app as celery_app
    from worker.config import get_settings
    from worker.logs import configure_logging
    from worker.receiver.app import ReceiverConfig, create_app
    from worker.receiver.limits import BodyDeadline
    from worker.receiver.publish import CeleryPublisher, RedisDedupe
    from worker.redis_client import shared_redis
    from worker.stores.keys import keys_for

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    client = shared_redis(settings, socket_timeout=5)
    app = create_app(
        ReceiverConfig.from_settings(settings),
        CeleryPublisher(celery_app),
        RedisDedupe(client, settings.tracking_dedupe_ttl_s, keys=keys_for(settings)),
    )
    return BodyDeadline(
        app,
        timeout_s=settings.receiver_body_timeout_s,
        max_body_bytes=settings.receiver_max_body_bytes,
    )


def serve(host: str, port: int, *, workers: int = 1) -> None:
    """Run the receiver until SIGTERM/SIGINT (uvicorn handles both gracefully).

    uvicorn's access log is off: hint URLs carry their token in the path. The app logs each
    request itself, by route. Every deadline and cap comes from the ``DELIVERY_RECEIVER_*``
    settings (docs/threat-model-receiver.md); the request-head deadline lives in the protocol
    class (``worker.receiver.limits``), the body deadline in the app's middleware.
    """
    import uvicorn

    from worker.config import get_settings
    from worker.receiver.limits import HeaderDeadlineH11Protocol

    settings = get_settings()
    uvicorn.run(
        "worker.receiver:build_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http=HeaderDeadlineH11Protocol,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        log_level="warning",
        timeout_keep_alive=settings.receiver_keep_alive_s,
        limit_concurrency=settings.receiver_max_connections,
        h11_max_incomplete_event_size=settings.receiver_max_header_bytes,
        backlog=settings.receiver_backlog,
    )
