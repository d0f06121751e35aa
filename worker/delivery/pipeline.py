"""The pipeline: one attempt at one message, as a sequence of steps.

Each step is a function of the :class:`~worker.delivery.context.Delivery` that either lets the
attempt go on or ends it with an outcome (:class:`Done` or :class:`Retry`).
"""

from __future__ import annotations

from typing import Any

import structlog

from worker.delivery import writer
from worker.delivery.context import Delivery
from worker.delivery.deadline import check_time
from worker.delivery.reconcile import settle_earlier_send
from worker.delivery.record import answer_from_ledger, close_run, load, open_run
from worker.delivery.results import Outcome, failed_result
from worker.delivery.routing import choose_provider
from worker.delivery.schedule import at_provider_run, hold_if_early, native_context
from worker.delivery.send import send, send_context
from worker.delivery.settle import Failure, settle_error
from worker.delivery.suppress import apply as suppression
from worker.errors import DeliveryError
from worker.models import InvalidMessage
from worker.providers import Driver, SendContext, parse_message
from worker.runtime import Runtime
from worker.stores import DeliveryRecord
from worker.stores.keys import keys_for

__all__ = ["invalid", "prepare", "process"]

log = structlog.get_logger(__name__)


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
    stop = suppression(d, record.attempts)
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
