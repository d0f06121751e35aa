"""Step 5a: the gate a chunk's request passes right before it leaves (1 to N deliveries).

It records the attempt of every delivery of the chunk (ledger ``sending``, through
``worker.delivery.writer``: a worker dying from here on leaves records to reconcile, by the
request's tag for a batch), then takes **one** global limiter slot for the request, sleeping
in-process while the wait is short and raising :class:`Later` when it is not. The slot is taken
last, right before the bytes leave: the provider counts arrivals, so any work between grant and
send would only add jitter to our spacing. Waiting for the limiter is never an error (it counts a
throttle).

The flow calls the gate itself between the driver's ``build`` and ``transmit``: the driver never
calls back into the flow. A single send is a chunk of one; ``worker.delivery.batch`` passes
chunks of many.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import structlog

from worker.delivery import writer
from worker.delivery.record import answer_from_ledger
from worker.delivery.results import Outcome
from worker.delivery.writer import Sending
from worker.metrics import record as metrics
from worker.providers import Driver, SendContext
from worker.stores import limiter_key

__all__ = ["Gate", "Later", "NotNow"]

log = structlog.get_logger(__name__)


class NotNow(Exception):
    """A chunk of one ends before its request leaves (final meanwhile: a cancel won)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.__class__.__name__)
        self.outcome = outcome


class Later(Exception):
    """The limiter wants the whole request rescheduled (no delivery of it was sent)."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"{wait_s:.3f}")
        self.wait_s = wait_s


class Gate:
    """The gate of one request of ``chunk``; ``opened`` once the slot is taken.

    ``tag``: the batch request's tag (each delivery's ``batch_tags`` gain it); ``ctx``: the send
    context of a chunk of one (its caller's own tag is noted for reconciliation)."""

    def __init__(
        self,
        chunk: Sequence[Sending],
        driver: Driver[Any],
        *,
        tag: str | None = None,
        ctx: SendContext | None = None,
    ) -> None:
        self.chunk = chunk
        self.tag = tag
        self.ctx = ctx
        first = chunk[0].d
        self.d = first
        self.bucket = driver.limiter_bucket(first.message)
        self.key = limiter_key(
            first.provider,
            first.settings.egress_identity,
            self.bucket,
            prefix=first.settings.redis_namespace,
        )
        self.opened = False
        self.opened_at = 0.0
        """``time.perf_counter()`` when the slot was taken (the request leaves right after)."""
        self.limiter_wait_s = 0.0

    def __call__(self) -> None:
        at = time.time()
        changed = writer.mark_sending(self.chunk, repr(at))
        if len(self.chunk) == 1 and not changed[0]:
            # Final meanwhile (a cancel won the race, atomically in the ledger): nothing leaves.
            d = self.d
            record = d.rt.ledger.get(d.delivery_id)
            if record is not None and record.final:
                raise NotNow(answer_from_ledger(d, record))
        if self.tag is not None:
            log.info("delivery.batch_attempt", tag=self.tag)
        ctx = self.ctx
        if ctx is not None and ctx.tag_is_callers and ctx.tag:
            writer.note_tag_use(self.d, ctx.tag, at)
        waited = self._acquire()
        metrics.limiter_wait(self.d.provider, waited)
        self.limiter_wait_s = waited
        self.opened = True
        self.opened_at = time.perf_counter()

    def _acquire(self) -> float:
        """Take a slot in the global limiter, sleeping briefly when it is nearly free."""
        d, provider = self.d, self.d.provider
        limits = d.settings.limits(provider, self.bucket)
        waited = 0.0
        wait_s = d.rt.limiter.acquire(self.key, limits)
        while wait_s > 0:
            if waited + wait_s > d.settings.limiter_max_inline_wait_s:
                writer.counter(provider, "throttled_ms", d.rt, int((waited + wait_s) * 1000))
                metrics.limiter_rescheduled(provider)
                log.info("delivery.rate_limited", wait_s=round(wait_s, 3))
                raise Later(wait_s)
            time.sleep(wait_s)
            waited += wait_s
            wait_s = d.rt.limiter.acquire(self.key, limits)
        if waited:
            writer.counter(provider, "throttled_ms", d.rt, int(waited * 1000))
        return waited

    def attempted(self, status_code: int | None, kind: str) -> float:
        """The request in the metrics, once (``provider_requests``); nothing when it never left
        (the gate did not open). Its duration in seconds."""
        if not self.opened:
            return 0.0
        d = self.d
        duration_s = time.perf_counter() - self.opened_at
        if kind == "accepted":
            status_code = 200  # drivers accept only 2xx answers; the class is what is counted
        metrics.provider_request(d.provider, d.channel, status_code, kind, duration_s)
        return duration_s
