"""The outcome writer: the only code of the delivery flow that writes shared state.

The steps of the flow (``record``, ``deadline``, ``routing``, ``reconcile``, ``send``, ``gate``,
``settle``, ``schedule``, ``batch``) read and decide; every write their decisions lead to is a
call here: the ledger, the hot-path scripts (``worker.stores.hotpath``), the tracking
registration, the parking lot and the Redis counters. A run is a chunk of deliveries (a single
send is a chunk of one, a provider batch a chunk of many): :func:`begin` and :func:`finish_run`
frame it, :func:`mark_sending` records the chunk's request before it leaves, :func:`suppress`
adds a refused recipient to the channel's suppression list.
``tests/unit/test_layout.py`` pins that no other module of the flow writes the ledger.

The ends of an attempt: ``sent``, ``finish`` (failed or expired), ``expire``, ``park`` and
``wait`` (reschedule, never past the deadline). Every other step ends through one of these.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import redis
import structlog
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from worker.delivery.context import (
    BATCH_TAGS,
    FIRST_ATTEMPT_AT,
    Delivery,
)
from worker.delivery.results import Done, Retry
from worker.delivery.spool import FinalWriteSpool
from worker.metrics import record as metrics
from worker.models import DeliveryResult, ErrorInfo
from worker.providers import SendOutcome
from worker.redaction import mask_email, mask_phone, scrub
from worker.runtime import Runtime
from worker.stores import DeliveryRecord
from worker.stores.hotpath import Begin, Begun, Closing, Finish, Finished
from worker.stores.ledger.base import NewRecord
from worker.stores.suppression import Reason
from worker.suppression import remember
from worker.tracking.service import registered, sent_tracking, track_sent

__all__ = [
    "Opening",
    "Sending",
    "adopt_sent",
    "begin",
    "bury",
    "chose_provider",
    "clear_mark",
    "count_attempt",
    "count_throttle",
    "counter",
    "expire",
    "failed_unread",
    "final_write",
    "finish",
    "finish_run",
    "finish_runs",
    "hold",
    "invalid",
    "mark_sending",
    "mask_ids",
    "note_tag_use",
    "outcome_known",
    "outcome_unknown",
    "park",
    "record_campaign",
    "redis_unavailable",
    "send_at_seen",
    "sent",
    "sent_at_provider_time",
    "sent_result",
    "suppress",
    "wait",
]

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
    closing = Closing("sent", fields, d.provider, metrics.SENT_COUNTER, answered, tracking)
    if d.defer_closing:
        # Written by the run's last step with the unlock (finish_run), its shared counter too.
        d.closing = closing
        metrics.finished(d.provider, d.channel, "sent", "none")
    else:
        if answered:
            d.rt.health.record_success(d.provider)
        d.rt.records.transition(d.delivery_id, "sent", **fields)
        metrics.finished(d.provider, d.channel, "sent", "none", d.rt.metrics)
        track_sent(d.rt, d.delivery_id, d.provider, outcome.provider_message_ids)
    log.info("delivery.sent", recipients=len(outcome.provider_message_ids), cost=outcome.cost)
    return Done(result)


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
        }
        if outcome.rejected_recipients
        else {},
        suppressed_recipients=dict(d.suppressed),
        attempts=previous_attempts + 1,
        cost=outcome.cost,
        currency=outcome.currency,
        warnings=list(outcome.warnings),
    )


def finish(d: Delivery, state: str, attempts: int, *, error: ErrorInfo) -> Done:
    """A final state other than ``sent`` (``failed``, ``expired``), with its error."""
    result = d.result(state, attempts, error=error)
    d.rt.records.transition(
        d.delivery_id,
        state,
        attempts=str(attempts),
        error_kind=error.kind,
        result=result.model_dump_json(),
    )
    metrics.finished(d.provider, d.channel, state, error.kind, d.rt.metrics)
    return Done(result)


def expire(d: Delivery, attempts: int, when: str) -> Done:
    log.warning("delivery.expired", when=when)
    error = ErrorInfo(kind="expired", message=f"deadline passed {when}")
    return finish(d, "expired", attempts, error=error)


def park(d: Delivery, provider: str, attempts: int, reason: str) -> Done:
    """Hold the message until the provider is resumed; neither failed nor retried."""
    d.rt.parking.park(provider, d.delivery_id, d.task_name, d.raw)
    result = d.result("parked", attempts, provider=provider)
    d.rt.records.transition(
        d.delivery_id, "parked", parked_reason=reason[:200], result=result.model_dump_json()
    )
    metrics.parked(provider, d.channel, d.rt.metrics)
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
        # (worker.delivery.pipeline). Still never beyond the broker's visibility timeout.
        delay_s = min(delay_s, d.settings.retry_backoff_max_s)
    elif remaining <= 0:
        return expire(d, attempts, f"while {reason.replace('_', ' ')}")
    else:
        # Never past the deadline, nor beyond the broker's visibility timeout.
        delay_s = min(delay_s, d.settings.retry_backoff_max_s, remaining)
    d.rt.records.transition(d.delivery_id, "waiting", waiting_reason=reason)
    return Retry(max(delay_s, 0.0), reason, d.result("waiting", attempts))


# -- the frame of a run: the hot path's first and last scripts ----------------------------------


@dataclass(frozen=True)
class Opening:
    """One delivery of a chunk whose run begins."""

    d: Delivery
    token: str
    providers: Sequence[str]
    mark: tuple[str, str] | None = None
    suppress: tuple[str, Sequence[str]] | None = None
    """(channel, recipient keys) to look up in the channel's suppression list."""


def begin(chunk: Sequence[Opening]) -> list[Begun]:
    """The chunk's first script (``HotPath.begin_chunk``, one round trip); a delivery sent by
    name, never seen by a producer, is recorded on first sight (idempotent) and begun again."""
    if not chunk:
        return []
    rt = chunk[0].d.rt
    ttl_s = rt.settings.send_lock_ttl_s
    args = [Begin(o.d.delivery_id, o.token, ttl_s, o.providers, o.mark, o.suppress) for o in chunk]
    begun = rt.hotpath.begin_chunk(args)
    missing = [i for i, b in enumerate(begun) if b.status == "missing"]
    for i in missing:
        d = chunk[i].d
        d.rt.records.create(
            d.delivery_id,
            channel=d.channel,
            provider=d.message.provider or "auto",
            extra={"task_name": d.task_name, "message": json.dumps(d.raw)},
        )
    if missing:
        again = rt.hotpath.begin_chunk([replace(args[i], mark=None) for i in missing])
        for i, b in zip(missing, again, strict=True):
            begun[i] = b
    return begun


def clear_mark(rt: Runtime, mark: tuple[str, str]) -> None:
    """The guard's main-process mark of a run that never begins (its message is unreadable)."""
    rt.hotpath.clear_mark(mark)


def finish_run(d: Delivery, token: str, *, finished: bool) -> None:
    """:func:`finish_runs` for a chunk of one."""
    finish_runs([(d, token, finished)])


def finish_runs(chunk: Sequence[tuple[Delivery, str, bool]]) -> None:
    """The chunk's last script (``HotPath.finish_chunk``, one round trip), per delivery: the
    ``sent`` left in ``d.closing`` (if any), the run count back to 0 when the run finished
    (reached an outcome), and the unlock, all only while the run still holds its lock; then
    what follows a closing write outside Redis.

    Redis unavailable: each delivery's write is retried on its own (:func:`final_write`), then
    kept in the local spool; a sent message is never reported failed."""
    if not chunk:
        return
    args = []
    for d, token, finished in chunk:
        closing, d.closing = d.closing, None
        d.defer_closing = False
        args.append(Finish(d.delivery_id, token, finished, closing))
    rt = chunk[0][0].rt
    if len(chunk) == 1:
        d, f = chunk[0][0], args[0]
        done = [final_write(d, f.token, reset_runs=f.reset_runs, closing=f.closing)]
    else:
        try:
            done = rt.hotpath.finish_chunk(args)
        except Exception as exc:
            if not redis_unavailable(exc):
                raise
            # A write of the chunk may have landed before the connection failed: its retry
            # finds the lock released and keeps its closing aside (late_outcome), never sent
            # again (worker.delivery.pipeline adopts it).
            done = [
                final_write(d, f.token, reset_runs=f.reset_runs, closing=f.closing)
                for (d, _, _), f in zip(chunk, args, strict=True)
            ]
    for (d, _, _), f, answer in zip(chunk, args, done, strict=True):
        if answer.lock_lost:
            # The run outlived its send lock (worker.http bounds a request well below it, so
            # this takes a stalled process). Its closing was kept for the next run to adopt.
            log.warning(
                "delivery.lock_lost",
                state=f.closing.state if f.closing is not None else None,
                lock_ttl_s=d.settings.send_lock_ttl_s,
            )
        elif f.closing is not None:
            _closed(d, f.closing, answer)


_REDIS_PASSING = (
    redis.ConnectionError,  # includes BusyLoadingError (LOADING after a restart)
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,  # OOM: maxmemory reached with noeviction
    redis.exceptions.ReadOnlyError,  # READONLY: a replica, before or during a failover
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
    redis.exceptions.ClusterDownError,
)
_REDIS_PASSING_REPLIES = ("OOM", "READONLY", "LOADING", "MASTERDOWN", "BUSY", "TRYAGAIN")
"""Error replies that pass (memory freed, a failover's new master, a restart's load); redis-py
maps most to the classes above and strips the code, the rest are matched by their code."""


def redis_unavailable(exc: BaseException) -> bool:
    """Redis cannot take a write now but will: connection lost, timeout, or a passing refusal."""
    if isinstance(exc, _REDIS_PASSING):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_REDIS_PASSING_REPLIES)


def final_write(
    d: Delivery,
    token: str,
    *,
    reset_runs: bool,
    closing: Closing | None,
    sleep: Callable[[float], None] = time.sleep,
) -> Finished:
    """The run's last step, retried while Redis is unavailable (``final_write_retry_s``).

    A ``sent`` the provider accepted must not turn into a failed task because Redis refused
    the write: if it still refuses after the retries, the write is kept in the local spool
    (replayed at the next worker start) and the run's outcome stands.
    """
    retrying = Retrying(
        retry=retry_if_exception(redis_unavailable),
        stop=stop_after_delay(d.settings.final_write_retry_s),
        wait=wait_exponential(multiplier=0.05, max=2.0) + wait_random(0, 0.05),
        sleep=sleep,
        reraise=True,
        before_sleep=lambda state: log.warning(
            "delivery.final_write_retry",
            try_number=state.attempt_number,
            error=type(state.outcome.exception()).__name__ if state.outcome else None,
        ),
    )
    try:
        for attempt in retrying:
            with attempt:
                return d.rt.hotpath.finish(
                    d.delivery_id, token, reset_runs=reset_runs, closing=closing
                )
    except Exception as exc:
        if not redis_unavailable(exc):
            raise
        if closing is None:
            # Nothing final to lose: the lock expires on its own, the run counts as unfinished.
            log.warning("delivery.final_write_failed", error=type(exc).__name__)
            return Finished()
        kept = FinalWriteSpool(d.settings.spool_dir).keep(
            d.delivery_id, closing.state, closing.fields
        )
        log.error(
            "delivery.final_write_spooled" if kept else "delivery.final_write_lost",
            state=closing.state,
            error=type(exc).__name__,
        )
        return Finished()
    raise AssertionError("unreachable")  # pragma: no cover


def _closed(d: Delivery, closing: Closing, done: Finished) -> None:
    """The breaker hears the success (when it has state), the application hears of the send
    (tracking)."""
    if done.breaker_state:
        try:
            d.rt.health.record_success(closing.provider)
        except Exception as exc:  # the send is recorded: a lost success only delays a close
            log.warning("breaker.success_not_recorded", error=type(exc).__name__)
    t = closing.tracking
    if t is not None and (t.notify or done.tracking_error is not None):
        registered(d.rt, d.delivery_id, t, done.tracking_error)


def bury(d: Delivery, crashed_runs: int, attempts: int) -> Done:
    """A poison message: its worker died in ``crashed_runs`` runs in a row."""
    reason = f"its worker died in {crashed_runs} runs in a row"
    d.rt.dead_letters.bury(d.delivery_id, reason=reason, task_name=d.task_name, message=d.raw)
    log.error("delivery.dead_letter", reason=reason, action="delivery-worker dead replay ID")
    result = d.result("dead", attempts, error=ErrorInfo(kind="dead_letter", message=reason))
    d.rt.records.record_result(d.delivery_id, result.model_dump_json())
    metrics.finished(d.provider, d.channel, "dead", "dead_letter")
    return Done(result)


def invalid(rt: Runtime, delivery_id: str, task_name: str, result: DeliveryResult) -> Done:
    """An unreadable message, final in the ledger too (a by-name message has no record yet):
    no content kept."""
    channel = result.channel
    rt.records.create(delivery_id, channel=channel, provider="auto", extra={"task_name": task_name})
    rt.records.transition(
        delivery_id, "failed", error_kind="invalid_message", result=result.model_dump_json()
    )
    metrics.finished("", channel, "failed", "invalid_message")
    return Done(result)


# -- the request of a chunk -------------------------------------------------------------------


@dataclass
class Sending:
    """One delivery of a chunk whose request is about to leave."""

    d: Delivery
    record: DeliveryRecord
    batch_tags: list[str] | None = None
    """The tags of the batch requests that carried it, this one last (``None``: alone)."""


def mark_sending(chunk: Sequence[Sending], now: str) -> list[bool]:
    """Every delivery of the chunk ``sending`` before its request leaves (a worker dying from
    here on leaves records to reconcile); per delivery, whether it changed (``False``: final
    meanwhile, a cancel won the race)."""
    calls = []
    for item in chunk:
        fields = {"attempt_started_at": now}
        if FIRST_ATTEMPT_AT not in item.record.fields:
            fields[FIRST_ATTEMPT_AT] = now
        if item.batch_tags is not None:
            fields[BATCH_TAGS] = " ".join(item.batch_tags)
        calls.append((item.d.delivery_id, fields))
    # The chunk's second script (begin, sending, finish): one call for the whole chunk.
    return chunk[0].d.rt.hotpath.sending_chunk(calls)


def note_tag_use(d: Delivery, tag: str, at: float) -> None:
    """The caller's own tag, used for these numbers (reconciliation tells them apart)."""
    d.rt.tag_index.note_tag_use(d.provider, tag, d.recipients(), d.delivery_id, at)


# -- counters and marks -------------------------------------------------------------------------


def chose_provider(d: Delivery, provider: str) -> None:
    d.rt.records.record_provider(d.delivery_id, provider)


def count_attempt(d: Delivery) -> int:
    """One more error attempt; the count after it."""
    return d.rt.records.incr(d.delivery_id, "attempts")


def count_throttle(d: Delivery) -> None:
    """One more wait that is not an error (a limiter, a breaker, a provider's Retry-After)."""
    d.rt.records.incr(d.delivery_id, "throttled")


def counter(provider: str, name: str, rt: Runtime, by: int = 1) -> None:
    """A provider's shared counter (``delivery-worker providers``), through the metrics
    facade (:func:`worker.metrics.record.count`)."""
    metrics.count(rt.metrics, provider, name, by)


def outcome_unknown(
    d: Delivery, *, ask_at: float | None = None, gave_up: str | None = None
) -> None:
    """An earlier send's outcome is unknown: ask the provider (after ``ask_at``) before any
    resend; ``gave_up``: the error (JSON) to fail with if the provider has not seen it."""
    d.rt.records.mark_outcome_unknown(d.delivery_id, ask_at=ask_at, gave_up=gave_up)


def outcome_known(d: Delivery) -> None:
    """The provider was asked and has not seen the earlier send: it may be sent again."""
    d.rt.records.mark_outcome_known(d.delivery_id)


def send_at_seen(d: Delivery, send_at: float) -> None:
    d.rt.records.record_send_at(d.delivery_id, send_at)


def hold(d: Delivery, due: float, **fields: str) -> bool:
    """On the ledger's durable schedule until ``due`` (state ``scheduled``)."""
    return d.rt.schedule.hold(d.delivery_id, due, **fields)


def adopt_sent(d: Delivery, fields: dict[str, str]) -> None:
    """An earlier run's ``sent``, kept aside when it outlived its lock, written by this run
    (with its unlock, while it holds the lock)."""
    closing = Closing("sent", fields, d.provider, metrics.SENT_COUNTER)
    if d.defer_closing:
        d.closing = closing
    else:
        d.rt.records.transition(d.delivery_id, "sent", **fields)


def sent_at_provider_time(d: Delivery, provider: str, due: float, stored: str) -> None:
    """A send the provider held for its time: ``sent`` once that time has come."""
    d.rt.records.transition(d.delivery_id, "sent", sent_at=repr(due), result=stored)
    metrics.count(d.rt.metrics, provider, metrics.SENT_COUNTER)


def suppress(d: Delivery, recipient: str, reason: Reason) -> None:
    """A provider refused ``recipient`` for good: never sent to again on its channel, by any
    provider (``worker.suppression.remember``; never raises)."""
    remember(d.rt, d.channel, recipient, reason, "send", d.provider)


def failed_unread(d: Delivery, result: DeliveryResult) -> Done:
    """Failed before any send: the message cannot be sent as it stands."""
    d.rt.records.transition(
        d.delivery_id, "failed", error_kind="invalid_message", result=result.model_dump_json()
    )
    return Done(result)


def record_campaign(rt: Runtime, records: Sequence[NewRecord]) -> list[tuple[str, bool]]:
    """The by-name campaign task's records (``tasks.send_many``), created as the producer
    creates them, in one script call before its chunk runs."""
    return rt.records.create_many(records)
