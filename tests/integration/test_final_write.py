"""A sent message is never reported failed: the final write survives Redis refusing writes.

Real processes: the broker's redis-server, a second redis-server for the shared state
(``DELIVERY_REDIS_URL``), the sandbox over a socket and a ``celery worker``. While the
provider's answer is on its way, the shared Redis starts refusing every write (``maxmemory 1``
with ``noeviction``: ``OOM command not allowed``); a timer thread restores it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from devstack.processes import Proc, start_redis, start_worker
from worker.app import client_app
from worker.producer import Producer
from worker.stores import RedisLedger

from .conftest import SandboxAdmin, wait_ready

pytestmark = pytest.mark.integration

ANSWER_DELAY_MS = 3000
"""The sandbox holds the answer this long: the window in which the shared Redis is made full."""
OOM_FOR_S = 4.0
"""How long the shared Redis refuses writes (below the final write's 30 s of retries)."""


@pytest.fixture
def shared_redis(tmp_path: Path) -> Iterator[tuple[Proc, redis.Redis]]:
    proc = start_redis(tmp_path / "shared", appendonly=False)
    client = redis.Redis.from_url(str(proc.extra["url"]) + "/0")
    yield proc, client
    client.close()
    proc.stop()


@pytest.fixture
def own_env(stack_env: dict[str, str], redis_url: str) -> dict[str, str]:
    """A broker and result database of its own: the session's worker must not take the task."""
    return {
        **stack_env,
        "DELIVERY_BROKER_URL": f"{redis_url}/7",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/8",
    }


@pytest.fixture
def own_client(own_env: dict[str, str]) -> Celery:
    return client_app(
        own_env["DELIVERY_BROKER_URL"], own_env["DELIVERY_RESULT_BACKEND"], name="oom-tests"
    )


@pytest.fixture
def oom_worker(
    own_env: dict[str, str],
    own_client: Celery,
    shared_redis: tuple[Proc, redis.Redis],
    tmp_path: Path,
) -> Iterator[Proc]:
    env = {
        **own_env,
        "DELIVERY_REDIS_URL": str(shared_redis[0].extra["url"]) + "/0",
        "DELIVERY_SPOOL_DIR": str(tmp_path / "spool"),
        "DELIVERY_HTTP_READ_TIMEOUT_S": "10",
    }
    proc = start_worker(tmp_path / "worker", env, name="oom", concurrency=1, events=False)
    wait_ready(own_client, proc)
    yield proc
    proc.stop()


def _wait_for(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_send_accepted_while_redis_refuses_writes_is_reported_and_recorded_sent(
    oom_worker: Proc,
    own_client: Celery,
    shared_redis: tuple[Proc, redis.Redis],
    sandbox: SandboxAdmin,
) -> None:
    _, shared = shared_redis
    ledger = RedisLedger(shared)
    producer = Producer(app=own_client, ledger=ledger)
    sandbox.set_faults(
        [{"provider": "smspartner", "action": "latency", "delay_ms": ANSWER_DELAY_MS}]
    )
    message = {"provider": "smspartner", "to": ["+33612345699"], "text": "code 1234"}
    async_result = producer.enqueue("sms", message)
    delivery_id = str(async_result.id)

    # ``sending`` (the gate) is the last shared write before the request leaves: SMS Partner
    # has no limiter budget (docs/providers/index.md §6), so nothing else is written until the
    # final write.
    def sending() -> bool:
        record = ledger.get(delivery_id)
        return record is not None and record.state == "sending"

    _wait_for(sending, 30, "the send to start")
    shared.config_set("maxmemory-policy", "noeviction")
    shared.config_set("maxmemory", "1")
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        shared.set("probe", "1")  # writes are refused from here on
    restore = threading.Timer(OOM_FOR_S, lambda: shared.config_set("maxmemory", "0"))
    restore.start()
    try:
        result = async_result.get(timeout=60)
    finally:
        restore.join()

    assert result["status"] == "sent"
    assert result["provider_message_ids"]
    record = ledger.get(delivery_id)
    assert record is not None and record.state == "sent"
    assert len(sandbox.messages("smspartner")) == 1
    assert "delivery.final_write_retry" in oom_worker.log_tail()
