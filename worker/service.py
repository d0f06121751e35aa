"""The delivery service: one attempt at one message, and what should happen next.

Tasks call :func:`process` and map its answer to Celery: :class:`Done` returns the result,
:class:`Retry` reschedules the same task (same id, same message) after ``delay_s``.

One attempt, in order (design semantics 2-6)::

    ledger: already final? → answer from the ledger, never call the provider again
    deadline passed?       → expired
    choose a provider      → skip paused ones (park if none is left), skip open breakers
    global rate limiter    → wait briefly in-process, or reschedule; never an error
    interrupted attempt?   → reconcile with the provider before resending
    send                   → sent | retry | park | fail, with feedback to limiter and breaker

Budgets are kept apart: waiting for a limiter, a breaker or a provider's ``Retry-After``
increments ``throttled`` and never the error ``attempts``; only errors count against
``max_retries``. Every message has a deadline after which it ends as ``expired``.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from tenacity import RetryCallState, wait_random_exponential

from worker.errors import (
    AccountBlockedError,
    ConfigurationError,
    DeferredError,
    DeliveryError,
    ThrottledError,
    TransientError,
    UnknownOutcomeError,
)
from worker.models import (
    DeliveryResult,
    ErrorInfo,
    InvalidMessage,
    Message,
    SmsMessage,
)
from worker.providers import (
    Driver,
    SendContext,
    SendOutcome,
    driver_class,
    eligible_providers,
    parse_message,
)
from worker.redaction import mask_email, mask_phone, scrub
from worker.runtime import Runtime
from worker.stores import limiter_key

__all__ = ["Done", "Retry", "backoff_s", "mask_ids", "process"]

log = structlog.get_logger("worker.service")

_WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"
_OUTCOME_UNKNOWN = "outcome_unknown"
"""Ledger field: "1" while an earlier send's outcome could not be reconciled (ask again first)."""
_NOT_BEFORE = "not_before"
"""Ledger field: epoch seconds before which the provider is not called (a deferred message, or
the grace before reconciling an unknown outcome). Celery countdowns are capped below the
visibility timeout (:meth:`_Attempt._wait`), so a run that comes earlier just waits again."""
_FIRST_ATTEMPT_AT = "first_attempt_at"
_GAVE_UP = "unknown_outcome_error"
"""Ledger field: the last error (JSON) when retries ran out with the outcome still unknown; the
delivery fails with it only once the provider, asked after the grace, has not seen the send."""


@dataclass(frozen=True)
class Done:
    result: DeliveryResult


@dataclass(frozen=True)
class Retry:
    delay_s: float
    reason: str
    result: DeliveryResult
    """What the delivery looks like while it waits (state ``waiting``)."""


class _NotNow(Exception):
    """Raised by the send gate when the limiter wants this attempt rescheduled."""

    def __init__(self, outcome: Done | Retry) -> None:
        super().__init__(outcome.__class__.__name__)
        self.outcome = outcome


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
        log.warning("delivery.invalid_message", fields=[e["field"] for e in exc.errors])
        result = _failed(delivery_id, channel, "invalid_message", str(exc))
        # Final in the ledger too (a by-name message has no record yet): no content kept.
        rt.ledger.create(
            delivery_id, channel=channel, provider="auto", extra={"task_name": task_name}
        )
        rt.ledger.transition(
            delivery_id, "failed", error_kind="invalid_message", result=result.model_dump_json()
        )
        return Done(result)
    return _Attempt(rt, message, raw, delivery_id, task_name).guarded_run()


class _Attempt:
    def __init__(
        self, rt: Runtime, message: Message, raw: Any, delivery_id: str, task_name: str
    ) -> None:
        self.rt = rt
        self.settings = rt.settings
        self.message = message
        self.raw = raw
        self.delivery_id = delivery_id
        self.task_name = task_name
        self.channel = message.channel
        self.routed = message.provider is None
        self.provider: str = message.provider or ""
        self.created_at = time.time()

    # -- crash safety --------------------------------------------------------------------------

    def guarded_run(self) -> Done | Retry:
        """:meth:`run` under the delivery's lock, counting runs that never finished.

        A run that is killed (SIGKILL, OOM, a hard time limit) leaves ``runs_unfinished`` raised;
        Celery requeues the task (``task_reject_on_worker_lost``) or the sweeper does. After
        ``max_unfinished_runs`` such runs the message is a poison message and is set aside as a
        dead letter instead of killing more workers.
        """
        ledger = self.rt.ledger
        ledger.create(
            self.delivery_id,
            channel=self.channel,
            provider=self.message.provider or "auto",
            extra={"task_name": self.task_name, "message": json.dumps(self.raw)},
        )
        record = ledger.get(self.delivery_id)
        assert record is not None
        if record.final:
            return self.run()
        token = uuid.uuid4().hex
        busy_s = ledger.lock(self.delivery_id, token, self.settings.send_lock_ttl_s)
        if busy_s > 0:
            # Another copy of this delivery is running, or died holding the lock: wait for it
            # (the lock expires) rather than risk sending twice.
            log.info("delivery.concurrent_copy", retry_in_s=round(busy_s, 3))
            return Retry(
                busy_s + 0.05, "concurrent_copy", self._result(record.state, record.attempts)
            )
        try:
            runs = ledger.incr(self.delivery_id, "runs_unfinished")
            if runs > self.settings.max_unfinished_runs:
                return self._bury(runs - 1, record.attempts)
            outcome = self.run()
            ledger.set_fields(self.delivery_id, runs_unfinished="0")
            return outcome
        finally:
            ledger.unlock(self.delivery_id, token)

    def _bury(self, crashed_runs: int, attempts: int) -> Done:
        reason = f"its worker died in {crashed_runs} runs in a row"
        self.rt.ledger.bury(
            self.delivery_id, reason=reason, task_name=self.task_name, message=self.raw
        )
        log.error("delivery.dead_letter", reason=reason, action="delivery-worker dead replay ID")
        error = ErrorInfo(kind="dead_letter", message=reason)
        result = self._result("dead", attempts, error=error)
        self.rt.ledger.set_fields(self.delivery_id, result=result.model_dump_json())
        return Done(result)

    # -- the algorithm -----------------------------------------------------------------------------

    def run(self) -> Done | Retry:
        ledger = self.rt.ledger
        record = ledger.get(self.delivery_id)
        assert record is not None
        self.created_at = record.created_at
        self.provider = record.provider if record.provider != "auto" else self.provider
        if record.final:
            # Redelivered after it already finished (duplicate copy, requeue after a crash):
            # the ledger answers, the provider is not called again.
            log.info("delivery.already_final", state=record.state)
            stored = record.result
            if stored is not None:
                return Done(DeliveryResult.model_validate(stored))
            return Done(self._result(record.state, record.attempts))
        if time.time() >= self._deadline():
            return self._expire(record.attempts, "before the message was sent")
        not_before = _as_float(record.fields.get(_NOT_BEFORE))
        if not_before is not None and time.time() < not_before:
            # Deferred, or within the grace after an unknown outcome: wait again, no provider call.
            reason = record.fields.get("waiting_reason") or "deferred"
            return self._wait(not_before - time.time(), reason, record.attempts)

        structlog.contextvars.bind_contextvars(attempt=record.attempts + 1)
        chosen = self._choose_provider(record.attempts)
        if not isinstance(chosen, str):
            return chosen
        self.provider = chosen
        structlog.contextvars.bind_contextvars(provider=chosen)
        if self.routed:
            ledger.set_fields(self.delivery_id, provider=chosen)

        try:
            driver = self.rt.driver(chosen)
        except DeliveryError as exc:
            return self._on_error(exc, record.attempts, None, None)
        ctx = SendContext(
            delivery_id=self.delivery_id,
            idempotency_key=self.message.idempotency_key or self.delivery_id,
            attempt=record.attempts + 1,
            tag=driver.reconcile_tag(self.message, self.delivery_id),
            tag_is_callers=isinstance(self.message, SmsMessage) and self.message.tag is not None,
            sent_after=_as_float(record.fields.get(_FIRST_ATTEMPT_AT)) or time.time(),
        )
        if record.state == "sending" and driver.supports_reconcile:
            # A worker died mid-send: the provider may still accept that request late, so ask
            # only once the read timeout and the grace have passed since it started.
            started = _as_float(record.fields.get("attempt_started_at")) or 0.0
            ask_at = started + self.settings.http_read_timeout_s + self.settings.reconcile_grace_s
            if time.time() < ask_at:
                self.rt.ledger.set_fields(
                    self.delivery_id, **{_OUTCOME_UNKNOWN: "1", _NOT_BEFORE: repr(ask_at)}
                )
                return self._wait(ask_at - time.time(), "reconcile_grace", record.attempts)
        if record.state == "sending" or record.fields.get(_OUTCOME_UNKNOWN) == "1":
            # A previous attempt died mid-send, or its outcome is still unknown because the
            # status check failed too: ask the provider first where it can tell (design
            # semantics 6). If it still cannot be asked, do not resend: wait and ask again.
            log.warning("delivery.interrupted_attempt", state=record.state)
            try:
                found = self._reconcile(driver, ctx)
            except DeliveryError as exc:
                self.rt.ledger.set_fields(self.delivery_id, **{_OUTCOME_UNKNOWN: "1"})
                return self._on_error(exc, record.attempts, None, None)
            if found is not None:
                return self._sent(found, record.attempts)
            gave_up = record.fields.get(_GAVE_UP)
            if gave_up:
                # Retries ran out while the outcome was unknown; the provider has not seen it.
                log.error("delivery.retries_exhausted", error="outcome unknown, not accepted")
                error = ErrorInfo.model_validate_json(gave_up)
                return self._finish("failed", record.attempts, error=error)
            if record.fields.get(_OUTCOME_UNKNOWN) == "1":
                self.rt.ledger.set_fields(self.delivery_id, **{_OUTCOME_UNKNOWN: "0"})

        limiter_key_ = limiter_key(
            chosen, self.settings.egress_identity, driver.limiter_bucket(self.message)
        )
        gate_opened = False

        def gate() -> None:
            """Run by the driver once the request is built, right before it is transmitted.

            The ledger says ``sending`` before anything can leave (a worker dying from here on
            leaves a record to reconcile); the limiter slot is taken last, right before the
            bytes leave: the provider counts arrivals, so any work between grant and send would
            only add jitter to our spacing.
            """
            now = repr(time.time())
            first = {} if _FIRST_ATTEMPT_AT in record.fields else {_FIRST_ATTEMPT_AT: now}
            ledger.transition(self.delivery_id, "sending", attempt_started_at=now, **first)
            if ctx.tag_is_callers and ctx.tag:
                self.rt.ledger.note_tag_use(
                    chosen, ctx.tag, self._recipients(), self.delivery_id, float(now)
                )
            log.info("delivery.attempt")
            waited = self._acquire(limiter_key_, chosen, record.attempts)
            if not isinstance(waited, float):
                raise _NotNow(waited)
            nonlocal gate_opened
            gate_opened = True

        try:
            outcome: SendOutcome = driver.send(self.message, ctx, gate)
        except _NotNow as stop:
            return stop.outcome
        except DeliveryError as exc:
            # A refusal after the gate opened may hold the shared limiter key (a 429).
            return self._on_error(
                exc, record.attempts, driver, ctx, limiter_key_ if gate_opened else None
            )
        self.rt.health.record_success(chosen)
        return self._sent(outcome, record.attempts)

    # -- flow control --------------------------------------------------------------------------

    def _candidates(self) -> list[str]:
        if not self.routed:
            return [self.provider]
        enabled = set(self.settings.enabled_providers())
        return [p for p in eligible_providers(self.message) if p in enabled]

    def _choose_provider(self, attempts: int) -> str | Done | Retry:
        """The first candidate that is neither paused nor behind an open breaker."""
        candidates = self._candidates()
        if not candidates:
            return self._finish(
                "failed",
                attempts,
                error=ErrorInfo(
                    kind="configuration",
                    message=f"no configured {self.channel} provider accepts this message",
                ),
            )
        paused: list[str] = []
        waits: list[float] = []
        for provider in candidates:
            if self.rt.health.paused(provider) is not None:
                paused.append(provider)
                continue
            decision = self.rt.health.allow_request(provider)
            if decision.allowed:
                if decision.probe:
                    log.info("breaker.probe", provider=provider)
                return provider
            waits.append(decision.wait_s)
        if waits:
            self.rt.ledger.incr(self.delivery_id, "throttled")
            return self._wait(max(min(waits), 0.05), "breaker_open", attempts)
        return self._park(paused[0], attempts, "provider paused")

    def _acquire(self, key: str, provider: str, attempts: int) -> float | Done | Retry:
        """Take a slot in the global limiter, sleeping briefly when it is nearly free."""
        bucket = driver_class(provider).limiter_bucket(self.message)
        limits = self.settings.limits(provider, bucket)
        waited = 0.0
        wait = self.rt.limiter.acquire(key, limits)
        while wait > 0:
            if waited + wait > self.settings.limiter_max_inline_wait_s:
                self.rt.ledger.incr(self.delivery_id, "throttled")
                self.rt.metric(provider, "throttled_ms", int((waited + wait) * 1000))
                log.info("delivery.rate_limited", wait_s=round(wait, 3))
                return self._wait(wait, "rate_limited", attempts)
            time.sleep(wait)
            waited += wait
            wait = self.rt.limiter.acquire(key, limits)
        if waited:
            self.rt.metric(provider, "throttled_ms", int(waited * 1000))
        return waited

    # -- outcomes ------------------------------------------------------------------------------

    def _on_error(
        self,
        exc: DeliveryError,
        attempts: int,
        driver: Driver[Any] | None,
        ctx: SendContext | None,
        key: str | None = None,
    ) -> Done | Retry:
        fields = _without_provider(exc.context())
        provider = self.provider
        if isinstance(exc, DeferredError):
            return self._defer(exc, attempts, fields)
        if isinstance(exc, ThrottledError):
            delay = exc.retry_after_s or 1.0
            if key is not None:
                # Every worker sharing this budget holds back, not just this one.
                self.rt.limiter.hold_for(key, delay)
            self.rt.ledger.incr(self.delivery_id, "throttled")
            self.rt.metric(provider, "throttled_by_provider")
            log.info("delivery.throttled", **{**fields, "retry_after_s": delay})
            return self._wait(delay, "throttled", attempts)
        if isinstance(exc, AccountBlockedError):
            info = self.rt.health.pause(provider, exc.message, _WORKER_NAME)
            log.error(
                "provider.paused",
                reason=info.reason,
                paused_by=info.by,
                action=f"top up, then run: delivery-worker resume {provider}",
                **fields,
            )
            self.rt.metric(provider, "payment_failures")
            if self.routed and len(self._candidates()) > 1:
                log.warning("delivery.failover", away_from=provider)
                return self._wait(0.0, "failover", attempts)
            return self._park(provider, attempts, exc.message)
        if isinstance(exc, TransientError):
            if not exc.provider_fault:
                # The provider answered and is up (e.g. a recipient deferred): not a health
                # failure; a success also ends a half-open probe held by this attempt.
                self.rt.health.record_success(provider)
            elif not isinstance(exc, UnknownOutcomeError) or exc.status_code is None:
                # Provider-health failures (5xx, 503, timeouts, resets) feed the breaker.
                state = self.rt.health.record_failure(provider)
                if state.state == "open":
                    log.warning(
                        "breaker.open", failures=state.failures, retry_in_s=state.retry_in_s
                    )
            attempts = self.rt.ledger.incr(self.delivery_id, "attempts")
            reconcilable = driver is not None and driver.supports_reconcile
            if isinstance(exc, UnknownOutcomeError) and reconcilable:
                # The provider may accept this request after we gave up (late acceptance):
                # asked now, it shows nothing yet and a resend would duplicate the message.
                # Ask after the grace, before anything is resent; the same discipline for
                # every driver that offers a lookup.
                ask_at = time.time() + self.settings.reconcile_grace_s
                marks = {_OUTCOME_UNKNOWN: "1", _NOT_BEFORE: repr(ask_at)}
                if attempts > self.settings.max_retries:
                    marks[_GAVE_UP] = _info(exc).model_dump_json()
                self.rt.ledger.set_fields(self.delivery_id, **marks)
                log.warning("delivery.outcome_unknown", ask_in_s=self.settings.reconcile_grace_s)
                return self._wait(self.settings.reconcile_grace_s, "reconcile_grace", attempts)
            if isinstance(exc, UnknownOutcomeError) and driver is not None and ctx is not None:
                try:
                    found = self._reconcile(driver, ctx)
                except DeliveryError:
                    # "Could not ask" is not "not sent": the next attempt asks again before
                    # it may resend (a failed check used to count as "not found": duplicates).
                    found = None
                    self.rt.ledger.set_fields(self.delivery_id, **{_OUTCOME_UNKNOWN: "1"})
                if found is not None:
                    return self._sent(found, attempts - 1)
            if attempts > self.settings.max_retries:
                log.error("delivery.retries_exhausted", error=exc.message, **fields)
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
                **fields,
            )
            return self._wait(delay, exc.kind, attempts)
        if not isinstance(exc, ConfigurationError):
            # The provider answered; a refusal of this message says it is up.
            self.rt.health.record_success(provider)
        level = log.error if isinstance(exc, ConfigurationError) else log.warning
        level("delivery.failed", kind=exc.kind, error=exc.message, **fields)
        attempts = self.rt.ledger.incr(self.delivery_id, "attempts")
        return self._finish("failed", attempts, error=_info(exc))

    def _defer(self, exc: DeferredError, attempts: int, fields: dict[str, Any]) -> Done | Retry:
        """Only this message waits for ``not_before`` (a legal sending window, §1.3 codes 22/23).

        Not a throttle: the shared limiter is not held, so other messages keep flowing; the
        provider answered, so the breaker hears a success; no error retry is consumed.
        """
        self.rt.health.record_success(self.provider)
        if exc.not_before >= self._deadline():
            log.warning("delivery.deferred", **fields)
            return self._expire(attempts, "before the next allowed sending time")
        self.rt.ledger.set_fields(self.delivery_id, **{_NOT_BEFORE: repr(exc.not_before)})
        self.rt.metric(self.provider, "deferred")
        log.info("delivery.deferred", **fields)
        return self._wait(exc.not_before - time.time(), "deferred", attempts)

    def _recipients(self) -> list[str]:
        return list(self.message.to) if isinstance(self.message, SmsMessage) else []

    def _reconcile(self, driver: Driver[Any], ctx: SendContext) -> SendOutcome | None:
        """The earlier send if the provider accepted it, ``None`` if it says it did not.

        Raises the :class:`DeliveryError` when the provider could not be asked: the outcome is
        still unknown, and a resend could duplicate the send.
        """
        if not driver.supports_reconcile:
            return None
        if ctx.tag_is_callers and ctx.tag and ctx.sent_after is not None:
            # A tag the caller chose may be on another of our deliveries to the same number in
            # the window where its send could show up as ours (providers.md §1.2.10 lists no
            # per-send text or id; §1.5 wants a unique tag). Then the lookup proves nothing:
            # resend, as for a provider without a lookup (at most one extra copy), rather than
            # report ``sent`` for a message that may not have been.
            since = (
                ctx.sent_after
                - self.settings.http_read_timeout_s
                - self.settings.reconcile_grace_s
                - 5.0
            )
            if self.rt.ledger.tag_used_by_others(
                self.provider, ctx.tag, self._recipients(), self.delivery_id, since
            ):
                log.warning("delivery.reconcile_ambiguous", reason="tag shared in the window")
                return None
        try:
            found = driver.reconcile(self.message, ctx)
        except DeliveryError as exc:
            log.warning("delivery.reconcile_failed", kind=exc.kind, error=exc.message)
            raise
        # The provider answered: it is up. This also reports the breaker's half-open probe
        # when the attempt holding it ends here; unreported, its lease kept every other
        # delivery to this provider waiting (probe_timeout_s).
        self.rt.health.record_success(self.provider)
        log.info("delivery.reconciled", found=found is not None)
        return found

    def _sent(self, outcome: SendOutcome, previous_attempts: int) -> Done:
        result = DeliveryResult(
            status="sent",
            delivery_id=self.delivery_id,
            channel=self.channel,
            provider=self.provider,
            provider_message_ids=mask_ids(outcome.provider_message_ids),
            rejected_recipients={
                k: scrub(v)[:200] for k, v in mask_ids(outcome.rejected_recipients).items()
            },
            attempts=previous_attempts + 1,
            cost=outcome.cost,
            currency=outcome.currency,
            warnings=list(outcome.warnings),
        )
        if outcome.warnings:
            unsent = [w.partition(":")[0] for w in outcome.warnings]
            log.warning("delivery.fields_not_sent", fields=unsent)
        self.rt.ledger.transition(
            self.delivery_id,
            "sent",
            sent_at=repr(time.time()),
            attempts=str(result.attempts),
            result=result.model_dump_json(),
        )
        self.rt.metric(self.provider, "sent")
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
        if self.provider:
            self.rt.metric(self.provider, f"{state}:{error.kind}")
        return Done(result)

    def _expire(self, attempts: int, when: str) -> Done:
        log.warning("delivery.expired", when=when)
        return self._finish(
            "expired", attempts, error=ErrorInfo(kind="expired", message=f"deadline passed {when}")
        )

    def _park(self, provider: str, attempts: int, reason: str) -> Done:
        """Hold the message until the provider is resumed; neither failed nor retried."""
        self.rt.parking.park(provider, self.delivery_id, self.task_name, self.raw)
        result = self._result("parked", attempts, provider=provider)
        self.rt.ledger.transition(
            self.delivery_id, "parked", parked_reason=reason[:200], result=result.model_dump_json()
        )
        self.rt.metric(provider, "parked")
        log.warning("delivery.parked", provider=provider)
        return Done(result)

    def _wait(self, delay_s: float, reason: str, attempts: int) -> Done | Retry:
        remaining = self._deadline() - time.time()
        if remaining <= 0:
            return self._expire(attempts, f"while {reason.replace('_', ' ')}")
        # Never past the deadline, nor beyond the broker's visibility timeout.
        delay_s = min(delay_s, self.settings.retry_backoff_max_s, remaining)
        self.rt.ledger.transition(self.delivery_id, "waiting", waiting_reason=reason)
        return Retry(max(delay_s, 0.0), reason, self._result("waiting", attempts))

    # -- helpers -------------------------------------------------------------------------------

    def _deadline(self) -> float:
        if self.message.deadline is not None:
            return self.message.deadline.timestamp()
        return self.created_at + self.settings.default_ttl_s

    def _result(
        self,
        state: str,
        attempts: int,
        *,
        error: ErrorInfo | None = None,
        provider: str | None = None,
    ) -> DeliveryResult:
        return DeliveryResult(
            status=state,
            delivery_id=self.delivery_id,
            channel=self.channel,
            provider=provider or self.provider or None,
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


def _failed(delivery_id: str, channel: str, kind: str, message: str) -> DeliveryResult:
    return DeliveryResult(
        status="failed",
        delivery_id=delivery_id,
        channel=channel,
        error=ErrorInfo(kind=kind, message=message[:500]),
    )


def _as_float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _without_provider(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if k != "provider"}
