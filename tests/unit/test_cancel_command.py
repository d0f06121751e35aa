"""``delivery-worker cancel ID…`` in its own process, on a real Redis (database 12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from worker.stores import RedisLedger


@pytest.fixture
def db12(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{redis_url}/12")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_cancel_command_answers_per_id_and_the_result_reads_cancelled(
    redis_url: str, db12: redis.Redis
) -> None:
    ledger = RedisLedger(db12)
    extra = {"task_name": "tasks.send_sms", "message": "{}"}
    ledger.create("held", channel="sms", provider="smspartner", extra=extra)
    ledger.hold("held", time.time() + 3600)
    ledger.create("done", channel="sms", provider="smspartner", extra=extra)
    ledger.transition("done", "sent")
    env = {
        **os.environ,
        "DELIVERY_BROKER_URL": f"{redis_url}/12",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/12",
    }
    argv = [sys.executable, "-m", "worker.ops.cli", "cancel", "held", "done", "nope", "--json"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1, out.stderr  # not every id was cancelled
    answers = {a["delivery_id"]: a["answer"] for a in json.loads(out.stdout)}
    assert answers == {"held": "cancelled", "done": "already_sent", "nope": "unknown"}
    assert ledger.get("held").state == "cancelled"  # type: ignore[union-attr]
    assert ledger.schedule_size() == 0
    stored = json.loads(db12.get("celery-task-meta-held") or b"{}")
    assert stored["status"] == "SUCCESS" and stored["result"]["status"] == "cancelled"
    again = subprocess.run(argv[:5], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already_final" in again.stdout
