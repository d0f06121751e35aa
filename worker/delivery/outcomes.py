"""The ends of an attempt: each writes the ledger, the result and the metric for one outcome.

``sent``, ``finish`` (failed or expired), ``expire``, ``park`` and ``wait`` (reschedule, never
past the deadline). Every other step ends through one of these.
"""

from __future__ import annotations

import time

import structlog

from worker.delivery.context import Delivery
from worker.delivery.results import Done, Retry, mask_ids
from worker.metrics import record as metrics
from worker.models import DeliveryResult, ErrorInfo
from worker.providers import SendOutcome
from worker.redaction import scrub
from worker.stores.hotpath import Closing
from worker.tracking.service import sent_tracking, track_sent

__all__ = ["expire", "finish", "park", "sent", "sent_result", "wait"]

log = structlog.get_logger(__name__)


def sent(
    d: Delivery, outcome: SendOutcome, previous_attempts: int, *, answered: bool = False
) -> Done:
    """``answered``: the provider answered this run's send (its breaker hears a success)."""
    result = sent_result(d, outcome, previous_attempts)
    if outcome.warnings:
        unsent = [w.partition(":")[0] for w in outcome.warnings]
        log.warning("delivery.fields_not_sent", fields=unsent)
    fields = {
        "sent_at": repr(time.time()),
        "attempts": str(result.attempts),
        "result": result.model_dump_json(),
    }
    try:
        tracking = sent_tracking(d.rt, d.delivery_id, d.provider, outcome.provider_message_ids)
    except Exception as exc:  # tracking never changes a send's outcome
        log.warning("tracking.register_failed", provider=d.provider, error=type(exc).__name__)
        tracking = None
    closing = Closing("sent", fields, d.provider, "sent", answered, tracking)
    if d.defer_closing:
        # Written by the run's last step with the unlock (worker.delivery.record.guarded).
        d.closing = closing
    else:
        if answered:
            d.rt.health.record_success(d.provider)
        d.rt.ledger.transition(d.delivery_id, "sent", **fields)
        d.rt.metric(d.provider, "sent")
        track_sent(d.rt, d.delivery_id, d.provider, outcome.provider_message_ids)
    metrics.finished(d.provider, d.channel, "sent", "none")
    log.info("delivery.sent", recipients=len(outcome.provider_message_ids), cost=outcome.cost)
    return Done(result)


def sent_result(d: Delivery, outcome: SendOutcome, previous_attempts: int) -> DeliveryResult:
    """The ``sent`` result of an accepted send (provider ids masked, reasons scrubbed)."""
    return DeliveryResult(
        status="sent",
        delivery_id=d.delivery_id,
        channel=d.channel,
        provider=d.provider,
        provider_message_ids=mask_ids(outcome.provider_message_ids),
        rejected_recipients={
            k: scrub(v)[:200] for k, v in mask_ids(outcome.rejected_recipients).items()
        },
        suppressed_recipients=dict(d.suppressed),
        attempts=previous_attempts + 1,
        cost=outcome.cost,
        currency=outcome.currency,
        warnings=list(outcome.warnings),
    )


def finish(d: Delivery, state: str, attempts: int, *, error: ErrorInfo) -> Done:
    """A final state other than ``sent`` (``failed``, ``expired``), with its error."""
    result = d.result(state, attempts, error=error)
    d.rt.ledger.transition(
        d.delivery_id,
        state,
        attempts=str(attempts),
        error_kind=error.kind,
        result=result.model_dump_json(),
    )
    if d.provider:
        d.rt.metric(d.provider, f"{state}:{error.kind}")
    metrics.finished(d.provider, d.channel, state, error.kind)
    return Done(result)


def expire(d: Delivery, attempts: int, when: str) -> Done:
    log.warning("delivery.expired", when=when)
    error = ErrorInfo(kind="expired", message=f"deadline passed {when}")
    return finish(d, "expired", attempts, error=error)


def park(d: Delivery, provider: str, attempts: int, reason: str) -> Done:
    """Hold the message until the provider is resumed; neither failed nor retried."""
    d.rt.parking.park(provider, d.delivery_id, d.task_name, d.raw)
    result = d.result("parked", attempts, provider=provider)
    d.rt.ledger.transition(
        d.delivery_id, "parked", parked_reason=reason[:200], result=result.model_dump_json()
    )
    d.rt.metric(provider, "parked")
    metrics.parked(provider, d.channel)
    log.warning("delivery.parked", provider=provider)
    return Done(result)


def wait(
    d: Delivery, delay_s: float, reason: str, attempts: int, *, ask_after_deadline: bool = False
) -> Done | Retry:
    """Reschedule this delivery after ``delay_s``; expire it if its deadline has passed."""
    remaining = d.deadline() - time.time()
    if ask_after_deadline:
        # An earlier send's outcome is unknown: the run after the grace asks the provider,
        # past the deadline too, and then ends sent or expired, never resent
        # (worker.delivery.deadline). Still never beyond the broker's visibility timeout.
        delay_s = min(delay_s, d.settings.retry_backoff_max_s)
    elif remaining <= 0:
        return expire(d, attempts, f"while {reason.replace('_', ' ')}")
    else:
        # Never past the deadline, nor beyond the broker's visibility timeout.
        delay_s = min(delay_s, d.settings.retry_backoff_max_s, remaining)
    d.rt.ledger.transition(d.delivery_id, "waiting", waiting_reason=reason)
    return Retry(max(delay_s, 0.0), reason, d.result("waiting", attempts))
