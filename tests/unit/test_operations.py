"""Operator operations against a real redis-server: resume, sweep, dead letters."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from worker.app import client_app
from worker.config import Settings
from worker.flow import RedisHealthStore
from worker.ledger import ACTIVE_KEY, Ledger
from worker.operations import Operations
from worker.parking import Parking

SMS = {"provider": "smspartner", "to": ["+33612345678"], "text": "hi"}


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{redis_url}/14")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def app(redis_url: str, broker: redis.Redis) -> Celery:
    return client_app(f"{redis_url}/14", f"{redis_url}/13", name="ops-tests")


def make_ops(redis_client: redis.Redis, app: Celery, **settings: Any) -> Operations:
    return Operations(
        redis_client=redis_client,
        health=RedisHealthStore(redis_client),
        settings=Settings(smspartner_api_key="k-sms", **settings),
        app=app,
    )


def published(broker: redis.Redis) -> list[tuple[str, str, Any]]:
    """(task name, task id, first argument) of every message waiting in the queue."""
    out = []
    for raw in broker.lrange("delivery", 0, -1):
        msg = json.loads(raw)
        body = json.loads(base64.b64decode(msg["body"]))
        out.append((msg["headers"]["task"], msg["headers"]["id"], body[0][0]))
    return out


def age(ledger: Ledger, delivery_id: str, seconds: float) -> None:
    """Pretend the delivery's last update was ``seconds`` ago."""
    then = time.time() - seconds
    ledger.redis.hset(ledger.key(delivery_id), "updated_at", repr(then))
    ledger.redis.zadd(ACTIVE_KEY, {delivery_id: then})


def new_delivery(ledger: Ledger, delivery_id: str, message: dict[str, Any] = SMS) -> None:
    ledger.create(
        delivery_id,
        channel="sms",
        provider="smspartner",
        extra={"task_name": "tasks.send_sms", "message": json.dumps(message)},
    )


def test_sweep_requeues_only_deliveries_stuck_past_their_timeout(
    redis_client: redis.Redis, broker: redis.Redis, app: Celery
) -> None:
    ledger = Ledger(redis_client)
    ops = make_ops(redis_client, app, sweep_queued_after_s=60, sweep_sending_after_s=30)
    for name in ("fresh", "stuck-queued", "stuck-sending", "young-sending", "done"):
        new_delivery(ledger, name)
    ledger.transition("stuck-sending", "sending")
    ledger.transition("young-sending", "sending")
    ledger.transition("done", "sent")
    age(ledger, "stuck-queued", 61)
    age(ledger, "stuck-sending", 31)
    age(ledger, "young-sending", 10)

    counts = ops.sweep(ledger)

    assert counts["requeued"] == 2
    assert sorted(task_id for _, task_id, _ in published(broker)) == [
        "stuck-queued",
        "stuck-sending",
    ]
    assert {arg["text"] for _, _, arg in published(broker)} == {"hi"}
    # A requeued delivery is touched, so the next sweep leaves it alone.
    assert ops.sweep(ledger)["requeued"] == 0
    assert "done" not in {m.decode() for m in redis_client.zrange(ACTIVE_KEY, 0, -1)}


def test_sweep_skips_parked_deliveries(
    redis_client: redis.Redis, broker: redis.Redis, app: Celery
) -> None:
    ledger = Ledger(redis_client)
    ops = make_ops(redis_client, app, sweep_queued_after_s=1, sweep_sending_after_s=1)
    new_delivery(ledger, "parked")
    ledger.transition("parked", "parked")
    age(ledger, "parked", 3600)
    assert ops.sweep(ledger)["requeued"] == 0
    assert published(broker) == []


def test_dead_letter_replay_requeues_under_the_same_id(
    redis_client: redis.Redis, broker: redis.Redis, app: Celery
) -> None:
    ledger = Ledger(redis_client)
    ops = make_ops(redis_client, app)
    new_delivery(ledger, "poison")
    ledger.transition("poison", "sending")
    assert ledger.bury(
        "poison", reason="worker died 3 times", task_name="tasks.send_sms", message=SMS
    )
    record = ledger.get("poison")
    assert record is not None and record.state == "dead"
    assert list(ledger.dead_letters()) == ["poison"]

    assert ops.replay_dead(ledger, ["poison", "unknown"]) == ["poison"]

    assert published(broker) == [("tasks.send_sms", "poison", SMS)]
    record = ledger.get("poison")
    assert record is not None and record.state == "queued"
    assert ledger.dead_letters() == {}


def test_resume_requeues_parked_messages_and_lifts_the_pause(
    redis_client: redis.Redis, broker: redis.Redis, app: Celery
) -> None:
    ops = make_ops(redis_client, app)
    ops.pause("smspartner", "out of credit")
    Parking(redis_client).park("smspartner", "d1", "tasks.send_sms", SMS)
    Parking(redis_client).park("smspartner", "d2", "tasks.send_sms", SMS)
    (status,) = [s for s in ops.status() if s.provider == "smspartner"]
    assert status.paused is not None and status.parked == 2 and status.configured

    assert ops.resume("smspartner") == 2

    assert sorted(task_id for _, task_id, _ in published(broker)) == ["d1", "d2"]
    assert ops.health.paused("smspartner") is None
    assert Parking(redis_client).count("smspartner") == 0
