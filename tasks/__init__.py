"""The three public tasks. Thin as web views: validate, call the service, map to Celery.

Registered as ``tasks.send_email``, ``tasks.send_sms`` and ``tasks.send_voice``; each takes the
message dict and returns the result dict (see ``worker.models.DeliveryResult``).
"""

from __future__ import annotations

from typing import Any

from celery import Task

from worker.app import app
from worker.runtime import get_runtime
from worker.service import Retry, process

__all__ = ["send_email", "send_sms", "send_voice"]


def _deliver(task: Task[Any, Any], channel: str, message: Any) -> dict[str, Any]:
    outcome = process(
        channel,
        message,
        delivery_id=str(task.request.id),
        task_name=str(task.name),
        rt=get_runtime(),
    )
    if isinstance(outcome, Retry):
        # Same task id and message; budgets are counted in the ledger, not by Celery.
        raise task.retry(countdown=outcome.delay_s, max_retries=None)
    return outcome.result.model_dump(mode="json", exclude_none=True)


@app.task(bind=True, name="tasks.send_email", max_retries=None)
def send_email(self: Task[Any, Any], message: dict[str, Any]) -> dict[str, Any]:
    return _deliver(self, "email", message)


@app.task(bind=True, name="tasks.send_sms", max_retries=None)
def send_sms(self: Task[Any, Any], message: dict[str, Any]) -> dict[str, Any]:
    return _deliver(self, "sms", message)


@app.task(bind=True, name="tasks.send_voice", max_retries=None)
def send_voice(self: Task[Any, Any], message: dict[str, Any]) -> dict[str, Any]:
    return _deliver(self, "voice", message)
