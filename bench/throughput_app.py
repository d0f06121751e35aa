"""The anchor for ``bench/throughput.py``: a hand-written Celery task sending one SMS Partner SMS.

What a careful hand-written sender looks like: late acknowledgement, prefetch 1, one httpx
POST of the SMS Partner ``/send`` JSON (docs/providers/smspartner.md §1.2.2), the HTTP status as the
result. No ledger, no limiter, no retries: it measures what Celery and one HTTP request cost, so
``throughput.py`` can show what delivery-worker adds on top.

Run by the benchmark as ``celery -A throughput_app worker`` with this directory on
``PYTHONPATH``. Configuration comes from the environment (set by the benchmark):

- ``BENCH_BROKER_URL``, ``BENCH_RESULT_BACKEND``: the benchmark's Redis instances;
- ``BENCH_SMSPARTNER_URL``: the SMS Partner API root (the sandbox's ``/smspartner/v1``);
- ``BENCH_SMSPARTNER_API_KEY``: its API key (sent in the JSON body, as SMS Partner wants).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import httpx
from celery import Celery, signals

__all__ = ["QUEUE", "TASK_NAME", "anchor_sms", "app"]

TASK_NAME = "bench.anchor_sms"
QUEUE = "anchor"

app = Celery(
    "throughput_app",
    broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/4"),
    backend=os.environ.get("BENCH_RESULT_BACKEND", "redis://127.0.0.1:6379/5"),
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)

_client: httpx.Client | None = None
_client_pid: int | None = None
_lock = threading.Lock()


def _http() -> httpx.Client:
    """One client per worker process, created after the prefork fork; shared by threads."""
    global _client, _client_pid
    with _lock:
        if _client is None or _client_pid != os.getpid():
            _client = httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0))
            _client_pid = os.getpid()
        return _client


@signals.worker_process_init.connect
def _warm_process(**_kwargs: Any) -> None:
    """Build the pool process's client before any task, as delivery-worker does: creating an
    httpx client (its TLS context) costs milliseconds of CPU that no message should carry."""
    _http()


@signals.worker_init.connect
def _warm_worker(**_kwargs: Any) -> None:
    """The same for the threads pool, whose tasks run in the worker process itself."""
    _http()


@app.task(name=TASK_NAME, acks_late=True, max_retries=0)
def anchor_sms(number: str, text: str, tag: str) -> int:
    """POST one SMS Partner ``/send``; return the HTTP status (0 when no answer came back)."""
    url = os.environ["BENCH_SMSPARTNER_URL"].rstrip("/") + "/send"
    payload: dict[str, Any] = {
        "apiKey": os.environ["BENCH_SMSPARTNER_API_KEY"],
        "phoneNumbers": number,
        "message": text,
        "tag": tag,
    }
    try:
        response = _http().post(url, json=payload, headers={"Cache-Control": "no-cache"})
    except httpx.HTTPError:
        return 0
    return response.status_code
