"""A short soak over real processes, then an audit of every Redis key it left behind.

Every key either expires by itself or belongs to a family in ``worker.stores.owners`` whose
owner keeps it bounded. The workload touches each feature that writes Redis: the five
providers, a tracked send with beat's poller, a scheduled and cancelled send, a parked
provider, a refused message, a raw item that is no envelope, and a dead letter.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from devstack.processes import Proc, start_redis, start_worker
from worker.app import client_app
from worker.producer import Producer
from worker.stores import RedisLedger
from worker.stores.owners import NO_TTL_OWNERS, owner_of

from .conftest import SandboxAdmin, wait_ready

pytestmark = pytest.mark.integration


def email(provider: str, n: int) -> dict[str, Any]:
    return {
        "provider": provider,
        "to": [{"email": f"ada{n}@example.com", "name": "Ada"}],
        "from": {"email": "shop@example.org", "name": "Shop"},
        "subject": "Order",
        "text": "Thanks",
    }


@pytest.fixture
def own_stack(
    tmp_path: Path, sandbox: SandboxAdmin, stack_env: dict[str, str]
) -> Iterator[tuple[str, Celery, Producer, Proc]]:
    """A private redis-server and a worker with beat, on the session's sandbox."""
    server = start_redis(tmp_path / "redis")
    url = str(server.extra["url"])
    env = {
        **stack_env,
        "DELIVERY_BROKER_URL": f"{url}/0",
        "DELIVERY_RESULT_BACKEND": f"{url}/1",
        "DELIVERY_TRACKING_POLL_FIRST_S": "1",
    }
    app = client_app(env["DELIVERY_BROKER_URL"], env["DELIVERY_RESULT_BACKEND"], name="soak")
    proc = start_worker(
        tmp_path / "worker",
        env,
        name="soak",
        concurrency=2,
        extra_args=["-B", "-s", str(tmp_path / "beat-schedule")],
    )
    try:
        wait_ready(app, proc)
        ledger = RedisLedger(redis.Redis.from_url(env["DELIVERY_BROKER_URL"]))
        yield url, app, Producer(app=app, ledger=ledger), proc
    finally:
        proc.stop()
        app.close()
        server.stop()


def test_every_key_left_by_a_mixed_soak_has_a_ttl_or_an_owner(
    own_stack: tuple[str, Celery, Producer, Proc], sandbox: SandboxAdmin
) -> None:
    url, app, producer, proc = own_stack
    broker = redis.Redis.from_url(f"{url}/0")
    sandbox.set_balance("mailpartner", 0)  # out of credit: its mail is parked
    results = []
    for n in range(4):
        results.append(producer.enqueue("email", email("postal", n)))
        results.append(producer.enqueue("email", email("emailmassivo", n)))
        results.append(
            producer.enqueue(
                "sms", {"provider": "smspartner", "to": [f"+3361234{n:04d}"], "text": "Hi"}
            )
        )
        results.append(
            producer.enqueue(
                "voice",
                {"provider": "voicepartner", "mode": "tts", "to": [f"+3361235{n:04d}"],
                 "text": "Bonjour", "lang": "fr"},
            )
        )  # fmt: skip
    later = datetime.fromtimestamp(time.time() + 600, UTC).isoformat()
    scheduled = producer.enqueue(
        "sms", {"provider": "smspartner", "to": ["+33612349999"], "text": "x", "send_at": later}
    )
    parked = producer.enqueue("email", email("mailpartner", 9))
    refused = app.send_task("tasks.send_sms", args=["not a message"], task_id="soak-refused")
    broker.lpush("delivery", b"not a kombu envelope")
    for result in results:
        assert result.get(timeout=60)["status"] == "sent"
    assert producer.cancel(scheduled.id).answer == "cancelled"
    assert refused.get(timeout=30)["error"]["kind"] == "invalid_message"
    deadline = time.monotonic() + 30
    while not broker.exists("dw:parked:mailpartner"):
        assert time.monotonic() < deadline, f"mail was not parked:\n{proc.log_tail()}"
        time.sleep(0.1)
    assert parked.state != "SUCCESS"
    time.sleep(2)  # let beat's poller run a round over the tracked sends
    assert proc.alive(), proc.log_tail()

    seen: dict[str, int] = {}
    without_owner = []
    for db in (0, 1):
        client = redis.Redis.from_url(f"{url}/{db}")
        for raw in client.scan_iter(count=1000):
            key = raw.decode("utf-8", "backslashreplace")
            ttl = client.ttl(raw)
            seen[key] = ttl
            if ttl == -1 and owner_of(key) is None:
                without_owner.append(f"db{db} {key} ({client.type(raw).decode()})")
    assert not without_owner, "keys with neither a TTL nor an owner:\n" + "\n".join(
        sorted(without_owner)
    )
    # The audit saw the workload: records and results with TTLs, owned families without.
    assert sum(1 for k, t in seen.items() if k.startswith("dw:delivery:") and t > 0) >= 18
    assert sum(1 for k, t in seen.items() if k.startswith("celery-task-meta-") and t > 0) >= 16
    assert "dw:parked:mailpartner" in seen and "dw:rejected:items" in seen


@pytest.mark.parametrize(
    ("key", "owned"),
    [
        ("dw:active", True),
        ("dw:metrics:postal", True),
        ("_kombu.binding.delivery", True),
        ("dw:delivery:abc", False),
        ("dw:lock:abc", False),
        ("dw:dead", False),
        ("dw:anything-new", False),
    ],
)
def test_the_owner_table_names_only_bounded_families(key: str, owned: bool) -> None:
    assert (owner_of(key) is not None) is owned
    assert all(owner for owner in NO_TTL_OWNERS.values())
