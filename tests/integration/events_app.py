"""Test-only: the application side of ``DELIVERY_EVENTS_TASK``.

A separate Celery app (as a user's would be) whose task ``trackapp.record_event`` appends each
delivery event it receives to the Redis list ``test:app-events``. Run as
``celery -A events_app worker -Q delivery-events`` with this directory on ``PYTHONPATH`` and
``EVENTS_BROKER_URL`` set.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery

app = Celery("trackapp", broker=os.environ.get("EVENTS_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
EVENTS_KEY = "test:app-events"


@app.task(name="trackapp.record_event")
def record_event(event: dict[str, Any]) -> None:
    client = redis.Redis.from_url(os.environ.get("EVENTS_BROKER_URL", "redis://127.0.0.1:6379/0"))
    client.rpush(EVENTS_KEY, json.dumps(event))
    client.close()
