"""Step 6: settle an error by the taxonomy's own data, not by an ordered ``isinstance`` chain.

Every :class:`~worker.errors.DeliveryError` declares its ``policy`` (what happens next) and, by
``provider_fault`` / ``provider_up`` (:meth:`~worker.errors.DeliveryError.breaker_signal`),
what the circuit breaker hears. :func:`settle_error` feeds the breaker, then runs the one
handler registered for the policy. Budgets stay apart: only ``retry``, ``reconcile`` and
``fail`` count an error attempt; ``throttle`` counts a throttle; ``defer`` and ``pause`` neither.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from worker.delivery import writer
from worker.delivery.context import NOT_BEFORE, Delivery
from worker.delivery.results import Done, Outcome, backoff_s
from worker.delivery.routing import candidates
from worker.delivery.suppress import from_refusal
from worker.delivery.writer import expire, finish, park, wait
from worker.errors import DeferredError, DeliveryError, Policy
from worker.metrics import record as metrics
from worker.models import ErrorInfo
from worker.providers import Driver

__all__ = ["POLICY_HANDLERS", "Failure", "settle_error"]

log = structlog.get_logger(__name__)

_WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Failure:
    """An error that ended this attempt, and where it happened."""

    exc: DeliveryError
    attempts: int
    """Error attempts counted before this one."""
    driver: Driver[Any] | None = None
    """The driver whose send raised it (``None``: raised before a send, or by a lookup)."""
    held_key: str | None = None
    """The limiter key, when the request had passed the gate (a 429 then holds it back)."""

    def log_fields(self) -> dict[str, Any]:
        return {k: v for k, v in self.exc.context().items() if k != "provider"}


def settle_error(d: Delivery, failure: Failure) -> Outcome:
    _feed_breaker(d, failure.exc)
    return POLICY_HANDLERS[failure.exc.policy](d, failure)


def _feed_breaker(d: Delivery, exc: DeliveryError) -> None:
    signal = exc.breaker_signal()
    if signal == "success":
        # The provider answered and is up (a refusal of this message, a recipient deferred);
        # a success also ends a half-open probe held by this attempt.
        d.rt.health.record_success(d.provider)
    elif signal == "failure":
        # Provider-health failures (5xx, 503, timeouts, resets) feed the breaker.
        state = d.rt.health.record_failure(d.provider)
        if state.state == "open":
            log.warning("breaker.open", failures=state.failures, retry_in_s=state.retry_in_s)


def _retry(d: Delivery, failure: Failure) -> Outcome:
    attempts = writer.count_attempt(d)
    return _backoff_or_fail(d, failure, attempts)


def _backoff_or_fail(d: Delivery, failure: Failure, attempts: int) -> Outcome:
    exc = failure.exc
    if attempts > d.settings.max_retries:
        log.error("delivery.retries_exhausted", error=exc.message, **failure.log_fields())
        return finish(d, "failed", attempts, error=_info(exc))
    delay = backoff_s(
        attempts, base_s=d.settings.retry_backoff_base_s, cap_s=d.settings.retry_backoff_max_s
    )
    if exc.retry_after_s is not None:
        delay = max(delay, exc.retry_after_s)
    log.warning(
        "delivery.retry_scheduled",
        kind=exc.kind,
        delay_s=round(delay, 3),
        error=exc.message,
        **failure.log_fields(),
    )
    return wait(d, delay, exc.kind, attempts)


def _reconcile(d: Delivery, failure: Failure) -> Outcome:
    """The provider may accept this request after we gave up (late acceptance): asked now, it
    shows nothing yet and a resend would duplicate the message. Where the driver can look the
    send up, ask after the grace, before anything is resent; otherwise retry as usual."""
    attempts = writer.count_attempt(d)
    if failure.driver is None or not failure.driver.supports_reconcile:
        return _backoff_or_fail(d, failure, attempts)
    grace_s = d.settings.reconcile_grace_s
    gave_up = None
    if attempts > d.settings.max_retries:
        gave_up = _info(failure.exc).model_dump_json()
    writer.outcome_unknown(d, ask_at=time.time() + grace_s, gave_up=gave_up)
    log.warning("delivery.outcome_unknown", ask_in_s=grace_s)
    return wait(d, grace_s, "reconcile_grace", attempts, ask_after_deadline=True)


def _throttle(d: Delivery, failure: Failure) -> Outcome:
    delay = failure.exc.retry_after_s or 1.0
    if failure.held_key is not None:
        # Every worker sharing this budget holds back, not just this one.
        d.rt.limiter.hold_for(failure.held_key, delay)
        metrics.limiter_hold(d.provider, delay)
    writer.count_throttle(d)
    writer.counter(d.provider, "throttled_by_provider", d.rt)
    log.info("delivery.throttled", **{**failure.log_fields(), "retry_after_s": delay})
    return wait(d, delay, "throttled", failure.attempts)


def _defer(d: Delivery, failure: Failure) -> Outcome:
    """Only this message waits for ``not_before`` (a legal sending window,
    docs/providers/smspartner.md §1.3 codes 22/23).

    Not a throttle: the shared limiter is not held, so other messages keep flowing; no error
    retry is consumed.
    """
    exc = failure.exc
    assert isinstance(exc, DeferredError), "the defer policy needs a not_before"
    if exc.not_before >= d.deadline():
        log.warning("delivery.deferred", **failure.log_fields())
        return expire(d, failure.attempts, "before the next allowed sending time")
    writer.counter(d.provider, "deferred", d.rt)
    log.info("delivery.deferred", **failure.log_fields())
    # Held on the ledger's durable schedule until the slot (worker.scheduling), not by Celery
    # countdowns capped below the visibility timeout that would run it every few minutes
    # until then; the schedule mover publishes it when due.
    result = d.result("scheduled", failure.attempts)
    writer.hold(
        d,
        exc.not_before,
        waiting_reason="deferred",
        result=result.model_dump_json(),
        **{NOT_BEFORE: repr(exc.not_before), "scheduled_for": repr(exc.not_before)},
    )
    return Done(result)


def _pause(d: Delivery, failure: Failure) -> Outcome:
    """Every message to this provider would fail the same way: pause it for every worker."""
    provider, exc = d.provider, failure.exc
    info = d.rt.health.pause(provider, exc.message, _WORKER_NAME)
    log.error(
        "provider.paused",
        reason=info.reason,
        paused_by=info.by,
        action=f"top up, then run: delivery-worker resume {provider}",
        **failure.log_fields(),
    )
    writer.counter(provider, "payment_failures", d.rt)
    if d.routed and len(candidates(d)) > 1:
        log.warning("delivery.failover", away_from=provider)
        return wait(d, 0.0, "failover", failure.attempts)
    return park(d, provider, failure.attempts, exc.message)


def _fail(d: Delivery, failure: Failure) -> Outcome:
    exc = failure.exc
    emit = log.error if exc.log_level == "error" else log.warning
    emit("delivery.failed", kind=exc.kind, error=exc.message, **failure.log_fields())
    from_refusal(d, exc)
    attempts = writer.count_attempt(d)
    return finish(d, "failed", attempts, error=_info(exc))


POLICY_HANDLERS: Mapping[Policy, Callable[[Delivery, Failure], Outcome]] = {
    Policy.RETRY: _retry,
    Policy.RECONCILE: _reconcile,
    Policy.THROTTLE: _throttle,
    Policy.DEFER: _defer,
    Policy.PAUSE: _pause,
    Policy.FAIL: _fail,
}


def _info(exc: DeliveryError) -> ErrorInfo:
    return ErrorInfo.model_validate(exc.to_dict())
