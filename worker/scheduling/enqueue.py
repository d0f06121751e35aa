"""Hold a scheduled message at enqueue, when no worker needs to see it before its time.

A message whose ``send_at`` is ahead and that its provider will not schedule natively (no
native scheduling, a time its format cannot express, or too near: see
:func:`worker.delivery.pipeline.native_fits`) goes straight onto the ledger's schedule: the
producer's ``enqueue`` records it as ``scheduled`` and publishes nothing; the schedule mover
publishes its task when due. A worker then runs it once, at its time (not once to hold it and
once to send it). Messages that will be scheduled at the provider are published at once: a
worker hands them over.

A campaign (``worker.producer.send_many``) holds per chunk: :func:`campaign_due` is each
message's time (never at the provider: a natively scheduled message would leave its chunk and
cost one request alone), ``worker.campaign.plan_chunks`` cuts chunks where it changes, and
:func:`hold_chunk` puts a chunk's records on the schedule at that one time. Each record keeps
the chunk size (``worker.campaign.CHUNK_FIELD``), so the mover publishes the messages due
together as chunk tasks again (one provider request per chunk), and each can still be
cancelled on its own until then.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from celery import Celery

from worker.models import DeliveryResult, Message
from worker.providers import DRIVERS
from worker.scheduling.quiet import quiet_due
from worker.scheduling.results import store_task_state, store_task_states
from worker.stores.ledger import Schedule

__all__ = ["SCHEDULED_STATE", "campaign_due", "hold_at_enqueue", "hold_chunk"]

SCHEDULED_STATE = "SCHEDULED"
"""The Celery state of a delivery held until its ``send_at`` (``tasks.SCHEDULED``)."""


def hold_at_enqueue(
    app: Celery, ledger: Schedule, message: Message, delivery_id: str, *, quiet_hours: str = ""
) -> bool:
    """Put a just-created delivery on the schedule; ``False``: publish it as usual.

    Its time is its ``send_at``, moved to the next opening of its channel's quiet hours
    (``worker.scheduling.quiet``); a worker makes the same decision for messages sent by name.
    """
    now = time.time()
    send_at = message.send_at.timestamp() if message.send_at is not None else None
    due = quiet_due(quiet_hours, message, max(send_at or now, now)) or send_at
    if due is None or due <= now or _native(message, due, now):
        return False
    deadline = message.deadline.timestamp() if message.deadline is not None else None
    if deadline is not None and due >= deadline:
        return False  # a worker expires it
    result = DeliveryResult(
        status="scheduled",
        delivery_id=delivery_id,
        channel=message.channel,
        provider=message.provider,
    )
    fields = {"result": result.model_dump_json(), "scheduled_for": repr(due)}
    if not ledger.hold(delivery_id, due, **fields):
        return False
    store_task_state(app, delivery_id, result, SCHEDULED_STATE)
    return True


def _native(message: Message, due: float, now: float) -> bool:
    """Whether a worker may hand it to its provider (the same test as the worker's)."""
    driver = DRIVERS.get(message.provider or "")
    if driver is None or driver.native_schedule_min_lead_s is None:
        return False
    when = datetime.fromtimestamp(due, UTC)
    return due - now >= driver.native_schedule_min_lead_s and driver.native_schedule_fits(when)


def campaign_due(message: Message, now: float, *, quiet_hours: str = "") -> float | None:
    """When a campaign message is held until: its ``send_at``, moved to the next opening of
    its channel's quiet hours; ``None`` when that is not ahead (send with its chunk now) or not
    before its deadline (a worker expires it)."""
    send_at = message.send_at.timestamp() if message.send_at is not None else None
    if send_at is None and not quiet_hours:
        return None
    due = quiet_due(quiet_hours, message, max(send_at or now, now)) or send_at
    if due is None or due <= now:
        return None
    deadline = message.deadline.timestamp() if message.deadline is not None else None
    if deadline is not None and due >= deadline:
        return None
    return due


def hold_chunk(
    app: Celery,
    ledger: Schedule,
    channel: str,
    delivery_ids: list[str],
    provider: str | None,
    due: float,
) -> list[str]:
    """Put a chunk's just-created deliveries (one channel, one provider) on the schedule at
    ``due`` (one time for all); answers the ids held (a record gone final meanwhile, e.g.
    cancelled, is not)."""
    results = [
        DeliveryResult(
            status="scheduled", delivery_id=delivery_id, channel=channel, provider=provider
        )
        for delivery_id in delivery_ids
    ]
    holds = [
        (r.delivery_id, due, {"result": r.model_dump_json(), "scheduled_for": repr(due)})
        for r in results
    ]
    answers = ledger.hold_many(holds)  # one round trip for the chunk
    held = [(r.delivery_id, r) for r, ok in zip(results, answers, strict=True) if ok]
    store_task_states(app, held, SCHEDULED_STATE)
    return [delivery_id for delivery_id, _ in held]
