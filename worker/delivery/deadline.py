"""Step 2: is it time? Expire past the deadline; wait again before ``not_before``."""

from __future__ import annotations

import time

from worker.delivery.context import NOT_BEFORE, OUTCOME_UNKNOWN, Delivery, as_float
from worker.delivery.results import Done, Outcome
from worker.delivery.writer import expire, wait
from worker.stores import DeliveryRecord

__all__ = ["check_time"]


def check_time(d: Delivery, record: DeliveryRecord) -> Outcome | None:
    """The outcome when this run must not call a provider; ``None`` to go on."""
    now = time.time()
    unknown = record.state == "sending" or record.fields.get(OUTCOME_UNKNOWN) == "1"
    if now >= d.deadline() and not unknown:
        return expire(d, record.attempts, "before the message was sent")
    not_before = as_float(record.fields.get(NOT_BEFORE))
    if not_before is not None and now < not_before:
        if record.state == "scheduled":
            # On the durable schedule until then (a deferred message): an early copy leaves
            # it there (worker.scheduling).
            return Done(d.result("scheduled", record.attempts))
        # Deferred, or within the grace after an unknown outcome: wait again, no provider call.
        reason = record.fields.get("waiting_reason") or "deferred"
        return wait(d, not_before - now, reason, record.attempts, ask_after_deadline=unknown)
    if now >= d.deadline():
        # An earlier send may have been accepted: ask the provider before calling the message
        # expired (worker.delivery.reconcile); nothing is sent past the deadline.
        d.past_deadline = True
    return None
