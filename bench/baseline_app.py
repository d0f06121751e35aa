"""The baseline for ``bench/rate_limit.py``: a plain Celery task limited by Celery's ``rate_limit``.

This is what a hand-written sender usually looks like: one task, ``rate_limit="10/s"``, late
acknowledgement, no retries. Celery applies ``rate_limit`` per worker instance (docs/design.md
§9; celery/celery#5732), so P worker processes may send P times the provider's limit; a 429
from the provider is simply counted as a refusal.

Run by the benchmark as ``celery -A baseline_app worker`` with this directory on ``PYTHONPATH``.
Configuration comes from the environment (set by the benchmark):

- ``BENCH_BROKER_URL``, ``BENCH_RESULT_BACKEND``: the benchmark's Redis;
- ``BENCH_EMAILMASSIVO_URL``: the EmailMassivo API root (the sandbox's ``/emailmassivo``);
- ``BENCH_EMAILMASSIVO_API_KEY``: its API key.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urljoin

import httpx
from celery import Celery

__all__ = ["app", "plain_send"]

TASK_NAME = "bench.plain_send"
QUEUE = "plain"
SEND_PATH = "api/v1/external-mails/send"

app = Celery(
    "baseline_app",
    broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/2"),
    backend=os.environ.get("BENCH_RESULT_BACKEND", "redis://127.0.0.1:6379/3"),
)
# Celery's defaults otherwise (prefetch multiplier included): the baseline is a plain task.
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
)

_client: httpx.Client | None = None
_client_pid: int | None = None


def _http() -> httpx.Client:
    """One client per worker process (created after the prefork fork, never shared)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0))
        _client_pid = os.getpid()
    return _client


@app.task(name=TASK_NAME, rate_limit="10/s", acks_late=True, max_retries=0)
def plain_send(payload: dict[str, Any]) -> int:
    """POST one EmailMassivo send; return the HTTP status (0 when no answer came back)."""
    base = os.environ["BENCH_EMAILMASSIVO_URL"].rstrip("/") + "/"
    try:
        response = _http().post(
            urljoin(base, SEND_PATH),
            json=payload,
            headers={"X-Api-Key": os.environ["BENCH_EMAILMASSIVO_API_KEY"]},
        )
    except httpx.HTTPError:
        return 0
    return response.status_code
