"""Step 5a: the gate the driver passes right before the request leaves.

It records the attempt (ledger ``sending``: a worker dying from here on leaves a record to
reconcile), then takes the global limiter slot, sleeping in-process while the wait is short and
rescheduling the delivery (:class:`NotNow`) when it is not. The slot is taken last, right before
the bytes leave: the provider counts arrivals, so any work between grant and send would only add
jitter to our spacing. Waiting for the limiter is never an error (it counts a throttle).
"""

from __future__ import annotations

import time

import structlog

from worker.delivery.context import FIRST_ATTEMPT_AT, Delivery
from worker.delivery.outcomes import wait
from worker.delivery.results import Outcome
from worker.metrics import record as metrics
from worker.providers import SendContext
from worker.stores import DeliveryRecord

__all__ = ["NotNow", "SendGate"]

log = structlog.get_logger(__name__)


class NotNow(Exception):
    """Raised through the driver when the limiter wants this attempt rescheduled."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.__class__.__name__)
        self.outcome = outcome


class SendGate:
    """A :data:`~worker.providers.Gate` for one attempt; ``opened`` once the slot is taken."""

    def __init__(
        self, d: Delivery, record: DeliveryRecord, ctx: SendContext, key: str, bucket: str
    ) -> None:
        self.d = d
        self.record = record
        self.ctx = ctx
        self.key = key
        self.bucket = bucket
        self.opened = False
        self.opened_at = 0.0
        """``time.perf_counter()`` when the slot was taken (the request leaves right after)."""
        self.limiter_wait_s = 0.0

    def __call__(self) -> None:
        d, now = self.d, repr(time.time())
        first = {} if FIRST_ATTEMPT_AT in self.record.fields else {FIRST_ATTEMPT_AT: now}
        if not d.rt.ledger.transition(d.delivery_id, "sending", attempt_started_at=now, **first):
            # Final meanwhile (a cancel won the race, atomically in the ledger): nothing leaves.
            record = d.rt.ledger.get(d.delivery_id)
            if record is not None and record.final:
                from worker.delivery.record import answer_from_ledger

                raise NotNow(answer_from_ledger(d, record))
        if self.ctx.tag_is_callers and self.ctx.tag:
            d.rt.ledger.note_tag_use(
                d.provider, self.ctx.tag, d.recipients(), d.delivery_id, float(now)
            )
        waited = self._acquire()
        if not isinstance(waited, float):
            raise NotNow(waited)
        metrics.limiter_wait(d.provider, waited)
        self.limiter_wait_s = waited
        self.opened = True
        self.opened_at = time.perf_counter()

    def _acquire(self) -> float | Outcome:
        """Take a slot in the global limiter, sleeping briefly when it is nearly free."""
        d, provider = self.d, self.d.provider
        limits = d.settings.limits(provider, self.bucket)
        waited = 0.0
        wait_s = d.rt.limiter.acquire(self.key, limits)
        while wait_s > 0:
            if waited + wait_s > d.settings.limiter_max_inline_wait_s:
                d.rt.ledger.incr(d.delivery_id, "throttled")
                d.rt.metric(provider, "throttled_ms", int((waited + wait_s) * 1000))
                metrics.limiter_rescheduled(provider)
                log.info("delivery.rate_limited", wait_s=round(wait_s, 3))
                return wait(d, wait_s, "rate_limited", self.record.attempts)
            time.sleep(wait_s)
            waited += wait_s
            wait_s = d.rt.limiter.acquire(self.key, limits)
        if waited:
            d.rt.metric(provider, "throttled_ms", int(waited * 1000))
        return waited
