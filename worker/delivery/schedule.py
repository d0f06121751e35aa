"""The pipeline step for ``send_at``: hold a message until its time, or answer a due run.

A message whose ``send_at`` is ahead is either

* handed to its provider at once with the provider's schedule fields, when the provider
  schedules natively (:attr:`~worker.providers.Driver.native_schedule_min_lead_s`) and its
  format expresses the time exactly: the ledger holds it as ``scheduled`` with
  ``provider_scheduled = 1`` and the provider's ids, and puts it on the schedule at its time,
  when it becomes ``sent``; it survives our own downtime, and ``cancel`` goes to the provider;
* or held in the ledger's durable schedule (``dw:scheduled``, state ``scheduled``), which the
  mover in every worker (:mod:`worker.scheduling.mover`) publishes when due. No Celery
  ``eta``/``countdown``: no worker keeps future tasks in memory, and a restart loses nothing.

Either way the Celery task ends its run (``SCHEDULED`` state, the message acknowledged).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog

from worker.delivery import writer
from worker.delivery.context import Delivery
from worker.delivery.results import Done, failed_result
from worker.delivery.writer import expire, sent_result
from worker.models import InvalidMessage
from worker.providers import Driver, SendContext, SendOutcome
from worker.scheduling.quiet import quiet_due
from worker.scheduling.rules import check_send_at
from worker.stores import DeliveryRecord

__all__ = [
    "PROVIDER_SCHEDULED",
    "at_provider_run",
    "held_at_provider",
    "hold_if_early",
    "native_context",
]

log = structlog.get_logger(__name__)

PROVIDER_SCHEDULED = "provider_scheduled"
"""Ledger field: "1" when the provider holds the send until ``send_at`` (native scheduling)."""
SCHEDULED_FOR = "scheduled_for"
"""Ledger field: when a held delivery is due (``send_at``, or the end of its quiet hours)."""
SCHEDULED_RESULT = "scheduled_result"
"""Ledger field: the ``sent`` result a natively scheduled delivery gets at its time (JSON)."""


def due_at(d: Delivery, now: float) -> float | None:
    """When this message may leave, if that is later than ``now``: its ``send_at``, moved to
    the next opening of its channel's quiet hours (``worker.scheduling.quiet``)."""
    send_at = d.message.send_at.timestamp() if d.message.send_at is not None else None
    base = max(send_at or now, now)
    due = quiet_due(d.settings.quiet_hours, d.message, base) or send_at
    return due if due is not None and due > now else None


def hold_if_early(
    d: Delivery, record: DeliveryRecord, driver: Callable[[], Driver[Any] | None]
) -> Done | None:
    """Before routing: hold a message whose time has not come (``None``: go on and send).

    ``driver()`` is the named provider's (``None`` for a routed email): with one that schedules
    natively and a time it expresses, the run goes on to send now with the schedule fields
    (:func:`native_context`)."""
    send_at = d.message.send_at
    if send_at is not None and "send_at" not in record.fields:
        # First sight in a worker: the same clock checks as at enqueue, against when the
        # delivery was enqueued (a message sent by name was never checked).
        try:
            check_send_at(send_at, record.created_at)
        except InvalidMessage as exc:
            return _invalid(d, record, exc)
        writer.send_at_seen(d, send_at.timestamp())
    now = time.time()
    due = due_at(d, now)
    if due is None:
        return None
    if due >= d.deadline():
        return expire(d, record.attempts, "before its time came (send_at or quiet hours)")
    when = datetime.fromtimestamp(due, UTC)
    if record.state != "scheduled" and native_fits(driver(), when, now):
        return None  # sent now with the schedule fields (native_context)
    return _hold(d, record, due)


def native_fits(driver: Driver[Any] | None, send_at: datetime, now: float) -> bool:
    if driver is None or driver.native_schedule_min_lead_s is None:
        return False
    if send_at.timestamp() - now < driver.native_schedule_min_lead_s:
        return False
    return driver.native_schedule_fits(send_at)


def native_context(d: Delivery, ctx: SendContext, driver: Driver[Any]) -> SendContext:
    """The send context with the schedule time when this send is natively scheduled."""
    now = time.time()
    due = due_at(d, now)
    if due is None:
        return ctx
    when = datetime.fromtimestamp(due, UTC)
    if not native_fits(driver, when, now):
        return ctx
    return replace(ctx, schedule_at=when)


def held_at_provider(d: Delivery, outcome: SendOutcome, previous_attempts: int) -> Done:
    """The provider accepted a natively scheduled send: ``scheduled`` until its time."""
    due = _scheduled_for(d)
    at_time = sent_result(d, outcome, previous_attempts)
    held = at_time.model_copy(update={"status": "scheduled"})
    writer.hold(
        d,
        due,
        provider_scheduled="1",
        **{SCHEDULED_FOR: repr(due)},
        attempts=str(at_time.attempts),
        result=held.model_dump_json(),
        **{SCHEDULED_RESULT: at_time.model_dump_json()},
    )
    writer.counter(d.provider, "scheduled_at_provider", d.rt)
    log.info("delivery.scheduled_at_provider", due=due)
    return Done(held)


def at_provider_run(d: Delivery, record: DeliveryRecord) -> Done | None:
    """A run of a delivery its provider holds (``None`` for any other): ``sent`` once its time
    has come (the provider sends it then; a cancel had to reach the provider before), else held
    again. Before the deadline check: the provider accepted it while its deadline was ahead."""
    if record.fields.get(PROVIDER_SCHEDULED) != "1":
        return None
    due, now = float(record.fields[SCHEDULED_FOR]), time.time()
    stored = record.fields.get(SCHEDULED_RESULT)
    if now < due or not stored:
        writer.hold(d, due)
        return Done(d.result("scheduled", record.attempts))
    writer.sent_at_provider_time(d, d.provider or record.provider, due, stored)
    log.info("delivery.sent", scheduled_at_provider=True)
    return Done(_parse(stored))


def _scheduled_for(d: Delivery) -> float:
    due = due_at(d, time.time())
    assert due is not None, "natively scheduled, so its time is ahead"
    return due


def _hold(d: Delivery, record: DeliveryRecord, due: float) -> Done:
    result = d.result("scheduled", record.attempts)
    fields = {SCHEDULED_FOR: repr(due), "result": result.model_dump_json()}
    if writer.hold(d, due, **fields):
        log.info("delivery.scheduled", due=due, in_s=round(due - time.time(), 3))
    return Done(result)


def _invalid(d: Delivery, record: DeliveryRecord, exc: InvalidMessage) -> Done:
    result = failed_result(d.delivery_id, d.channel, "invalid_message", str(exc))
    log.warning("delivery.invalid_message", fields=["send_at"])
    return writer.failed_unread(d, result)


def _parse(raw: str) -> Any:
    from worker.models import DeliveryResult

    return DeliveryResult.model_validate_json(raw)
