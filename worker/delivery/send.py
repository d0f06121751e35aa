"""Step 5: send through the driver (build → gate → transmit → classify → parse).

The driver owns the wire; this step gives it the delivery's context and the gate, and hands
the answer on: accepted → ``sent``; a classified error → :func:`~worker.delivery.settle`.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from worker.delivery.context import FIRST_ATTEMPT_AT, Delivery, as_float
from worker.delivery.gate import NotNow, SendGate
from worker.delivery.outcomes import sent
from worker.delivery.results import Outcome
from worker.delivery.settle import Failure, settle_error
from worker.errors import DeliveryError
from worker.metrics import record as metrics
from worker.models import SmsMessage
from worker.providers import Driver, SendContext, SendOutcome
from worker.stores import DeliveryRecord, limiter_key
from worker.tracking.callbacks import callback_url

__all__ = ["send", "send_context"]

log = structlog.get_logger(__name__)


def send_context(d: Delivery, record: DeliveryRecord, driver: Driver[Any]) -> SendContext:
    """What the driver may know besides the message: stable ids, the tag, the attempt number."""
    message = d.message
    return SendContext(
        delivery_id=d.delivery_id,
        idempotency_key=message.idempotency_key or d.delivery_id,
        attempt=record.attempts + 1,
        tag=driver.reconcile_tag(message, d.delivery_id),
        tag_is_callers=isinstance(message, SmsMessage) and message.tag is not None,
        sent_after=as_float(record.fields.get(FIRST_ATTEMPT_AT)) or time.time(),
        callback_url=_callback_url(d, driver),
    )


def _callback_url(d: Delivery, driver: Driver[Any]) -> str | None:
    settings = d.settings
    secret = settings.tracking_secret.get_secret_value() if settings.tracking_secret else None
    return callback_url(settings.tracking_public_url, secret, driver.name, d.delivery_id)


def send(d: Delivery, record: DeliveryRecord, driver: Driver[Any], ctx: SendContext) -> Outcome:
    bucket = driver.limiter_bucket(d.message)
    key = limiter_key(d.provider, d.settings.egress_identity, bucket)
    gate = SendGate(d, record, ctx, key, bucket)
    try:
        outcome: SendOutcome = driver.send(d.message, ctx, gate)
    except NotNow as stop:
        return stop.outcome
    except DeliveryError as exc:
        if gate.opened:
            _attempted(d, gate, exc.status_code, exc.kind)
        # A refusal after the gate opened may hold the shared limiter key (a 429).
        held_key = key if gate.opened else None
        return settle_error(d, Failure(exc, record.attempts, driver, held_key))
    _attempted(d, gate, None, "accepted")
    metrics.enqueue_to_accept(d.provider, d.channel, time.time() - d.created_at)
    metrics.cost(d.provider, outcome.cost, outcome.currency)
    if ctx.schedule_at is not None:
        from worker.delivery.schedule import held_at_provider

        d.rt.health.record_success(d.provider)
        return held_at_provider(d, outcome, record.attempts)
    return sent(d, outcome, record.attempts, answered=True)


def _attempted(d: Delivery, gate: SendGate, status_code: int | None, kind: str) -> None:
    """The one event and the metrics of an attempt whose request left (the gate opened)."""
    duration_s = time.perf_counter() - gate.opened_at
    if kind == "accepted":
        status_code = 200  # drivers accept only 2xx answers; the class is what is counted
    metrics.provider_request(d.provider, d.channel, status_code, kind, duration_s)
    log.info(
        "delivery.attempt",
        **metrics.attempt_fields(status_code, kind, duration_s, gate.limiter_wait_s),
    )
