"""Step 1: the ledger record, and the crash-safety guard around the rest of the attempt.

The record is created on first sight (idempotent) and re-read under the delivery's lock. A
final record answers from the ledger, never from the provider again. A run killed mid-way
(SIGKILL, OOM, a hard time limit) leaves ``runs_unfinished`` raised; after
``max_unfinished_runs`` such runs the message is a poison message and is buried as a dead
letter instead of killing more workers.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import redis
import structlog
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from worker.delivery.context import Delivery
from worker.delivery.results import Done, Outcome, Retry
from worker.delivery.routing import candidates
from worker.delivery.spool import FinalWriteSpool
from worker.delivery.suppress import lookup
from worker.metrics import record as metrics
from worker.models import DeliveryResult, ErrorInfo
from worker.stores import DeliveryRecord
from worker.stores.hotpath import Closing, Finished
from worker.tracking.service import registered

__all__ = [
    "answer_from_ledger",
    "enter",
    "final_write",
    "guarded",
    "leave",
    "load",
    "redis_unavailable",
]

log = structlog.get_logger(__name__)


def guarded(
    d: Delivery, run: Callable[[Delivery], Outcome], *, mark: tuple[str, str] | None = None
) -> Outcome:
    """``run`` under the delivery's lock, counting runs that never finished.

    Two shared-state round trips frame the run (``worker.stores.hotpath``): the first clears
    the guard's ``mark``, reads the record and, unless it is final, takes the lock, counts the
    run and reads the candidate providers' health; the last writes a ``sent`` the run left in
    ``d.closing``, the run count back to 0 (a finished run), and the unlock.
    """
    hot = d.rt.hotpath
    token = uuid.uuid4().hex
    providers = candidates(d)
    ttl_s = d.settings.send_lock_ttl_s
    suppress = lookup(d)
    begun = hot.begin(
        d.delivery_id, token, ttl_s, providers=providers, mark=mark, suppress=suppress
    )
    if begun.status == "missing":
        # Sent by name, not through a producer: recorded on first sight (idempotent).
        d.rt.ledger.create(
            d.delivery_id,
            channel=d.channel,
            provider=d.message.provider or "auto",
            extra={"task_name": d.task_name, "message": json.dumps(d.raw)},
        )
        begun = hot.begin(d.delivery_id, token, ttl_s, providers=providers, suppress=suppress)
    record = begun.record
    assert record is not None
    d.begun = begun
    if begun.status == "final":
        return run(d)
    if begun.status == "busy":
        # Another copy of this delivery is running, or died holding the lock: wait for it
        # (the lock expires) rather than risk sending twice.
        log.info("delivery.concurrent_copy", retry_in_s=round(begun.busy_s, 3))
        waiting = d.result(record.state, record.attempts)
        return Retry(begun.busy_s + 0.05, "concurrent_copy", waiting)
    finished_run = False
    d.defer_closing = True
    try:
        if begun.runs > d.settings.max_unfinished_runs:
            return _bury(d, begun.runs - 1, record.attempts)
        outcome = run(d)
        finished_run = True
        return outcome
    finally:
        d.defer_closing = False
        closing, d.closing = d.closing, None
        done = final_write(d, token, reset_runs=finished_run, closing=closing)
        if done.lock_lost:
            # The run outlived its send lock (worker.http bounds a request well below it, so
            # this takes a stalled process). Its closing was kept for the next run to adopt.
            log.warning(
                "delivery.lock_lost",
                state=closing.state if closing is not None else None,
                lock_ttl_s=ttl_s,
            )
        elif closing is not None:
            _closed(d, closing, done)


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
    """What follows a closing write outside Redis: the breaker hears the success (when it has
    state), the application hears of the send (tracking)."""
    if done.breaker_state:
        try:
            d.rt.health.record_success(closing.provider)
        except Exception as exc:  # the send is recorded: a lost success only delays a close
            log.warning("breaker.success_not_recorded", error=type(exc).__name__)
    if closing.tracking is not None:
        registered(d.rt, d.delivery_id, closing.tracking, done.tracking_error)


def enter(d: Delivery) -> str | Outcome | None:
    """Create the record, take the delivery's lock and count this run (a batch holds several).

    The lock token to :func:`leave` with; an outcome when this run must not go on (a concurrent
    copy holds the lock, or the message is buried); ``None`` when the record is already final
    (no lock needed: the ledger answers)."""
    ledger = d.rt.ledger
    ledger.create(
        d.delivery_id,
        channel=d.channel,
        provider=d.message.provider or "auto",
        extra={"task_name": d.task_name, "message": json.dumps(d.raw)},
    )
    record = _get(d)
    if record.final:
        return None
    token = uuid.uuid4().hex
    busy_s = ledger.lock(d.delivery_id, token, d.settings.send_lock_ttl_s)
    if busy_s > 0:
        # Another copy of this delivery is running, or died holding the lock: wait for it
        # (the lock expires) rather than risk sending twice.
        log.info("delivery.concurrent_copy", retry_in_s=round(busy_s, 3))
        waiting = d.result(record.state, record.attempts)
        return Retry(busy_s + 0.05, "concurrent_copy", waiting)
    runs = ledger.incr(d.delivery_id, "runs_unfinished")
    if runs > d.settings.max_unfinished_runs:
        try:
            return _bury(d, runs - 1, record.attempts)
        finally:
            ledger.unlock(d.delivery_id, token)
    return token


def leave(d: Delivery, token: str, *, finished: bool) -> None:
    """Release the lock; a run that ``finished`` (reached an outcome) is no longer unfinished."""
    try:
        if finished:
            d.rt.ledger.set_fields(d.delivery_id, runs_unfinished="0")
    finally:
        d.rt.ledger.unlock(d.delivery_id, token)


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


def _bury(d: Delivery, crashed_runs: int, attempts: int) -> Done:
    reason = f"its worker died in {crashed_runs} runs in a row"
    d.rt.ledger.bury(d.delivery_id, reason=reason, task_name=d.task_name, message=d.raw)
    log.error("delivery.dead_letter", reason=reason, action="delivery-worker dead replay ID")
    result = d.result("dead", attempts, error=ErrorInfo(kind="dead_letter", message=reason))
    d.rt.ledger.set_fields(d.delivery_id, result=result.model_dump_json())
    metrics.finished(d.provider, d.channel, "dead", "dead_letter")
    return Done(result)


def _get(d: Delivery) -> DeliveryRecord:
    record = d.rt.ledger.get(d.delivery_id)
    assert record is not None
    return record
