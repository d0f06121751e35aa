"""Operator operations over every store backend: resume, sweep, dead letters.

The stores are the in-memory stubs or the Redis ones (parametrized); the broker is a real
redis-server either way, and the published messages are read back from its queue. Record
times run on a fake clock shared by the stores and the operations, so a delivery's age is
exact.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from worker.app import client_app
from worker.config import Settings
from worker.ops.operations import Operations
from worker.stores import (
    Ledger,
    MemoryHealthStore,
    MemoryLedger,
    MemoryMetrics,
    MemoryParking,
    MemoryRateLimiter,
    RedisHealthStore,
    RedisLedger,
    RedisMetrics,
    RedisParking,
    RedisRateLimiter,
    Stores,
)

SMS = {"provider": "smspartner", "to": ["+33612345678"], "text": "hi"}


class FakeClock:
    """Unix seconds that only move when told to (as in ``tests/stores/_support.py``)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture(params=["memory", "redis"])
def stores(request: pytest.FixtureRequest, clock: FakeClock) -> Stores:
    if request.param == "memory":
        return Stores(
            ledger=MemoryLedger(clock),
            parking=MemoryParking(clock),
            health=MemoryHealthStore(clock),
            limiter=MemoryRateLimiter(clock),
            metrics=MemoryMetrics(),
        )
    client: redis.Redis = request.getfixturevalue("redis_client")
    return Stores(
        ledger=RedisLedger(client, clock=clock),
        parking=RedisParking(client, clock=clock),
        health=RedisHealthStore(client),
        limiter=RedisRateLimiter(client),
        metrics=RedisMetrics(client),
    )


def make_ops(stores: Stores, app: Celery, clock: FakeClock, **settings: Any) -> Operations:
    return Operations.for_stores(
        stores, settings=Settings(smspartner_api_key="k-sms", **settings), app=app, clock=clock
    )


def published(broker: redis.Redis) -> list[tuple[str, str, Any]]:
    """(task name, task id, first argument) of every message waiting in the queue."""
    out = []
    for raw in broker.lrange("delivery", 0, -1):
        msg = json.loads(raw)
        body = json.loads(base64.b64decode(msg["body"]))
        out.append((msg["headers"]["task"], msg["headers"]["id"], body[0][0]))
    return out


def new_delivery(ledger: Ledger, delivery_id: str, message: dict[str, Any] = SMS) -> None:
    ledger.create(
        delivery_id,
        channel="sms",
        provider="smspartner",
        extra={"task_name": "tasks.send_sms", "message": json.dumps(message)},
    )


def test_sweep_requeues_only_deliveries_stuck_past_their_timeout(
    stores: Stores, broker: redis.Redis, app: Celery, clock: FakeClock
) -> None:
    ledger = stores.ledger
    # Lanes off: every copy goes to the broker queue (with lanes: the test below).
    ops = make_ops(
        stores, app, clock, sweep_queued_after_s=60, sweep_sending_after_s=30, lanes=False
    )
    # Last updates: stuck-queued 61 s ago, stuck-sending 31 s, young-sending 10 s, fresh now.
    new_delivery(ledger, "stuck-queued")
    clock.advance(30)
    new_delivery(ledger, "stuck-sending")
    ledger.transition("stuck-sending", "sending")
    clock.advance(21)
    new_delivery(ledger, "young-sending")
    ledger.transition("young-sending", "sending")
    new_delivery(ledger, "done")
    ledger.transition("done", "sent")
    clock.advance(10)
    new_delivery(ledger, "fresh")

    counts = ops.sweep()

    assert counts["requeued"] == 2
    assert sorted(task_id for _, task_id, _ in published(broker)) == [
        "stuck-queued",
        "stuck-sending",
    ]
    assert {arg["text"] for _, _, arg in published(broker)} == {"hi"}
    # A requeued delivery is touched, so the next sweep leaves it alone.
    assert ops.sweep()["requeued"] == 0
    assert "done" not in ledger.stale(0)


def test_with_lanes_the_sweep_puts_a_queued_delivery_back_in_its_lane(
    redis_client: redis.Redis, broker: redis.Redis, app: Celery, clock: FakeClock
) -> None:
    from worker.lanes import Lanes

    redis_client.flushdb()
    ledger = RedisLedger(redis_client, clock=clock)
    stores = Stores(
        ledger=ledger,
        parking=RedisParking(redis_client, clock=clock),
        health=RedisHealthStore(redis_client),
        limiter=RedisRateLimiter(redis_client),
        metrics=RedisMetrics(redis_client),
    )
    ops = make_ops(stores, app, clock, sweep_queued_after_s=60, sweep_sending_after_s=30)
    lanes = Lanes(redis_client, ledger.keys)
    new_delivery(ledger, "lost-queued")  # dispatched once, its copy lost
    new_delivery(ledger, "waiting-queued")
    lanes.push("waiting-queued", "normal", "default", at=1.0)  # still waiting in its lane
    new_delivery(ledger, "stuck-sending")
    ledger.transition("stuck-sending", "sending")
    clock.advance(61)

    counts = ops.sweep()

    # The lost one is back in its lane, the waiting one kept its place (not counted), and a
    # run that had started is published again as before.
    assert counts["requeued"] == 2
    assert [task_id for _, task_id, _ in published(broker)] == ["stuck-sending"]
    assert [(d.priority, d.depth) for d in lanes.depths()] == [("normal", 2)]
    assert [t.delivery_id for t in lanes.take(5)] == ["waiting-queued", "lost-queued"]
    redis_client.flushdb()


def test_sweep_skips_parked_deliveries(
    stores: Stores, broker: redis.Redis, app: Celery, clock: FakeClock
) -> None:
    ops = make_ops(stores, app, clock, sweep_queued_after_s=1, sweep_sending_after_s=1)
    new_delivery(stores.ledger, "parked")
    stores.ledger.transition("parked", "parked")
    clock.advance(3600)
    assert ops.sweep()["requeued"] == 0
    assert published(broker) == []


def test_sweep_cleans_finished_and_unrecoverable_entries(
    stores: Stores, broker: redis.Redis, app: Celery, clock: FakeClock
) -> None:
    ops = make_ops(stores, app, clock, sweep_queued_after_s=1, sweep_sending_after_s=1)
    stores.ledger.create("no-message", channel="sms", provider="smspartner")
    clock.advance(3600)
    assert ops.sweep() == {"requeued": 0, "cleaned": 0, "unrecoverable": 1}
    assert stores.ledger.stale(0) == []
    assert published(broker) == []


def test_dead_letter_replay_requeues_under_the_same_id(
    stores: Stores, broker: redis.Redis, app: Celery, clock: FakeClock
) -> None:
    ledger = stores.ledger
    ops = make_ops(stores, app, clock)
    new_delivery(ledger, "poison")
    ledger.transition("poison", "sending")
    assert ledger.bury(
        "poison", reason="worker died 3 times", task_name="tasks.send_sms", message=SMS
    )
    record = ledger.get("poison")
    assert record is not None and record.state == "dead"
    assert list(ledger.dead_letters()) == ["poison"]

    assert ops.replay_dead(["poison", "unknown"]) == ["poison"]

    assert published(broker) == [("tasks.send_sms", "poison", SMS)]
    record = ledger.get("poison")
    assert record is not None and record.state == "queued"
    assert ledger.dead_letters() == {}


def test_resume_requeues_parked_messages_and_lifts_the_pause(
    stores: Stores, broker: redis.Redis, app: Celery, clock: FakeClock
) -> None:
    ops = make_ops(stores, app, clock)
    ops.pause("smspartner", "out of credit")
    stores.parking.park("smspartner", "d1", "tasks.send_sms", SMS)
    stores.parking.park("smspartner", "d2", "tasks.send_sms", SMS)
    (status,) = [s for s in ops.status() if s.provider == "smspartner"]
    assert status.paused is not None and status.parked == 2 and status.configured

    assert ops.resume("smspartner") == 2

    assert sorted(task_id for _, task_id, _ in published(broker)) == ["d1", "d2"]
    assert ops.health.paused("smspartner") is None
    assert stores.parking.count("smspartner") == 0


def test_status_reads_the_counters_through_the_metrics_store(
    stores: Stores, app: Celery, clock: FakeClock
) -> None:
    stores.metrics.incr("smspartner", "sent", 3)
    stores.metrics.incr("smspartner", "failed:transient")
    statuses = {s.provider: s for s in make_ops(stores, app, clock).status()}
    assert statuses["smspartner"].metrics == {"sent": 3, "failed:transient": 1}
    assert statuses["postal"].metrics == {}
    assert statuses["smspartner"].to_dict()["metrics"] == {"sent": 3, "failed:transient": 1}
    assert not statuses["postal"].configured
