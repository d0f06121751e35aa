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
from dataclasses import replace
from typing import Any

import structlog

from worker.delivery.context import Delivery
from worker.delivery.outcomes import sent_result
from worker.delivery.results import Done, failed_result
from worker.models import InvalidMessage
from worker.providers import Driver, SendContext, SendOutcome
from worker.scheduling.rules import check_send_at
from worker.stores import DeliveryRecord

__all__ = ["PROVIDER_SCHEDULED", "held_at_provider", "hold_if_early", "native_context"]

log = structlog.get_logger(__name__)

PROVIDER_SCHEDULED = "provider_scheduled"
"""Ledger field: "1" when the provider holds the send until ``send_at`` (native scheduling)."""
SCHEDULED_RESULT = "scheduled_result"
"""Ledger field: the ``sent`` result a natively scheduled delivery gets at its time (JSON)."""


def hold_if_early(d: Delivery, record: DeliveryRecord, driver: Driver[Any] | None) -> Done | None:
    """Before routing: hold a message whose time has not come (``None``: go on and send).

    ``driver`` is the named provider's (``None`` for a routed email): with one that schedules
    natively and a time it expresses, the run goes on to send now with the schedule fields
    (:func:`native_context`)."""
    send_at = d.message.send_at
    if send_at is None:
        return None
    if "send_at" not in record.fields:
        # First sight in a worker: the same clock checks as at enqueue, against when the
        # delivery was enqueued (a message sent by name was never checked).
        try:
            check_send_at(send_at, record.created_at)
        except InvalidMessage as exc:
            return _invalid(d, record, exc)
        d.rt.ledger.set_fields(d.delivery_id, send_at=repr(send_at.timestamp()))
    due = send_at.timestamp()
    now = time.time()
    if record.fields.get(PROVIDER_SCHEDULED) == "1":
        return _at_provider_run(d, record, due, now)
    if now >= due:
        return None
    if native_fits(driver, send_at, now) and record.state != "scheduled":
        return None  # sent now with the schedule fields (native_context)
    return _hold(d, record, due)


def native_fits(driver: Driver[Any] | None, send_at: Any, now: float) -> bool:
    if driver is None or driver.native_schedule_min_lead_s is None:
        return False
    if send_at.timestamp() - now < driver.native_schedule_min_lead_s:
        return False
    return driver.native_schedule_fits(send_at)


def native_context(d: Delivery, ctx: SendContext, driver: Driver[Any]) -> SendContext:
    """The send context with the schedule time when this send is natively scheduled."""
    send_at = d.message.send_at
    if send_at is None or not native_fits(driver, send_at, time.time()):
        return ctx
    return replace(ctx, schedule_at=send_at)


def held_at_provider(d: Delivery, outcome: SendOutcome, previous_attempts: int) -> Done:
    """The provider accepted a natively scheduled send: ``scheduled`` until its time."""
    assert d.message.send_at is not None
    due = d.message.send_at.timestamp()
    at_time = sent_result(d, outcome, previous_attempts)
    held = at_time.model_copy(update={"status": "scheduled"})
    d.rt.ledger.hold(
        d.delivery_id,
        due,
        provider_scheduled="1",
        attempts=str(at_time.attempts),
        result=held.model_dump_json(),
        **{SCHEDULED_RESULT: at_time.model_dump_json()},
    )
    d.rt.metric(d.provider, "scheduled_at_provider")
    log.info("delivery.scheduled_at_provider", due=due)
    return Done(held)


def _at_provider_run(d: Delivery, record: DeliveryRecord, due: float, now: float) -> Done:
    """A run of a delivery the provider holds: ``sent`` once its time has come (the provider
    sends it then; a cancel had to reach the provider before), else held again."""
    stored = record.fields.get(SCHEDULED_RESULT)
    if now < due or not stored:
        d.rt.ledger.hold(d.delivery_id, due)
        return Done(d.result("scheduled", record.attempts))
    d.rt.ledger.transition(d.delivery_id, "sent", sent_at=repr(due), result=stored)
    d.rt.metric(d.provider or record.provider, "sent")
    log.info("delivery.sent", scheduled_at_provider=True)
    return Done(_parse(stored))


def _hold(d: Delivery, record: DeliveryRecord, due: float) -> Done:
    result = d.result("scheduled", record.attempts)
    if d.rt.ledger.hold(d.delivery_id, due, result=result.model_dump_json()):
        log.info("delivery.scheduled", due=due, in_s=round(due - time.time(), 3))
    return Done(result)


def _invalid(d: Delivery, record: DeliveryRecord, exc: InvalidMessage) -> Done:
    result = failed_result(d.delivery_id, d.channel, "invalid_message", str(exc))
    d.rt.ledger.transition(
        d.delivery_id, "failed", error_kind="invalid_message", result=result.model_dump_json()
    )
    log.warning("delivery.invalid_message", fields=["send_at"])
    return Done(result)


def _parse(raw: str) -> Any:
    from worker.models import DeliveryResult

    return DeliveryResult.model_validate_json(raw)
