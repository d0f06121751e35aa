"""Step 5: send through the driver (build → gate → transmit → classify → parse).

The driver owns the wire; this step gives it the delivery's context and the gate, and hands
the answer on: accepted → ``sent``; a classified error → :func:`~worker.delivery.settle`.
"""

from __future__ import annotations

import time
from typing import Any

from worker.delivery.context import FIRST_ATTEMPT_AT, Delivery, as_float
from worker.delivery.gate import NotNow, SendGate
from worker.delivery.outcomes import sent
from worker.delivery.results import Outcome
from worker.delivery.settle import Failure, settle_error
from worker.errors import DeliveryError
from worker.models import SmsMessage
from worker.providers import Driver, SendContext, SendOutcome
from worker.stores import DeliveryRecord, limiter_key

__all__ = ["send", "send_context"]


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
    )


def send(d: Delivery, record: DeliveryRecord, driver: Driver[Any], ctx: SendContext) -> Outcome:
    bucket = driver.limiter_bucket(d.message)
    key = limiter_key(d.provider, d.settings.egress_identity, bucket)
    gate = SendGate(d, record, ctx, key, bucket)
    try:
        outcome: SendOutcome = driver.send(d.message, ctx, gate)
    except NotNow as stop:
        return stop.outcome
    except DeliveryError as exc:
        # A refusal after the gate opened may hold the shared limiter key (a 429).
        held_key = key if gate.opened else None
        return settle_error(d, Failure(exc, record.attempts, driver, held_key))
    d.rt.health.record_success(d.provider)
    return sent(d, outcome, record.attempts)
