"""Step 5: send a chunk of one (build → gate → transmit → classify → parse).

The driver owns the wire (build, transmit, parse); this step passes the gate between build and
transmit itself, and hands the answer on: accepted → ``sent``; a classified error →
:func:`~worker.delivery.settle`.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from worker.delivery import writer
from worker.delivery.context import FIRST_ATTEMPT_AT, Delivery, as_float
from worker.delivery.gate import Gate, Later, NotNow
from worker.delivery.results import Outcome
from worker.delivery.settle import Failure, settle_error
from worker.delivery.writer import Sending, sent, wait
from worker.errors import DeliveryError
from worker.metrics import record as metrics
from worker.models import SmsMessage
from worker.providers import Driver, SendContext, SendOutcome
from worker.stores import DeliveryRecord
from worker.tracking.callbacks import callback_url

__all__ = ["accepted", "later", "send", "send_context"]

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
    """A chunk of one: build, pass the gate, transmit, classify; then the outcome."""
    gate = Gate([Sending(d, record)], driver, ctx=ctx)
    try:
        request = driver.build(d.message, ctx)
        gate()
        outcome: SendOutcome = driver.parse_response(driver.transmit(request), d.message, ctx)
    except NotNow as stop:
        return stop.outcome
    except Later as stop:
        return later(d, record, stop.wait_s)
    except DeliveryError as exc:
        _attempted(d, gate, exc.status_code, exc.kind)
        # A refusal after the gate opened may hold the shared limiter key (a 429).
        held_key = gate.key if gate.opened else None
        return settle_error(d, Failure(exc, record.attempts, driver, held_key))
    _attempted(d, gate, None, "accepted")
    accepted(d, outcome)
    if ctx.schedule_at is not None:
        from worker.delivery.schedule import held_at_provider

        d.rt.health.record_success(d.provider)
        return held_at_provider(d, outcome, record.attempts)
    return sent(d, outcome, record.attempts, answered=True)


def accepted(d: Delivery, outcome: SendOutcome) -> None:
    """An accepted send in the metrics: enqueue-to-accept time and cost."""
    metrics.enqueue_to_accept(d.provider, d.channel, time.time() - d.created_at)
    metrics.cost(d.provider, outcome.cost, outcome.currency)


def later(d: Delivery, record: DeliveryRecord, wait_s: float) -> Outcome:
    """The limiter wants this delivery's request rescheduled: a throttle, not an error."""
    writer.count_throttle(d)
    return wait(d, wait_s, "rate_limited", record.attempts)


def _attempted(d: Delivery, gate: Gate, status_code: int | None, kind: str) -> None:
    """The one event and the metrics of an attempt whose request left (the gate opened)."""
    if not gate.opened:
        return
    duration_s = gate.attempted(status_code, kind)
    if kind == "accepted":
        status_code = 200
    log.info(
        "delivery.attempt",
        **metrics.attempt_fields(status_code, kind, duration_s, gate.limiter_wait_s),
    )
