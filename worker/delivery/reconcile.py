"""Step 4: an earlier send whose outcome is unknown is settled with the provider before any resend.

A worker that died mid-send leaves the record in ``sending``; a send that timed out or whose
check failed leaves ``outcome_unknown``. The provider may still accept such a request late, so
it is asked only once the read timeout and the grace have passed since the send started
(design semantics 6). If it cannot be asked, nothing is resent: the delivery waits and asks again.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import structlog

from worker.delivery import writer
from worker.delivery.context import (
    BATCH_TAGS,
    GAVE_UP,
    OUTCOME_UNKNOWN,
    Delivery,
    as_float,
)
from worker.delivery.results import Done, Outcome
from worker.delivery.settle import Failure, settle_error
from worker.delivery.writer import expire, finish, sent, wait
from worker.errors import DeliveryError
from worker.models import DeliveryResult, ErrorInfo
from worker.providers import Driver, SendContext, SendOutcome
from worker.stores import DeliveryRecord
from worker.stores.hotpath.base import LATE_OUTCOME

__all__ = ["lookup", "settle_earlier_send", "with_batch_tags"]

log = structlog.get_logger(__name__)


def settle_earlier_send(
    d: Delivery, record: DeliveryRecord, driver: Driver[Any], ctx: SendContext
) -> Outcome | None:
    """The outcome when an earlier send decides this run; ``None``: go on and send."""
    adopted = _adopt_late_outcome(d, record)
    if adopted is not None:
        return adopted
    ctx = with_batch_tags(ctx, record)
    if d.past_deadline:
        return _ask_at_deadline(d, record, driver, ctx)
    if record.state == "sending" and driver.supports_reconcile:
        started = as_float(record.fields.get("attempt_started_at")) or 0.0
        ask_at = started + d.settings.http_deadline_s + d.settings.reconcile_grace_s
        if time.time() < ask_at:
            writer.outcome_unknown(d, ask_at=ask_at)
            return wait(
                d, ask_at - time.time(), "reconcile_grace", record.attempts, ask_after_deadline=True
            )
    unknown = record.fields.get(OUTCOME_UNKNOWN) == "1"
    if record.state != "sending" and not unknown:
        return None
    log.warning("delivery.interrupted_attempt", state=record.state)
    try:
        found = lookup(d, driver, ctx)
    except DeliveryError as exc:
        writer.outcome_unknown(d)
        return settle_error(d, Failure(exc, record.attempts))
    if found is not None:
        return sent(d, found, record.attempts)
    gave_up = record.fields.get(GAVE_UP)
    if gave_up:
        # Retries ran out while the outcome was unknown; the provider has not seen it.
        log.error("delivery.retries_exhausted", error="outcome unknown, not accepted")
        error = ErrorInfo.model_validate_json(gave_up)
        return finish(d, "failed", record.attempts, error=error)
    if unknown:
        writer.outcome_known(d)
    return None


def _adopt_late_outcome(d: Delivery, record: DeliveryRecord) -> Outcome | None:
    """An earlier run was accepted by the provider but outlived its send lock, so its final
    write was kept aside (``LATE_OUTCOME``) instead of written: it is this run's answer, and
    the message is not sent again."""
    raw = record.fields.get(LATE_OUTCOME)
    if not raw or record.final:
        return None
    try:
        seen = json.loads(raw)
        fields = {str(k): str(v) for k, v in seen["fields"].items()}
        result = DeliveryResult.model_validate_json(fields["result"])
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("delivery.late_outcome_unreadable")
        return None
    if seen.get("state") != "sent":
        return None
    log.warning("delivery.late_outcome_adopted", state="sent")
    writer.adopt_sent(d, fields)
    return Done(result)


def _ask_at_deadline(
    d: Delivery, record: DeliveryRecord, driver: Driver[Any], ctx: SendContext
) -> Outcome:
    """Past the deadline with an earlier send's outcome unknown: ``sent`` if the provider has
    it, else ``expired``, saying whether the provider could tell. Never a resend."""
    if not driver.supports_reconcile:
        return expire(d, record.attempts, "with the earlier send's outcome unknown (no lookup)")
    try:
        found = lookup(d, driver, ctx)
    except DeliveryError:
        return expire(
            d, record.attempts, "with the earlier send's outcome unknown (the lookup failed)"
        )
    if found is not None:
        return sent(d, found, record.attempts)
    return expire(d, record.attempts, "before the message was sent")


def with_batch_tags(ctx: SendContext, record: DeliveryRecord) -> SendContext:
    """``ctx`` with the tags of the batch requests that carried this delivery (its ledger
    ``batch_tags``, ``worker.delivery.batch``): an unknown outcome is looked up under each."""
    tags = tuple(record.fields.get(BATCH_TAGS, "").split())
    return dataclasses.replace(ctx, batch_tags=tags) if tags else ctx


def lookup(d: Delivery, driver: Driver[Any], ctx: SendContext) -> SendOutcome | None:
    """The earlier send if the provider accepted it, ``None`` if it says it did not.

    Raises the :class:`DeliveryError` when the provider could not be asked: the outcome is
    still unknown, and a resend could duplicate the send.
    """
    if not driver.supports_reconcile or _tag_is_ambiguous(d, ctx):
        return None
    try:
        found = driver.reconcile(d.message, ctx)
    except DeliveryError as exc:
        log.warning("delivery.reconcile_failed", kind=exc.kind, error=exc.message)
        raise
    # The provider answered: it is up. This also reports the breaker's half-open probe
    # when the attempt holding it ends here; unreported, its lease kept every other
    # delivery to this provider waiting (probe_timeout_s).
    d.rt.health.record_success(d.provider)
    log.info("delivery.reconciled", found=found is not None)
    return found


def _tag_is_ambiguous(d: Delivery, ctx: SendContext) -> bool:
    """A tag the caller chose may be on another of our deliveries to the same number in the
    window where its send could show up as ours (docs/providers/smspartner.md §1.2.10 lists no
    per-send text or id; docs/providers/smspartner.md §1.5 wants a unique tag). Then the lookup
    proves nothing: resend, as for a provider without a lookup (at most one extra copy), rather than
    report ``sent`` for a message that may not have been."""
    if not (ctx.tag_is_callers and ctx.tag and ctx.sent_after is not None):
        return False
    settings = d.settings
    since = ctx.sent_after - settings.http_read_timeout_s - settings.reconcile_grace_s - 5.0
    shared = d.rt.ledger.tag_used_by_others(
        d.provider, ctx.tag, d.recipients(), d.delivery_id, since
    )
    if shared:
        log.warning("delivery.reconcile_ambiguous", reason="tag shared in the window")
    return shared
