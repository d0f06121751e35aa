"""Lanes over real processes: priority and tenant order at the provider (``worker.lanes``).

Real redis-server, real ``celery worker`` processes and the sandbox (EmailMassivo at 10
requests per second per IP). Order is read from the sandbox: the position of each mail among
those that reached the provider (``seq``), never from wall-clock durations.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from devstack.processes import Proc, start_worker
from worker.config import Settings
from worker.ops.operations import Operations
from worker.producer import Producer
from worker.stores import RedisLedger

from .conftest import SandboxAdmin, wait_ready

pytestmark = pytest.mark.integration

TIMEOUT_S = 120


def email(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "emailmassivo",
        "to": [{"email": f"customer{n}@example.com"}],
        "from": {"email": "shop@example.org"},
        "subject": f"Mail {n}",
        "text": "Hello",
        **extra,
    }


def wait_states(
    ledger: RedisLedger, ids: list[str], states: set[str], timeout_s: float = TIMEOUT_S
) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        current = {d: (r.state if (r := ledger.get(d)) else "missing") for d in ids}
        if all(s in states for s in current.values()) or time.monotonic() > deadline:
            return current
        time.sleep(0.2)


def arrival_order(sandbox: SandboxAdmin) -> list[str]:
    """Delivery ids in the order their mail reached EmailMassivo (its idempotency key)."""
    arrived = sorted(sandbox.messages("emailmassivo"), key=lambda m: m["seq"])
    return [str(m["idempotency_key"]) for m in arrived]


def test_high_overtakes_a_bulk_backlog(
    worker_proc: Proc, producer: Producer, sandbox: SandboxAdmin, ledger: RedisLedger
) -> None:
    bulk = [producer.enqueue("email", email(n, priority="bulk")).id for n in range(60)]
    high = [producer.enqueue("email", email(100 + n, priority="high")).id for n in range(3)]
    states = wait_states(ledger, bulk + high, {"sent"})
    assert Counter(states.values()) == {"sent": 63}
    order = arrival_order(sandbox)
    assert sorted(order) == sorted(bulk + high)  # each once
    positions = [order.index(h) for h in high]
    # One FIFO line puts them at 60, 61, 62; the lanes let them pass the backlog, behind at
    # most what the worker held (4 processes, a broker buffer of 2) and what had been sent.
    assert max(positions) < 30, positions


def test_two_tenants_share_a_provider(
    worker_proc: Proc, producer: Producer, sandbox: SandboxAdmin, ledger: RedisLedger
) -> None:
    big = [producer.enqueue("email", email(n, priority="bulk", tenant="big")).id for n in range(80)]
    small = [
        producer.enqueue("email", email(200 + n, priority="bulk", tenant="small")).id
        for n in range(10)
    ]
    states = wait_states(ledger, big + small, {"sent"})
    assert Counter(states.values()) == {"sent": 90}
    order = arrival_order(sandbox)
    first, last = order.index(small[0]), order.index(small[-1])
    # FIFO would end the small tenant at 89; equal shares interleave it with the big one.
    assert last < 50, (first, last)
    # ... and the big tenant keeps sending meanwhile (it is not stopped either).
    big_between = [d for d in order[first : last + 1] if d in set(big)]
    assert len(big_between) >= 5, (first, last, len(big_between))


def test_a_by_name_producer_without_the_new_fields_lands_in_normal(
    worker_proc: Proc,
    client: Celery,
    producer: Producer,
    sandbox: SandboxAdmin,
    ledger: RedisLedger,
) -> None:
    # A bulk backlog in the lanes, then a by-name send (no priority, no tenant).
    bulk = [producer.enqueue("email", email(n, priority="bulk")).id for n in range(30)]
    by_name = client.send_task("tasks.send_email", args=[email(300)])
    result = by_name.get(timeout=TIMEOUT_S)
    assert result["status"] == "sent"
    # A by-name send with a priority the contract does not know ends final, naming the field.
    bad = client.send_task("tasks.send_email", args=[email(301, priority="urgent")])
    refused = bad.get(timeout=TIMEOUT_S, propagate=False)
    assert refused["status"] == "failed", refused
    assert "priority" in str(refused["error"]), refused
    states = wait_states(ledger, bulk, {"sent"})
    assert Counter(states.values()) == {"sent": 30}
    order = arrival_order(sandbox)
    assert by_name.id in order and bad.id not in order
    # The normal lane's message was not kept behind the bulk backlog.
    assert order.index(by_name.id) < 25, order.index(by_name.id)


def test_high_with_send_at_is_sent_at_its_time_ahead_of_a_backlog(
    worker_proc: Proc, producer: Producer, sandbox: SandboxAdmin, ledger: RedisLedger
) -> None:
    bulk = [producer.enqueue("email", email(n, priority="bulk")).id for n in range(60)]
    send_at = datetime.now(UTC) + timedelta(seconds=2)
    scheduled = producer.enqueue(
        "email", email(400, priority="high", send_at=send_at.isoformat())
    ).id
    states = wait_states(ledger, [*bulk, scheduled], {"sent"})
    assert Counter(states.values()) == {"sent": 61}
    arrived = {str(m["idempotency_key"]): m for m in sandbox.messages("emailmassivo")}
    # Not before its time (the durable schedule held it) ...
    assert arrived[scheduled]["time"] >= send_at.timestamp() - 0.05
    # ... and then into the high lane, not behind what was queued meanwhile.
    order = arrival_order(sandbox)
    assert order.index(scheduled) < 55, order.index(scheduled)


def test_high_with_a_paused_provider_waits_and_goes_first_on_resume(
    worker_proc: Proc,
    producer: Producer,
    sandbox: SandboxAdmin,
    ledger: RedisLedger,
    client: Celery,
    stack_env: dict[str, str],
) -> None:
    ops = Operations.on_redis(ledger.redis, settings=Settings.from_env(stack_env), app=client)
    ops.pause("emailmassivo", "test: lanes and a paused provider")
    try:
        bulk = [producer.enqueue("email", email(n, priority="bulk")).id for n in range(20)]
        high = producer.enqueue("email", email(500, priority="high")).id
        states = wait_states(ledger, [*bulk, high], {"parked"})
        assert Counter(states.values()) == {"parked": 21}
        assert sandbox.messages("emailmassivo") == []
    finally:
        ops.resume("emailmassivo")
    states = wait_states(ledger, [*bulk, high], {"sent"})
    assert Counter(states.values()) == {"sent": 21}
    order = arrival_order(sandbox)
    # Back in their lanes on resume: the high mail is not behind the parked campaign.
    assert order.index(high) < 10, order.index(high)


@pytest.fixture
def own_env(stack_env: dict[str, str], redis_url: str) -> dict[str, str]:
    # Databases of their own, so the session worker never takes these tasks; the shortest
    # visibility timeout, so the killed worker's reserved messages come back within a minute.
    return {
        **stack_env,
        "DELIVERY_BROKER_URL": f"{redis_url}/8",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/9",
        "DELIVERY_VISIBILITY_TIMEOUT_S": "60",
        "DELIVERY_LIMITER_MAX_INLINE_WAIT_S": "1",
    }


def test_a_worker_sigkilled_while_it_holds_work_loses_nothing_and_sends_nothing_twice(
    own_env: dict[str, str], sandbox: SandboxAdmin, tmp_path: Path
) -> None:
    import redis

    from worker.app import client_app

    app = client_app(own_env["DELIVERY_BROKER_URL"], own_env["DELIVERY_RESULT_BACKEND"], name="k")
    ledger = RedisLedger(redis.Redis.from_url(own_env["DELIVERY_BROKER_URL"]))
    ledger.redis.flushdb()
    producer = Producer(app=app, ledger=ledger, lanes=True)
    ids = [producer.enqueue("email", email(n, priority="bulk")).id for n in range(40)]
    ids += [producer.enqueue("email", email(100 + n, priority="high")).id for n in range(5)]
    doomed: Proc = start_worker(tmp_path, own_env, name="doomed", concurrency=4)
    survivor: Proc | None = None
    try:
        wait_ready(app, doomed)
        # Kill the whole worker (main process and pool) once it holds work mid-flow.
        deadline = time.monotonic() + TIMEOUT_S
        while len(sandbox.messages("emailmassivo")) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(sandbox.messages("emailmassivo")) >= 5
        os.killpg(doomed.pid, signal.SIGKILL)  # its own process group: main and pool
        survivor = start_worker(tmp_path, own_env, name="survivor", concurrency=4)
        wait_ready(app, survivor)
        states = wait_states(ledger, ids, {"sent"}, timeout_s=240)
        assert Counter(states.values()) == {"sent": 45}, Counter(states.values())
        keys = Counter(str(m["idempotency_key"]) for m in sandbox.messages("emailmassivo"))
        assert set(keys) == set(ids)  # nothing lost
        assert max(keys.values()) == 1  # nothing sent twice
        assert ledger.redis.zcard(ledger.keys.lane_taken) == 0
    finally:
        doomed.stop()
        if survivor is not None:
            survivor.stop()
        ledger.redis.flushdb()


def reserved_ahead(client: Any) -> int:
    """Limiter slots reserved for later than now on EmailMassivo's budget (pool processes
    asleep until them), on the limiter's clock."""
    seconds, micros = client.time()
    now_us = seconds * 1_000_000 + micros
    ahead = 0
    for key in client.scan_iter(match="*emailmassivo*"):
        if client.type(key) == b"zset":
            ahead += client.zcount(key, f"({now_us}", "+inf")
    return ahead


def test_a_worker_sigkilled_while_it_holds_reserved_slots_loses_nothing_and_sends_nothing_twice(
    own_env: dict[str, str], sandbox: SandboxAdmin, tmp_path: Path
) -> None:
    import redis

    from worker.app import client_app

    app = client_app(own_env["DELIVERY_BROKER_URL"], own_env["DELIVERY_RESULT_BACKEND"], name="k")
    ledger = RedisLedger(redis.Redis.from_url(own_env["DELIVERY_BROKER_URL"]))
    ledger.redis.flushdb()
    producer = Producer(app=app, ledger=ledger, lanes=True)
    ids = [producer.enqueue("email", email(n, priority="bulk")).id for n in range(60)]
    doomed: Proc = start_worker(tmp_path, own_env, name="doomed", concurrency=4)
    survivor: Proc | None = None
    try:
        wait_ready(app, doomed)
        # Kill the whole worker while its pool processes sleep until slots they reserved
        # (the limiter's log holds slots ahead of now) after some mails reached the provider.
        deadline = time.monotonic() + TIMEOUT_S
        held = 0
        while time.monotonic() < deadline:
            if len(sandbox.messages("emailmassivo")) >= 5:
                held = reserved_ahead(ledger.redis)
                if held:
                    break
            time.sleep(0.01)
        os.killpg(doomed.pid, signal.SIGKILL)  # its own process group: main and pool
        assert held >= 1
        ids += [producer.enqueue("email", email(100 + n, priority="high")).id for n in range(3)]
        survivor = start_worker(tmp_path, own_env, name="survivor", concurrency=4)
        wait_ready(app, survivor)
        states = wait_states(ledger, ids, {"sent"}, timeout_s=240)
        assert Counter(states.values()) == {"sent": 63}, Counter(states.values())
        keys = Counter(str(m["idempotency_key"]) for m in sandbox.messages("emailmassivo"))
        assert set(keys) == set(ids)  # nothing lost
        assert max(keys.values()) == 1  # nothing sent twice
        assert ledger.redis.zcard(ledger.keys.lane_taken) == 0
        # Nothing left waiting in a lane (sent back by the limiter, or taken and not published).
        assert not list(ledger.redis.scan_iter(match=ledger.keys.lane_prefix + "*"))
    finally:
        doomed.stop()
        if survivor is not None:
            survivor.stop()
        ledger.redis.flushdb()
