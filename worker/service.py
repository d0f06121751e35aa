"""The delivery service: one attempt at one message, and what should happen next.

Tasks call :func:`process` and map its answer to Celery: :class:`Done` returns the result,
:class:`Retry` reschedules the same task (same id, same message) after ``delay_s``.

Budgets are kept apart (design semantics 3): waiting for a limiter, a breaker or a provider's
``Retry-After`` increments ``throttled`` and never the error ``attempts``; only errors count
against ``max_retries``. Every message has a deadline after which it ends as ``expired``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog
from tenacity import RetryCallState, wait_random_exponential

from worker.drivers import SendContext, SendOutcome
from worker.errors import (
    AccountBlockedError,
    ConfigurationError,
    DeliveryError,
    ThrottledError,
    TransientError,
    UnknownOutcomeError,
)
from worker.models import DeliveryResult, ErrorInfo, InvalidMessage, Message, parse_message
from worker.redaction import mask_email, mask_phone
from worker.runtime import Runtime

__all__ = ["Done", "Retry", "backoff_s", "process"]

log = structlog.get_logger("worker.service")


@dataclass(frozen=True)
class Done:
    result: DeliveryResult


@dataclass(frozen=True)
class Retry:
    delay_s: float
    reason: str
    result: DeliveryResult
    """What the delivery looks like while it waits (state ``waiting`` or ``parked``)."""


def backoff_s(error_attempt: int, *, base_s: float, cap_s: float) -> float:
    """Exponential backoff with full jitter (tenacity's policy), for the n-th error."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, error_attempt)
    return float(wait_random_exponential(multiplier=base_s, max=cap_s)(state))


def process(
    channel: str,
    raw: Any,
    *,
    delivery_id: str,
    task_name: str,
    rt: Runtime,
) -> Done | Retry:
    structlog.contextvars.bind_contextvars(delivery_id=delivery_id, channel=channel)
    try:
        message = parse_message(channel, raw)
    except InvalidMessage as exc:
        # Defence in depth: producers validate before enqueue, but a message sent by name
        # from elsewhere may not have been.
        log.warning("delivery.invalid_message", errors=exc.errors)
        return Done(_failed(delivery_id, channel, None, 0, "invalid_message", str(exc)))
    return _Attempt(rt, message, delivery_id, task_name).run()


class _Attempt:
    def __init__(self, rt: Runtime, message: Message, delivery_id: str, task_name: str) -> None:
        self.rt = rt
        self.settings = rt.settings
        self.message = message
        self.delivery_id = delivery_id
        self.task_name = task_name
        self.provider = message.provider
        self.channel = message.channel
        structlog.contextvars.bind_contextvars(provider=self.provider)

    # -- the algorithm -----------------------------------------------------------------------------

    def run(self) -> Done | Retry:
        ledger = self.rt.ledger
        ledger.create(
            self.delivery_id,
            channel=self.channel,
            provider=self.provider,
            extra={"task_name": self.task_name},
        )
        record = ledger.get(self.delivery_id)
        assert record is not None
        if record.final:
            # Redelivered after it already finished (duplicate copy, requeue after a crash):
            # the ledger answers, the provider is not called again.
            log.info("delivery.already_final", state=record.state)
            stored = record.result
            if stored is not None:
                return Done(DeliveryResult.model_validate(stored))
            return Done(self._result(record.state, record.attempts))

        if self._expired(record.created_at):
            return self._finish(
                "expired",
                record.attempts,
                error=ErrorInfo(
                    kind="expired", code=None, message="deadline passed before the message was sent"
                ),
            )

        interrupted = record.state == "sending"
        attempt_no = record.attempts + 1
        structlog.contextvars.bind_contextvars(attempt=attempt_no)
        ctx = SendContext(
            delivery_id=self.delivery_id,
            idempotency_key=self.message.idempotency_key or self.delivery_id,
            attempt=attempt_no,
            tag=self._provider_tag(),
        )
        try:
            driver = self.rt.driver(self.provider)
        except DeliveryError as exc:
            return self._on_error(exc, record.attempts, None, ctx)
        if interrupted:
            # A previous attempt died mid-send: its outcome is unknown. Ask the provider first
            # where it can tell (design semantics 6).
            log.warning("delivery.interrupted_attempt")
            found = self._reconcile(driver, ctx)
            if found is not None:
                return self._sent(found, record.attempts)

        ledger.transition(self.delivery_id, "sending", attempt_started_at=repr(time.time()))
        log.info("delivery.attempt")
        try:
            outcome: SendOutcome = driver.send(self.message, ctx)
        except DeliveryError as exc:
            return self._on_error(exc, record.attempts, driver, ctx)
        return self._sent(outcome, record.attempts)

    # -- outcomes ------------------------------------------------------------------------------

    def _on_error(
        self, exc: DeliveryError, attempts: int, driver: Any, ctx: SendContext
    ) -> Done | Retry:
        fields = exc.context()
        if isinstance(exc, ThrottledError):
            self.rt.ledger.incr(self.delivery_id, "throttled")
            delay = exc.retry_after_s or 1.0
            log.info("delivery.throttled", **{**_without_provider(fields), "retry_after_s": delay})
            return self._wait(delay, "throttled", attempts)
        if isinstance(exc, AccountBlockedError):
            # Out of credit: the full pause/park semantics live in flow control; until the
            # provider is resumed, this message is parked rather than failed.
            log.error("provider.out_of_credit", **_without_provider(fields))
            return self._finish("failed", attempts + 1, error=_info(exc))
        if isinstance(exc, TransientError):
            attempts = self.rt.ledger.incr(self.delivery_id, "attempts")
            if isinstance(exc, UnknownOutcomeError):
                found = self._reconcile(driver, ctx)
                if found is not None:
                    return self._sent(found, attempts - 1)
            if attempts > self.settings.max_retries:
                log.error(
                    "delivery.retries_exhausted", error=exc.message, **_without_provider(fields)
                )
                return self._finish("failed", attempts, error=_info(exc))
            delay = backoff_s(
                attempts,
                base_s=self.settings.retry_backoff_base_s,
                cap_s=self.settings.retry_backoff_max_s,
            )
            if exc.retry_after_s is not None:
                delay = max(delay, exc.retry_after_s)
            log.warning(
                "delivery.retry_scheduled",
                kind=exc.kind,
                delay_s=round(delay, 3),
                error=exc.message,
                **_without_provider(fields),
            )
            return self._wait(delay, exc.kind, attempts)
        level = log.error if isinstance(exc, ConfigurationError) else log.warning
        level("delivery.failed", kind=exc.kind, error=exc.message, **_without_provider(fields))
        attempts = self.rt.ledger.incr(self.delivery_id, "attempts")
        return self._finish("failed", attempts, error=_info(exc))

    def _reconcile(self, driver: Any, ctx: SendContext) -> SendOutcome | None:
        if not driver.supports_reconcile:
            return None
        try:
            found: SendOutcome | None = driver.reconcile(self.message, ctx)
        except DeliveryError as exc:
            log.warning("delivery.reconcile_failed", kind=exc.kind, error=exc.message)
            return None
        log.info("delivery.reconciled", found=found is not None)
        return found

    def _sent(self, outcome: SendOutcome, previous_attempts: int) -> Done:
        result = DeliveryResult(
            status="sent",
            delivery_id=self.delivery_id,
            channel=self.channel,
            provider=self.provider,
            provider_message_ids=mask_ids(outcome.provider_message_ids),
            attempts=previous_attempts + 1,
            cost=outcome.cost,
            currency=outcome.currency,
        )
        self.rt.ledger.transition(
            self.delivery_id,
            "sent",
            sent_at=repr(time.time()),
            attempts=str(result.attempts),
            result=result.model_dump_json(),
        )
        log.info("delivery.sent", recipients=len(outcome.provider_message_ids), cost=outcome.cost)
        return Done(result)

    def _finish(self, state: str, attempts: int, *, error: ErrorInfo) -> Done:
        result = self._result(state, attempts, error=error)
        self.rt.ledger.transition(
            self.delivery_id,
            state,
            attempts=str(attempts),
            error_kind=error.kind,
            result=result.model_dump_json(),
        )
        if state == "expired":
            log.warning("delivery.expired")
        return Done(result)

    def _wait(self, delay_s: float, reason: str, attempts: int) -> Done | Retry:
        remaining = self._deadline() - time.time()
        if remaining <= 0:
            return self._finish(
                "expired",
                attempts,
                error=ErrorInfo(
                    kind="expired", code=None, message=f"deadline passed while {reason}"
                ),
            )
        # Never schedule past the deadline, nor beyond the broker's visibility timeout.
        delay_s = min(delay_s, self.settings.retry_backoff_max_s, max(remaining, 0.0))
        self.rt.ledger.transition(self.delivery_id, "waiting", waiting_reason=reason)
        return Retry(delay_s, reason, self._result("waiting", attempts))

    # -- helpers -------------------------------------------------------------------------------

    def _deadline(self) -> float:
        if self.message.deadline is not None:
            return self.message.deadline.timestamp()
        record = self.rt.ledger.get(self.delivery_id)
        created = record.created_at if record else time.time()
        return created + self.settings.default_ttl_s

    def _expired(self, _created_at: float) -> bool:
        return time.time() >= self._deadline()

    def _provider_tag(self) -> str | None:
        # SMS Partner tags: <= 20 chars, lowercase, no spaces (providers.md §1.2.2); unique per
        # delivery so an unknown outcome can be reconciled by tag (§1.5).
        if self.provider == "smspartner":
            return "dw" + self.delivery_id.replace("-", "")[:18].lower()
        return None

    def _result(
        self, state: str, attempts: int, *, error: ErrorInfo | None = None
    ) -> DeliveryResult:
        return DeliveryResult(
            status=state,
            delivery_id=self.delivery_id,
            channel=self.channel,
            provider=self.provider,
            attempts=attempts,
            error=error,
        )


def mask_ids(ids: dict[str, str]) -> dict[str, str]:
    """Provider ids keyed by masked recipients (results never carry full addresses)."""
    out: dict[str, str] = {}
    for recipient, provider_id in ids.items():
        masked = mask_email(recipient) if "@" in recipient else mask_phone(recipient)
        key, n = masked, 2
        while key in out:
            key, n = f"{masked}#{n}", n + 1
        out[key] = provider_id
    return out


def _info(exc: DeliveryError) -> ErrorInfo:
    return ErrorInfo.model_validate(exc.to_dict())


def _failed(
    delivery_id: str, channel: str, provider: str | None, attempts: int, kind: str, message: str
) -> DeliveryResult:
    return DeliveryResult(
        status="failed",
        delivery_id=delivery_id,
        channel=channel,
        provider=provider,
        attempts=attempts,
        error=ErrorInfo(kind=kind, code=None, message=message[:500]),
    )


def _without_provider(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if k != "provider"}
