"""The three public tasks. Thin as web views: validate, call the service, map to Celery.

Registered as ``tasks.send_email``, ``tasks.send_sms`` and ``tasks.send_voice``; each takes the
message dict and returns the result dict (see ``worker.models.DeliveryResult``).
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from tasks import tracking  # noqa: F401  (registers the tracking tasks)
from worker.app import RedactedRequest, app
from worker.delivery import Retry, process
from worker.delivery.campaign import chunk_items, run_chunk, run_send_many
from worker.guard.refusals import GUARD_HEADER
from worker.lanes import send_back
from worker.ops.operations import Operations
from worker.runtime import get_runtime
from worker.tasknames import SEND_CHUNK_TASK, SEND_MANY_TASK

__all__ = [
    "PARKED",
    "SCHEDULED",
    "check_balances",
    "send_chunk",
    "send_email",
    "send_many",
    "send_sms",
    "send_voice",
    "sweep",
]

log = structlog.get_logger(__name__)

SCHEDULED = "SCHEDULED"
"""Celery state of a delivery held until its ``send_at`` (in our schedule or at the provider)."""
PARKED = "PARKED"
"""Celery state of a delivery parked while its provider is paused (out of credit)."""


def _deliver(task: Task[Any, Any], channel: str, message: Any) -> dict[str, Any]:
    rt = get_runtime()
    try:
        outcome = process(
            channel,
            message,
            delivery_id=str(task.request.id),
            task_name=str(task.name),
            rt=rt,
            guard_token=_guard_token(task),
        )
    except SoftTimeLimitExceeded:
        # A stalled run (worker.app, task_soft_time_limit): its send may have reached the
        # provider. The retry runs after the reconcile grace and settles it (the record is
        # still ``sending``) before anything is sent again; never a FAILURE for a maybe-sent.
        log.error("delivery.soft_time_limit", retry_in_s=rt.settings.reconcile_grace_s)
        raise task.retry(countdown=rt.settings.reconcile_grace_s, max_retries=None) from None
    if isinstance(outcome, Retry):
        if (
            outcome.reason == "rate_limited"
            and _from_the_lanes_queue(task)
            and send_back(rt.records, rt.settings, str(task.request.id), message, outcome.delay_s)
        ):
            # Back into its lane, due when the limiter may have a slot (worker.lanes): the
            # dispatcher publishes it again then, in lane order; this message is done.
            raise Ignore()
        # Same task id and message; budgets are counted in the ledger, not by Celery.
        raise task.retry(countdown=outcome.delay_s, max_retries=None)
    result = outcome.result.model_dump(mode="json", exclude_none=True)
    if outcome.result.status == "scheduled":
        # Held until its send_at (worker.scheduling): not finished, like a parked delivery.
        task.update_state(state=SCHEDULED, meta=result)
        raise Ignore()
    if outcome.result.status == "parked":
        # Not a ready state: the result backend keeps SUCCESS final (Celery's dedup guard), and
        # a parked delivery is not finished. ``AsyncResult.state`` reads PARKED with this dict
        # as ``info``; ``get()`` waits until the re-run after a resume stores the real outcome.
        task.update_state(state=PARKED, meta=result)
        raise Ignore()
    return result


def _from_the_lanes_queue(task: Task[Any, Any]) -> bool:
    """Whether the task came from the queue the lanes' dispatchers feed (the default queue). A
    message published to a queue of its own (``queue=``) never waited in a lane and must not
    be moved into one: the dispatcher would publish it to the default queue instead of its
    own. It retries through the broker, on its queue."""
    info = getattr(task.request, "delivery_info", None) or {}
    return bool(info.get("routing_key") == task.app.conf.task_default_queue)


def _guard_token(task: Task[Any, Any]) -> str | None:
    """The token of the main process that marked this task (``worker.guard``), if any."""
    token = getattr(task.request, GUARD_HEADER, None)
    return token if isinstance(token, str) else None


@app.task(bind=True, name="tasks.send_email", max_retries=None, Request=RedactedRequest)
def send_email(self: Task[Any, Any], message: dict[str, Any]) -> dict[str, Any]:
    return _deliver(self, "email", message)


# Strategy: with DELIVERY_BATCHING on, the worker coalesces these into provider batches
# (worker.batching); off, it is Celery's default strategy.
@app.task(
    bind=True,
    name="tasks.send_sms",
    max_retries=None,
    Request=RedactedRequest,
    Strategy="worker.batching.strategy:batching_strategy",
)
def send_sms(self: Task[Any, Any], message: dict[str, Any]) -> dict[str, Any]:
    return _deliver(self, "sms", message)


@app.task(bind=True, name="tasks.send_voice", max_retries=None, Request=RedactedRequest)
def send_voice(self: Task[Any, Any], message: dict[str, Any]) -> dict[str, Any]:
    return _deliver(self, "voice", message)


@app.task(
    bind=True,
    name=SEND_CHUNK_TASK,
    max_retries=None,
    ignore_result=True,
    Request=RedactedRequest,
)
def send_chunk(self: Task[Any, Any], chunk: dict[str, Any]) -> dict[str, Any]:
    """A campaign's chunk (``worker.campaign``): each delivery already recorded by
    ``worker.producer.send_many``; each outcome stored under its own delivery id."""
    parsed = chunk_items(chunk)
    if isinstance(parsed, str):
        log.warning("campaign.chunk_refused", reason=parsed)
        return {"refused": parsed}
    channel, items = parsed
    return dict(run_chunk(app, channel, items, get_runtime()))


@app.task(bind=True, name=SEND_MANY_TASK, max_retries=None, Request=RedactedRequest)
def send_many(self: Task[Any, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """By name: ``{"channel": ..., "messages": [...]}`` (at most ``MAX_PER_TASK``); answers
    ``{"delivery_ids": [...] in input order, "errors": {index: reason}}``."""
    return run_send_many(app, str(self.request.id), payload, get_runtime())


@app.task(name="tasks.check_balances", Request=RedactedRequest)
def check_balances() -> dict[str, str]:
    """Periodic (beat): resume paused providers whose balance shows credit again."""
    rt = get_runtime()
    return Operations.for_runtime(rt, app).check_balances(rt.driver)


@app.task(name="tasks.sweep", Request=RedactedRequest)
def sweep() -> dict[str, int]:
    """Periodic (beat): re-enqueue deliveries stuck in queued/sending/waiting past a timeout."""
    return Operations.for_runtime(get_runtime(), app).sweep()
