"""The pool side of a batch: run :func:`~worker.delivery.batch.process_batch` and give each task
the answer Celery would have given it on the single path (``tasks._deliver``).

Per task: a final outcome is stored as its ``SUCCESS`` result; a parked one as ``PARKED`` (not
ready, as ``tasks._deliver`` does); a retry is published again under the **same task id** with
the countdown and ``retries + 1``, as ``Task.retry`` does. The main process acknowledges the
broker messages only after this function returned (``worker.batching.strategy``), so a pool
process killed here leaves them unacknowledged: Celery requeues them (``task_reject_on_worker_
lost``), except those whose ``SUCCESS`` was already stored, and the ledger decides the rest.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import states

from worker.delivery.batch import BatchEntry, for_each, process_batch
from worker.delivery.results import Outcome, Retry
from worker.runtime import get_runtime
from worker.tasknames import CHANNEL_OF_TASK

__all__ = ["PARKED", "TaskData", "run_batch"]

log = structlog.get_logger(__name__)

PARKED = "PARKED"
"""The Celery state of a parked delivery (the same as ``tasks.PARKED``)."""

TaskData = tuple[str, str, Any, int]
"""What the main process passes per task: id, task name, the message, Celery ``retries``."""


def run_batch(tasks: list[TaskData]) -> list[str]:
    """Deliver the batch; answers each task's ending (``done``, ``parked`` or ``retry``)."""
    from worker.app import app  # the pool process's app (imported lazily: no cycle)

    rt = get_runtime()
    entries = [
        BatchEntry(CHANNEL_OF_TASK[name], message, task_id, name)
        for task_id, name, message, _ in tasks
    ]
    outcomes = process_batch(entries, rt)

    def answer(pair: tuple[TaskData, Outcome]) -> str:
        (task_id, name, message, retries), outcome = pair
        if isinstance(outcome, Retry):
            # As Task.retry publishes it: same id, the countdown, retries + 1.
            options: dict[str, Any] = {"retries": retries + 1}
            app.tasks[name].apply_async(
                (message,), task_id=task_id, countdown=outcome.delay_s, **options
            )
            return "retry"
        result = outcome.result.model_dump(mode="json", exclude_none=True)
        if outcome.result.status == "parked":
            app.backend.store_result(task_id, result, PARKED)  # thread-local backend
            return "parked"
        app.backend.store_result(task_id, result, states.SUCCESS)
        return "done"

    endings = for_each(rt, answer, list(zip(tasks, outcomes, strict=True)))
    log.info("batch.done", tasks=len(tasks), retries=endings.count("retry"))
    return endings
