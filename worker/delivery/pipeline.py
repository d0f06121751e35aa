"""The delivery flow: one attempt at one message, in one module.

:func:`process` runs the steps in order. Each step is a function of the
:class:`~worker.delivery.context.Delivery` that either lets the attempt go on (``None``, or
what the next step needs) or ends it with a decision (:class:`Done` or :class:`Retry`); the
decisions become state in :mod:`worker.delivery.writer` only, the one outcome writer. The
steps below, in the order a run meets them: routing (which provider), suppression (who must
not get it), the deadline and ``not_before``, ``send_at`` (held on the ledger's schedule or at
the provider), the run's record (its first and last shared-state steps), settling a provider
error by its policy, the gate (lock, limiter, ``sending``), the send itself, and the
reconciliation of an earlier send whose outcome is unknown. ``worker.delivery.batch`` runs a
chunk of deliveries through the same steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from worker.delivery import writer
from worker.delivery.context import (
    BATCH_TAGS,
    FIRST_ATTEMPT_AT,
    GAVE_UP,
    NOT_BEFORE,
    OUTCOME_UNKNOWN,
    Delivery,
)
from worker.delivery.results import Done, Outcome, Retry, backoff_s, failed_result
from worker.delivery.writer import Sending, expire, finish, park, sent, sent_result, wait
from worker.errors import DeferredError, DeliveryError, Policy, RecipientRejectedError
from worker.metrics import record as metrics
from worker.models import DeliveryResult, EmailMessage, ErrorInfo, InvalidMessage, SmsMessage
from worker.providers import Driver, SendContext, SendOutcome, eligible_providers, parse_message
from worker.runtime import Runtime
from worker.scheduling.quiet import quiet_due
from worker.scheduling.rules import check_send_at
from worker.stores import DeliveryRecord
from worker.stores.hotpath import Begun
from worker.stores.hotpath.base import LATE_OUTCOME
from worker.stores.keys import keys_for
from worker.stores.suppression import Reason
from worker.suppression import mask
from worker.tracking.callbacks import callback_url

__all__ = [
    "POLICY_HANDLERS",
    "PROVIDER_SCHEDULED",
    "Failure",
    "Gate",
    "Later",
    "NotNow",
    "accepted",
    "answer_from_ledger",
    "apply_suppression",
    "at_provider_run",
    "candidates",
    "check_time",
    "choose_provider",
    "close_run",
    "close_runs",
    "from_refusal",
    "held_at_provider",
    "hold_if_early",
    "invalid",
    "later",
    "load",
    "lookup",
    "native_context",
    "open_run",
    "open_runs",
    "prepare",
    "process",
    "recipients",
    "send",
    "send_context",
    "settle_earlier_send",
    "settle_error",
    "suppression_lookup",
    "with_batch_tags",
]

log = structlog.get_logger(__name__)


def as_float(value: str | None) -> float | None:
    """A ledger field as a number; ``None`` when absent or unreadable."""
    try:
        return float(value) if value else None
    except ValueError:
        return None


# -- the flow --------------------------------------------------------------------------------------


def process(
    channel: str,
    raw: Any,
    *,
    delivery_id: str,
    task_name: str,
    rt: Runtime,
    guard_token: str | None = None,
) -> Outcome:
    """One attempt at one message; the task maps the outcome to Celery.

    ``guard_token``: the worker main process that handed this task to the pool holds a mark
    for it under this token (``worker.guard``); the run's first step clears it.
    """
    # The pool process's previous task (another send, a tracking task) may have bound
    # ``attempt`` or ``provider``: this attempt's log lines start from its own context only.
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(delivery_id=delivery_id, channel=channel)
    mark = (keys_for(rt.settings).main_mark(delivery_id), guard_token) if guard_token else None
    try:
        message = parse_message(channel, raw)
    except InvalidMessage as exc:
        if mark is not None:
            writer.clear_mark(rt, mark)
        return invalid(channel, exc, delivery_id=delivery_id, task_name=task_name, rt=rt)
    d = Delivery(rt, message, raw, delivery_id, task_name, provider=message.provider or "")
    opened = open_run(d, mark=mark)
    if opened is None:
        return answer_from_ledger(d, load(d))
    if not isinstance(opened, str):
        return opened
    finished = False
    try:
        outcome = _attempt(d)
        finished = True
        return outcome
    finally:
        close_run(d, opened, finished=finished)


def _attempt(d: Delivery) -> Outcome:
    prepared = prepare(d)
    if not isinstance(prepared, tuple):
        return prepared
    record, driver, ctx = prepared
    return send(d, record, driver, ctx)


def prepare(d: Delivery) -> Outcome | tuple[DeliveryRecord, Driver[Any], SendContext]:
    """Every step before the send (under the delivery's lock): an outcome when one of them
    ends the attempt, else what the send needs (the single path and ``worker.delivery.batch``)."""
    record = load(d)
    if record.final:
        return answer_from_ledger(d, record)
    at_provider = at_provider_run(d, record)
    if at_provider is not None:
        return at_provider
    stop = check_time(d, record)
    if stop is not None:
        return stop
    held = hold_if_early(d, record, lambda: _named_driver(d))
    if held is not None:
        return held
    stop = apply_suppression(d, record.attempts)
    if stop is not None:
        return stop
    structlog.contextvars.bind_contextvars(attempt=record.attempts + 1)
    chosen = choose_provider(d, record.attempts)
    if not isinstance(chosen, str):
        return chosen
    d.provider = chosen
    structlog.contextvars.bind_contextvars(provider=chosen)
    if d.routed:
        writer.chose_provider(d, chosen)
    try:
        driver = d.rt.driver(chosen)
    except DeliveryError as exc:
        return settle_error(d, Failure(exc, record.attempts))
    ctx = native_context(d, send_context(d, record, driver), driver)
    stop = settle_earlier_send(d, record, driver, ctx)
    if stop is not None:
        return stop
    assert not d.past_deadline  # settle_earlier_send always ends such a run
    return record, driver, ctx


def _named_driver(d: Delivery) -> Driver[Any] | None:
    """The named provider's driver, for native scheduling; ``None`` for a routed email or a
    provider this worker cannot build (the send step reports that)."""
    if d.routed:
        return None
    try:
        return d.rt.driver(d.message.provider or d.provider)
    except DeliveryError:
        return None


def invalid(
    channel: str, exc: InvalidMessage, *, delivery_id: str, task_name: str, rt: Runtime
) -> Outcome:
    # Defence in depth: producers validate before enqueue, but a message sent by name
    # from elsewhere may not have been.
    log.warning("delivery.invalid_message", fields=[e["field"] for e in exc.errors])
    result = failed_result(delivery_id, channel, "invalid_message", str(exc))
    return writer.invalid(rt, delivery_id, task_name, result)


# -- routing ---------------------------------------------------------------------------------------
# Step 3: choose the provider: the named one or each eligible one, skipping paused providers
# and open breakers. None configured fails; all paused parks; open breakers wait.


def candidates(d: Delivery) -> list[str]:
    """The providers this delivery may use, in routing order."""
    if not d.routed:
        return [d.provider]
    enabled = set(d.settings.enabled_providers())
    return [p for p in eligible_providers(d.message) if p in enabled]


def choose_provider(d: Delivery, attempts: int) -> str | Outcome:
    """The first candidate that is neither paused nor behind an open breaker."""
    names = candidates(d)
    if not names:
        message = f"no configured {d.channel} provider accepts this message"
        return finish(d, "failed", attempts, error=ErrorInfo(kind="configuration", message=message))
    paused: list[str] = []
    waits: list[float] = []
    begun = d.begun
    for provider in names:
        if begun is not None and provider in begun.asked:
            # Read by the run's first step (worker.stores.hotpath), moments ago.
            if provider in begun.paused:
                paused.append(provider)
                continue
            if provider not in begun.breaker_state:
                return provider  # a breaker with no state is closed, no failure: allowed
        elif d.rt.health.paused(provider) is not None:
            paused.append(provider)
            continue
        decision = d.rt.health.allow_request(provider)
        if decision.allowed:
            if decision.probe:
                log.info("breaker.probe", provider=provider)
            return provider
        waits.append(decision.wait_s)
    if waits:
        writer.count_throttle(d)
        return wait(d, max(min(waits), 0.05), "breaker_open", attempts)
    return park(d, paused[0], attempts, "provider paused")


# -- suppress --------------------------------------------------------------------------------------
# The suppression step: recipients on the channel's list are never sent to, by any provider.
#
# The lookup itself rides in the run's first script (``worker.stores.hotpath``, ``begin.lua``):
# :func:`suppression_lookup` names the recipients' keys for it, :func:`apply_suppression` acts
# on the answer before a provider is chosen, so failover never reaches a suppressed recipient
# either.
#
# - every primary recipient (``to``) suppressed: the delivery ends ``failed`` with
#   ``error.kind = "suppressed"`` and no provider request;
# - some: the message goes to the others, and the result lists the left-out ones masked
#   (``suppressed_recipients``);
# - ``ignore_suppression: true``: nothing is looked up; the bypass is logged.


def recipients(d: Delivery) -> list[str]:
    """Every recipient of the message (an email's ``to``, ``cc`` and ``bcc``)."""
    m = d.message
    if isinstance(m, EmailMessage):
        return [a.email for a in (*m.to, *m.cc, *m.bcc)]
    return list(m.to)


def suppression_lookup(d: Delivery) -> tuple[str, Sequence[str]] | None:
    """(channel, recipient keys) for the run's first step; ``None``: not checked."""
    if not d.settings.suppression or d.message.ignore_suppression:
        return None
    hasher = d.rt.hasher
    return d.channel, [hasher.key(d.channel, r) for r in recipients(d)]


def apply_suppression(d: Delivery, attempts: int) -> Outcome | None:
    """End the attempt when every primary recipient is suppressed, else narrow the message to
    the others (``d.message``, ``d.suppressed``)."""
    if d.message.ignore_suppression:
        if d.settings.suppression:
            log.warning("delivery.suppression_ignored", recipients=len(recipients(d)))
        return None
    if not d.settings.suppression:
        return None
    # The run's first script looked them up (a batch's too: one script call for its chunk,
    # ``open_runs``); no other lookup is made.
    found = d.begun.suppressed if d.begun is not None else {}
    if not found:
        return None
    hasher = d.rt.hasher
    left_out: dict[str, str] = {}
    kept: set[str] = set()
    for r in recipients(d):
        entry = found.get(hasher.key(d.channel, r))
        if entry is None:
            kept.add(r)
        else:
            left_out[mask(d.channel, r)] = entry.reason
            metrics.suppressed_send(d.channel, entry.reason)
    if not left_out:
        return None
    d.suppressed = left_out
    m = d.message
    if isinstance(m, EmailMessage):
        to_kept: list[object] = [a for a in m.to if a.email in kept]
        update = {"to": to_kept, "cc": [a for a in m.cc if a.email in kept],
                  "bcc": [a for a in m.bcc if a.email in kept]}  # fmt: skip
    else:
        to_kept = [n for n in m.to if n in kept]
        update = {"to": to_kept}
    if not to_kept:
        reasons = sorted(set(left_out.values()))
        log.info("delivery.suppressed", recipients=len(left_out), reasons=reasons)
        message = "every recipient is on the suppression list (" + ", ".join(reasons) + ")"
        error = ErrorInfo(kind="suppressed", code=reasons[0], message=message)
        return writer.finish(d, "failed", attempts, error=error)
    d.message = m.model_copy(update=update)
    log.info("delivery.partly_suppressed", suppressed=len(left_out), kept=len(kept))
    return None


def _refusal_reason(exc: DeliveryError) -> Reason:
    """What a provider's refusal of the recipient says: SMS Partner code 14 is its STOP list
    (docs/providers/smspartner.md §1.2.12); EmailMassivo names unsubscribed, complained or
    nonexistent receivers in a 422's text (docs/providers/emailmassivo.md §5.4)."""
    text = exc.message.lower()
    if str(exc.provider_code) == "14":
        return "stop"
    if "unsubscrib" in text:
        return "unsubscribed"
    if "complain" in text:
        return "complaint"
    if "exist" in text:
        return "invalid"
    return "manual"


def from_refusal(d: Delivery, exc: DeliveryError) -> None:
    """A permanent refusal of the recipient (``RecipientRejectedError``) suppresses it on the
    channel. Only a message to one recipient: a refusal of several does not say which."""
    if not isinstance(exc, RecipientRejectedError) or not d.settings.suppression:
        return
    everyone = recipients(d)
    if len(everyone) != 1:
        return
    writer.suppress(d, everyone[0], _refusal_reason(exc))


# -- deadline --------------------------------------------------------------------------------------
# Step 2: is it time? Expire past the deadline; wait again before ``not_before``.


def check_time(d: Delivery, record: DeliveryRecord) -> Outcome | None:
    """The outcome when this run must not call a provider; ``None`` to go on."""
    now, deadline = time.time(), d.deadline()
    unknown = record.state == "sending" or record.fields.get(OUTCOME_UNKNOWN) == "1"
    if now >= deadline and not unknown:
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
    if now >= deadline:
        # An earlier send may have been accepted: ask the provider before calling the message
        # expired (worker.delivery.pipeline); nothing is sent past the deadline.
        d.past_deadline = True
    return None


# -- schedule --------------------------------------------------------------------------------------
# The pipeline step for ``send_at``: hold a message until its time, or answer a due run.
#
# A message whose ``send_at`` is ahead is either
#
# * handed to its provider at once with the provider's schedule fields, when the provider
#   schedules natively (:attr:`~worker.providers.Driver.native_schedule_min_lead_s`) and its
#   format expresses the time exactly: the ledger holds it as ``scheduled`` with
#   ``provider_scheduled = 1`` and the provider's ids, and puts it on the schedule at its time,
#   when it becomes ``sent``; it survives our own downtime, and ``cancel`` goes to the provider;
# * or held in the ledger's durable schedule (``dw:scheduled``, state ``scheduled``), which the
#   mover in every worker (:mod:`worker.scheduling.mover`) publishes when due. No Celery
#   ``eta``/``countdown``: no worker keeps future tasks in memory, and a restart loses nothing.
#
# Either way the Celery task ends its run (``SCHEDULED`` state, the message acknowledged).


PROVIDER_SCHEDULED = "provider_scheduled"
"""Ledger field: "1" when the provider holds the send until ``send_at`` (native scheduling)."""
SCHEDULED_FOR = "scheduled_for"
"""Ledger field: when a held delivery is due (``send_at``, or the end of its quiet hours)."""
SCHEDULED_RESULT = "scheduled_result"
"""Ledger field: the ``sent`` result a natively scheduled delivery gets at its time (JSON)."""


def due_at(d: Delivery, now: float) -> float | None:
    """When this message may leave, if that is later than ``now``: its ``send_at``, moved to
    the next opening of its channel's quiet hours (``worker.scheduling.quiet``)."""
    if d.message.send_at is None and not d.settings.quiet_hours:
        return None
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
    # A campaign message (worker.campaign.CHUNK_FIELD) waits in our schedule, so the mover
    # publishes it with its chunk: at the provider it would cost one request alone.
    in_chunk = bool(record.fields.get("chunk"))
    if record.state != "scheduled" and not in_chunk and native_fits(driver(), when, now):
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


# -- record ----------------------------------------------------------------------------------------
# Step 1: the ledger record, and the crash-safety frame around the rest of the run.
#
# The record is created on first sight (idempotent) and re-read under the delivery's lock. A
# final record answers from the ledger, never from the provider again. A run killed mid-way
# (SIGKILL, OOM, a hard time limit) leaves ``runs_unfinished`` raised; after
# ``max_unfinished_runs`` such runs the message is a poison message and is buried as a dead
# letter instead of killing more workers.


def open_run(d: Delivery, *, mark: tuple[str, str] | None = None) -> str | Outcome | None:
    """:func:`open_runs` for a chunk of one."""
    return open_runs([d], [mark])[0]


def open_runs(
    chunk: Sequence[Delivery], marks: Sequence[tuple[str, str] | None] | None = None
) -> list[str | Outcome | None]:
    """Begin the run of each delivery of a chunk, in one round trip; per delivery: the lock
    token to
    :func:`close_run` with; an outcome when this run must not go on (a concurrent copy holds
    the lock, or the message is buried); ``None`` when the record is already final (no lock:
    the ledger answers).

    The hot path's first script clears the guard's ``mark``, reads the record and, unless it is
    final, takes the lock, counts the run, reads the candidate providers' health and looks the
    recipients up in the channel's suppression list (``worker.delivery.writer.begin``). While
    the run holds the lock, a ``sent`` is left in ``d.closing`` for the last script, with the
    run count back to 0 and the unlock."""
    marks = marks or [None] * len(chunk)
    opening = [
        writer.Opening(d, uuid.uuid4().hex, candidates(d), mark, suppression_lookup(d))
        for d, mark in zip(chunk, marks, strict=True)
    ]
    begun = writer.begin(opening)
    return [_opened(o.d, o.token, b) for o, b in zip(opening, begun, strict=True)]


def _opened(d: Delivery, token: str, begun: Begun) -> str | Outcome | None:
    record = begun.record
    assert record is not None
    d.begun = begun
    if begun.status == "final":
        return None
    if begun.status == "busy":
        # Another copy of this delivery is running, or died holding the lock: wait for it
        # (the lock expires) rather than risk sending twice.
        log.info("delivery.concurrent_copy", retry_in_s=round(begun.busy_s, 3))
        waiting = d.result(record.state, record.attempts)
        return Retry(begun.busy_s + 0.05, "concurrent_copy", waiting)
    if begun.runs > d.settings.max_unfinished_runs:
        try:
            return writer.bury(d, begun.runs - 1, record.attempts)
        finally:
            writer.finish_run(d, token, finished=False)
    d.defer_closing = True
    return token


def close_run(d: Delivery, token: str, *, finished: bool) -> None:
    """The run's last script (``worker.delivery.writer.finish_runs``); a run that ``finished``
    (reached an outcome) is no longer counted as unfinished."""
    writer.finish_run(d, token, finished=finished)


def close_runs(chunk: Sequence[tuple[Delivery, str, bool]]) -> None:
    """:func:`close_run` for every (delivery, token, finished) of a chunk, in one round trip."""
    writer.finish_runs(chunk)


def load(d: Delivery) -> DeliveryRecord:
    """The record as it stands under the lock; it tells ``d`` its age and chosen provider."""
    begun = d.begun
    record = begun.record if begun is not None and begun.record is not None else _get(d)
    d.created_at = record.created_at
    d.provider = record.provider if record.provider != "auto" else d.provider
    return record


def answer_from_ledger(d: Delivery, record: DeliveryRecord) -> Done:
    """Redelivered after it already finished (duplicate copy, requeue after a crash): the
    ledger answers, the provider is not called again."""
    log.info("delivery.already_final", state=record.state)
    stored = record.result
    if stored is not None:
        return Done(DeliveryResult.model_validate(stored))
    return Done(d.result(record.state, record.attempts))


def _get(d: Delivery) -> DeliveryRecord:
    record = d.rt.records.get(d.delivery_id)
    assert record is not None
    return record


# -- settle ----------------------------------------------------------------------------------------
# Step 6: settle an error by the taxonomy's own data, not by an ordered ``isinstance`` chain.
#
# Every :class:`~worker.errors.DeliveryError` declares its ``policy`` (what happens next) and, by
# ``provider_fault`` / ``provider_up`` (:meth:`~worker.errors.DeliveryError.breaker_signal`),
# what the circuit breaker hears. :func:`settle_error` feeds the breaker, then runs the one
# handler registered for the policy. Budgets stay apart: only ``retry``, ``reconcile`` and
# ``fail`` count an error attempt; ``throttle`` counts a throttle; ``defer`` and ``pause`` neither.


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


# -- gate ------------------------------------------------------------------------------------------
# Step 5a: the gate a chunk's request passes right before it leaves (1 to N deliveries).
#
# It records the attempt of every delivery of the chunk (ledger ``sending``, through
# ``worker.delivery.writer``: a worker dying from here on leaves records to reconcile, by the
# request's tag for a batch), then takes **one** global limiter slot for the request, sleeping
# in-process while the wait is short and raising :class:`Later` when it is not. The slot is taken
# last, right before the bytes leave: the provider counts arrivals, so any work between grant and
# send would only add jitter to our spacing. Waiting for the limiter is never an error (it counts a
# throttle).
#
# The flow calls the gate itself between the driver's ``build`` and ``transmit``: the driver never
# calls back into the flow. A single send is a chunk of one; ``worker.delivery.batch`` passes
# chunks of many.


class NotNow(Exception):
    """A chunk of one ends before its request leaves (final meanwhile: a cancel won)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.__class__.__name__)
        self.outcome = outcome


LATE_RESERVES = 3
"""How many slots one request may reserve while its process keeps waking late for them."""


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
        self.key = first.rt.keys.limiter(
            first.provider, first.settings.egress_identity, self.bucket
        )
        self.opened = False
        self.opened_at = 0.0
        """``time.perf_counter()`` when the slot was taken (the request leaves right after)."""
        self.limiter_wait_s = 0.0
        self.attempt_log: dict[str, object] = {}

    def __call__(self) -> None:
        at = time.time()
        changed = writer.mark_sending(self.chunk, repr(at))
        if len(self.chunk) == 1 and not changed[0]:
            # Final meanwhile (a cancel won the race, atomically in the ledger): nothing leaves.
            d = self.d
            record = d.rt.records.get(d.delivery_id)
            if record is not None and record.final:
                raise NotNow(answer_from_ledger(d, record))
        if self.tag is not None:
            log.info("delivery.batch_attempt", tag=self.tag)
        ctx = self.ctx
        if ctx is not None and ctx.tag_is_callers and ctx.tag:
            writer.note_tag_use(self.d, ctx.tag, at)
        # Observed with the request, in one metrics call (:meth:`attempted`).
        self.limiter_wait_s = self._acquire()
        self.opened = True
        self.opened_at = time.perf_counter()

    def _acquire(self) -> float:
        """Reserve this request's own slot in the global limiter (``docs/limiter.md``) and
        sleep until it; a slot further ahead than the inline maximum reschedules the task."""
        d, provider, settings = self.d, self.d.provider, self.d.settings
        limits = settings.limits(provider, self.bucket)
        max_wait_s = settings.limiter_max_inline_wait_s
        if settings.lanes and d.priority != "high":
            max_wait_s = min(max_wait_s, settings.limiter_ahead_s)
        # A process that wakes later than this after its slot gives the slot up and reserves
        # again: sent late, its request would land in the next one's slot (a 429 when the
        # lateness passes the margin). The unused slot leaves the log (docs/limiter.md).
        late_s = settings.limiter_safety_margin_s / 2
        waited = later_s = 0.0
        given_up: float | None = None
        for _ in range(LATE_RESERVES):
            asked = time.perf_counter()
            slot = d.rt.limiter.reserve(
                self.key, limits, priority=d.priority, max_wait_s=max_wait_s, release_at_s=given_up
            )
            if not slot.reserved:
                later_s = slot.wait_s
                break
            if not slot.wait_s:
                break
            # The slot is on the limiter's clock, read halfway through the round trip.
            due = (asked + time.perf_counter()) / 2 + slot.wait_s
            time.sleep(max(0.0, due - time.perf_counter()))
            woke = time.perf_counter()
            waited += woke - asked
            # A provider's 429 that came while we slept holds every request, ours too.
            later_s = d.rt.limiter.hold_left(self.key)
            if later_s > 0 or woke - due <= late_s:
                break
            log.info("delivery.late_wake", late_s=round(woke - due, 3))
            given_up = slot.at_s or None
        else:
            # Late every time (an overloaded host): back to wait, not a request out of its slot.
            later_s = late_s
        if later_s > 0:
            writer.counter(provider, "throttled_ms", d.rt, int((waited + later_s) * 1000))
            metrics.limiter_rescheduled(provider)
            log.info("delivery.rate_limited", wait_s=round(later_s, 3))
            raise Later(later_s)
        if waited:
            writer.counter(provider, "throttled_ms", d.rt, int(waited * 1000))
        return waited

    def attempted(
        self, status_code: int | None, kind: str, accepted: SendOutcome | None = None
    ) -> float:
        """The request in the metrics, once (``provider_requests``); nothing when it never left
        (the gate did not open), with the limiter wait that came before it. Its duration in
        seconds; the ``delivery.attempt`` log fields are left in ``attempt_log``. ``accepted``:
        the provider accepted a chunk of one, its enqueue-to-accept time and cost go in the
        same metrics call (:func:`accepted` for each delivery of a larger chunk)."""
        if not self.opened:
            return 0.0
        d = self.d
        duration_s = time.perf_counter() - self.opened_at
        if kind == "accepted":
            status_code = 200  # drivers accept only 2xx answers; the class is what is counted
        self.attempt_log = metrics.provider_request(
            d.provider,
            d.channel,
            status_code,
            kind,
            duration_s,
            self.limiter_wait_s,
            accepted_after_s=None if accepted is None else time.time() - d.created_at,
            cost=None if accepted is None else accepted.cost,
            currency=None if accepted is None else accepted.currency,
        )
        return duration_s


# -- send ------------------------------------------------------------------------------------------
# Step 5: send a chunk of one (build → gate → transmit → classify → parse).
#
# The driver owns the wire (build, transmit, parse); this step passes the gate between build and
# transmit itself, and hands the answer on: accepted → ``sent``; a classified error →
# :func:`~worker.delivery.pipeline`.


def send_context(d: Delivery, record: DeliveryRecord, driver: Driver[Any]) -> SendContext:
    """What the driver may know besides the message: stable ids, the tag, the attempt number."""
    message = d.message
    return SendContext(
        delivery_id=d.delivery_id,
        idempotency_key=message.idempotency_key or d.delivery_id,
        attempt=record.attempts + 1,
        tag=driver.reconcile_tag(message, d.delivery_id),
        tag_is_callers=isinstance(message, SmsMessage) and message.tag is not None,
        sent_after=as_float(record.fields.get(FIRST_ATTEMPT_AT)) or time.time(),
        callback_url=_callback_url(d, driver),
    )


def _callback_url(d: Delivery, driver: Driver[Any]) -> str | None:
    settings = d.settings
    if not settings.tracking_public_url or settings.tracking_secret is None:
        return None  # tracking hints off (``callback_url`` would answer the same)
    secret = settings.tracking_secret.get_secret_value()
    return callback_url(settings.tracking_public_url, secret, driver.name, d.delivery_id)


def send(d: Delivery, record: DeliveryRecord, driver: Driver[Any], ctx: SendContext) -> Outcome:
    """A chunk of one: build, pass the gate, transmit, classify; then the outcome."""
    gate = Gate([Sending(d, record)], driver, ctx=ctx)
    try:
        request = driver.build(d.message, ctx)
        gate()
        outcome: SendOutcome = driver.parse_response(driver.transmit(request), d.message, ctx)
    except NotNow as stop:
        return stop.outcome
    except Later as stop:
        return later(d, record, stop.wait_s)
    except DeliveryError as exc:
        _attempted(d, gate, exc.status_code, exc.kind)
        # A refusal after the gate opened may hold the shared limiter key (a 429).
        held_key = gate.key if gate.opened else None
        return settle_error(d, Failure(exc, record.attempts, driver, held_key))
    _attempted(d, gate, None, "accepted", outcome)  # with its enqueue-to-accept time and cost
    if ctx.schedule_at is not None:
        d.rt.health.record_success(d.provider)
        return held_at_provider(d, outcome, record.attempts)
    return sent(d, outcome, record.attempts, answered=True)


def accepted(d: Delivery, outcome: SendOutcome) -> None:
    """An accepted send in the metrics: enqueue-to-accept time and cost."""
    metrics.accepted(
        d.provider, d.channel, time.time() - d.created_at, outcome.cost, outcome.currency
    )


def later(d: Delivery, record: DeliveryRecord, wait_s: float) -> Outcome:
    """The limiter wants this delivery's request rescheduled: a throttle, not an error."""
    writer.count_throttle(d)
    return wait(d, wait_s, "rate_limited", record.attempts)


def _attempted(
    d: Delivery,
    gate: Gate,
    status_code: int | None,
    kind: str,
    accepted: SendOutcome | None = None,
) -> None:
    """The one event and the metrics of an attempt whose request left (the gate opened)."""
    if not gate.opened:
        return
    gate.attempted(status_code, kind, accepted)
    log.info("delivery.attempt", **gate.attempt_log)


# -- reconcile -------------------------------------------------------------------------------------
# Step 4: an earlier send whose outcome is unknown is settled with the provider before any resend.
#
# A worker that died mid-send leaves the record in ``sending``; a send that timed out or whose
# check failed leaves ``outcome_unknown``. The provider may still accept such a request late, so
# it is asked only once the read timeout and the grace have passed since the send started
# (design semantics 6). If it cannot be asked, nothing is resent: the delivery waits and asks again.


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
    shared = d.rt.tag_index.tag_used_by_others(
        d.provider, ctx.tag, d.recipients(), d.delivery_id, since
    )
    if shared:
        log.warning("delivery.reconcile_ambiguous", reason="tag shared in the window")
    return shared
