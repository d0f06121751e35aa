"""Step 1: the ledger record, and the crash-safety frame around the rest of the run.

The record is created on first sight (idempotent) and re-read under the delivery's lock. A
final record answers from the ledger, never from the provider again. A run killed mid-way
(SIGKILL, OOM, a hard time limit) leaves ``runs_unfinished`` raised; after
``max_unfinished_runs`` such runs the message is a poison message and is buried as a dead
letter instead of killing more workers.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import structlog

from worker.delivery import writer
from worker.delivery.context import Delivery
from worker.delivery.results import Done, Outcome, Retry
from worker.delivery.routing import candidates
from worker.delivery.suppress import lookup
from worker.models import DeliveryResult
from worker.stores import DeliveryRecord
from worker.stores.hotpath import Begun

__all__ = ["answer_from_ledger", "close_run", "close_runs", "load", "open_run", "open_runs"]

log = structlog.get_logger(__name__)


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
        writer.Opening(d, uuid.uuid4().hex, candidates(d), mark, lookup(d))
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
    record = d.rt.ledger.get(d.delivery_id)
    assert record is not None
    return record
