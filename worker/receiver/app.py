"""The receiver's ASGI app (Starlette): authenticate, parse, hand over to Celery, answer.

Routes (every answer is JSON ``{"status": …}``, with ``"error"`` on a refusal):

* ``GET /health``: 200 when Redis (dedupe) and the broker answer, else 503.
* ``POST /hooks/postal``: a Postal webhook (docs/providers/postal.md §4.6). 401 unsigned, 403
  forged, 400 malformed or stale, 413 too large, 404 when no Postal key is configured; 200
  ``published`` / ``duplicate`` (same envelope ``uuid`` already published) / ``ignored``
  (a server event, an incoming message); 409 while the same uuid is being published; 503
  when the broker is down (Postal retries, docs/providers/postal.md §4.6).
* ``GET|POST /hooks/{smspartner|voicepartner}/{delivery_id}/{token}``: a callback hint
  (docs/providers/smspartner.md §1.4, docs/providers/voicepartner.md §3.3). 403 for a wrong
  or expired token, 404 when hints are not configured; the body is read (bounded) and ignored;
  200 ``published`` after ``TRACK_HINT_TASK`` is on the broker, 200 ``throttled`` (nothing
  published) for a second hint about a delivery within ``hint_interval_s``.

Nothing is published for a refused request. Logs name the route, never the path (the hint
URLs carry their token) and never a body.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from worker.providers.postal_webhook import (
    WebhookRejected,
    load_public_key,
    parse_webhook,
    verify_signature,
)
from worker.receiver.publish import Dedupe, Publisher
from worker.tracking.callbacks import HINT_PROVIDERS, valid_delivery_id, verify_token

__all__ = ["ReceiverConfig", "create_app"]

log = structlog.get_logger("worker.receiver")

FUTURE_SKEW_S = 300.0
"""A Postal envelope dated further ahead than this is refused (clocks differ a little)."""


@dataclass(frozen=True)
class ReceiverConfig:
    postal_public_key: str | None = None
    postal_allow_sha1: bool = True
    postal_max_age_s: float = 12 * 3600
    tracking_secret: str | None = None
    max_body_bytes: int = 1024 * 1024
    hint_max_age_s: float = 48 * 3600.0
    """A callback token older than this is refused (the tracking horizon)."""
    hint_interval_s: float = 15.0
    """At most one hint per delivery is published in this window; the rest are answered 200."""

    @classmethod
    def from_settings(cls, settings: Any) -> ReceiverConfig:
        secret = settings.tracking_secret
        return cls(
            postal_public_key=settings.postal_webhook_public_key,
            postal_allow_sha1=settings.postal_webhook_allow_sha1,
            postal_max_age_s=settings.postal_webhook_max_age_s,
            tracking_secret=(secret.get_secret_value() or None) if secret is not None else None,
            max_body_bytes=settings.receiver_max_body_bytes,
            hint_max_age_s=settings.tracking_poll_max_s,
            hint_interval_s=settings.tracking_hint_interval_s,
        )


class _TooLarge(Exception):
    pass


def _refuse(status: int, error: str) -> JSONResponse:
    return JSONResponse({"status": "refused", "error": error}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes: a larger declared or streamed body is refused."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    config: ReceiverConfig,
    publisher: Publisher,
    dedupe: Dedupe,
    *,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    postal_key: rsa.RSAPublicKey | None = (
        load_public_key(config.postal_public_key) if config.postal_public_key else None
    )

    async def health(request: Request) -> JSONResponse:
        try:
            await run_in_threadpool(dedupe.ping)
            await run_in_threadpool(publisher.ping)
        except Exception as exc:  # any failure to reach Redis or the broker
            log.warning("receiver.unhealthy", error=type(exc).__name__)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def postal(request: Request) -> JSONResponse:
        if postal_key is None:
            return _refuse(404, "Postal webhooks are not configured on this receiver")
        try:
            body = await _read_body(request, config.max_body_bytes)
        except _TooLarge:
            log.info("receiver.refused", route="postal", status=413)
            return _refuse(413, f"body larger than {config.max_body_bytes} bytes")
        try:
            verify_signature(postal_key, body, request.headers, allow_sha1=config.postal_allow_sha1)
            hook = parse_webhook(body)
            now = clock()
            if hook.timestamp < now - config.postal_max_age_s:
                raise WebhookRejected(400, "envelope too old (replay?)")
            if hook.timestamp > now + FUTURE_SKEW_S:
                raise WebhookRejected(400, "envelope timestamp in the future")
        except WebhookRejected as exc:
            log.info("receiver.refused", route="postal", status=exc.status, why=exc.reason)
            return _refuse(exc.status, exc.reason)
        if not hook.events:
            log.info("receiver.ignored", route="postal", postal_event=hook.event)
            return JSONResponse({"status": "ignored", "reason": hook.ignored})
        answer = await run_in_threadpool(_hand_over, f"postal:{hook.uuid}", hook.events)
        if answer == "duplicate":
            log.info("receiver.duplicate", route="postal", uuid=hook.uuid)
            return JSONResponse({"status": "duplicate"})
        if answer == "pending":
            return _refuse(409, "this event is being processed; retry later")
        # Redis or the broker refused: Postal retries (docs/providers/postal.md §4.6)
        if answer != "published":
            log.error("receiver.publish_failed", route="postal", error=answer)
            return _refuse(503, "could not queue the event; retry later")
        log.info("receiver.published", route="postal", postal_event=hook.event, uuid=hook.uuid)
        return JSONResponse({"status": "published", "events": len(hook.events)})

    def _hand_over(key: str, events: list[Any]) -> str:
        """Claim, publish, mark done: one trip to a worker thread (blocking Redis/Celery I/O).

        Returns ``published``, ``duplicate``, ``pending`` or the publish error's class name.
        """
        try:
            claim = dedupe.claim(key)
        except Exception as exc:  # Redis unreachable: nothing claimed, nothing published
            return type(exc).__name__
        if claim != "new":
            return claim
        try:
            publisher.publish_events(events)
        except Exception as exc:  # anything the broker client raises
            with contextlib.suppress(Exception):
                dedupe.release(key)  # else the pending claim expires on its own
            return type(exc).__name__
        try:
            dedupe.done(key)
        except Exception as exc:  # published all the same; the pending claim expires
            log.warning("receiver.dedupe_unmarked", route="postal", error=type(exc).__name__)
        return "published"

    async def hint(request: Request) -> JSONResponse:
        provider = str(request.path_params["provider"])
        delivery_id = str(request.path_params["delivery_id"])
        token = str(request.path_params["token"])
        if provider not in HINT_PROVIDERS or not config.tracking_secret:
            return _refuse(404, "no callback endpoint here")
        if (
            not valid_delivery_id(delivery_id)
            or len(token) > 100
            or not verify_token(
                config.tracking_secret,
                provider,
                delivery_id,
                token,
                now=clock(),
                max_age_s=config.hint_max_age_s,
            )
        ):
            log.info("receiver.refused", route="hint", provider=provider, status=403)
            return _refuse(403, "callback token does not match")
        try:
            # Read (bounded) and dropped: the payload is undocumented and not trusted
            # (docs/providers/smspartner.md §1.4, docs/providers/voicepartner.md §3.3); the worker
            # asks the provider's status lookup instead.
            await _read_body(request, config.max_body_bytes)
        except _TooLarge:
            return _refuse(413, f"body larger than {config.max_body_bytes} bytes")
        try:
            # A replayed (or chatty) callback costs a task and a provider lookup: one per
            # delivery per window; the lookup reads the latest status anyway.
            due = await run_in_threadpool(
                dedupe.hint_due, f"{provider}:{delivery_id}", config.hint_interval_s
            )
            if not due:
                log.info("receiver.hint_throttled", provider=provider, delivery_id=delivery_id)
                return JSONResponse({"status": "throttled"})
            await run_in_threadpool(publisher.publish_hint, provider, delivery_id)
        except Exception as exc:
            log.error("receiver.publish_failed", route="hint", error=type(exc).__name__)
            return _refuse(503, "could not queue the hint; retry later")
        log.info("receiver.published", route="hint", provider=provider, delivery_id=delivery_id)
        return JSONResponse({"status": "published"})

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/hooks/postal", postal, methods=["POST"]),
            Route("/hooks/{provider}/{delivery_id}/{token}", hint, methods=["GET", "POST"]),
        ]
    )
