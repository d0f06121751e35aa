"""Flow control across workers, against real Redis, real worker processes and the sandbox."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult

from devstack.processes import Proc, start_worker
from worker.config import Settings
from worker.ops.operations import Operations
from worker.producer import Producer
from worker.stores import RedisHealthStore, RedisLedger

from .conftest import SandboxAdmin, wait_ready

pytestmark = pytest.mark.integration

TIMEOUT_S = 40


def email(provider: str | None, n: int = 0, **extra: Any) -> dict[str, Any]:
    message = {
        "to": [{"email": f"customer{n}@example.com"}],
        "from": {"email": "shop@example.org"},
        "subject": f"Order {n}",
        "text": "Thanks",
        **extra,
    }
    if provider:
        message["provider"] = provider
    return message


@pytest.fixture
def health(ledger: RedisLedger) -> RedisHealthStore:
    return RedisHealthStore(ledger.redis)


@pytest.fixture
def ops(ledger: RedisLedger, client: Celery, stack_env: dict[str, str]) -> Operations:
    settings = Settings.from_env(stack_env)
    return Operations.on_redis(ledger.redis, settings=settings, app=client)


def wait_states(
    ledger: RedisLedger, ids: list[str], states: set[str], timeout_s: float = TIMEOUT_S
) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        current = {d: (r.state if (r := ledger.get(d)) else "missing") for d in ids}
        if all(s in states for s in current.values()) or time.monotonic() > deadline:
            return current
        time.sleep(0.1)


def test_out_of_credit_pauses_parks_and_resumes(
    worker_proc: Proc,
    producer: Producer,
    sandbox: SandboxAdmin,
    ledger: RedisLedger,
    ops: Operations,
) -> None:
    sandbox.set_balance("emailmassivo", 1)
    ids = [producer.enqueue("email", email("emailmassivo", n)).id for n in range(6)]
    states = wait_states(ledger, ids, {"sent", "parked"})
    assert sorted(states.values()) == ["parked"] * 5 + ["sent"]
    assert ops.health.paused("emailmassivo") is not None
    statuses = [r["status"] for r in sandbox.requests("emailmassivo")]
    first_402 = statuses.index(402)
    # After the first 402, only requests already in flight (concurrency 4) reach the provider.
    assert len(statuses) - first_402 - 1 <= 3
    assert statuses.count(200) == 1  # EmailMassivo's 200 OK (seed 003)
    parked = [AsyncResult(d, app=producer.app) for d in ids]
    # The ledger says "parked" before the task returns and stores its Celery state.
    deadline = time.monotonic() + TIMEOUT_S
    while [p.state for p in parked].count("PARKED") < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p.state for p in parked].count("PARKED") == 5
    assert all(p.info["status"] == "parked" for p in parked if p.state == "PARKED")
    (status,) = [s for s in ops.status() if s.provider == "emailmassivo"]
    assert status.parked == 5 and status.paused is not None

    sandbox.set_balance("emailmassivo", 100)
    assert ops.resume("emailmassivo") == 5
    states = wait_states(ledger, ids, {"sent"})
    assert set(states.values()) == {"sent"}
    assert len(sandbox.messages("emailmassivo")) == 6
    assert ops.health.paused("emailmassivo") is None
    results = [AsyncResult(d, app=producer.app).get(timeout=TIMEOUT_S) for d in ids]
    assert {r["status"] for r in results} == {"sent"}


def test_balance_check_resumes_a_provider_with_credit(
    worker_proc: Proc,
    producer: Producer,
    client: Celery,
    sandbox: SandboxAdmin,
    ledger: RedisLedger,
) -> None:
    sandbox.set_balance("smspartner", 0)
    delivery = producer.enqueue("sms", {"to": ["+33612345678"], "text": "code 1"})
    assert wait_states(ledger, [delivery.id], {"parked"})[delivery.id] == "parked"
    still = client.send_task("tasks.check_balances").get(timeout=TIMEOUT_S)
    assert still == {"smspartner": "still out of credit"}
    sandbox.set_balance("smspartner", 1000)
    resumed = client.send_task("tasks.check_balances").get(timeout=TIMEOUT_S)
    assert resumed == {"smspartner": "resumed (1 requeued)"}
    assert wait_states(ledger, [delivery.id], {"sent"})[delivery.id] == "sent"
    # The balance checks used GET /me with the key in the query; the send went through once.
    assert len(sandbox.messages("smspartner")) == 1


def test_circuit_breaker_opens_holds_back_probes_and_closes(
    worker_proc: Proc,
    producer: Producer,
    sandbox: SandboxAdmin,
    ledger: RedisLedger,
    health: RedisHealthStore,
) -> None:
    sandbox.set_faults(
        [{"provider": "mailpartner", "action": "status", "status": 503, "first_n": 1000}]
    )
    first = producer.enqueue("email", email("mailpartner", 1))
    deadline = time.monotonic() + TIMEOUT_S
    while health.state("mailpartner").state != "open":
        assert time.monotonic() < deadline, "breaker never opened"
        time.sleep(0.05)
    opened = health.state("mailpartner")
    assert opened.failures >= 3
    seen_at_open = len(sandbox.requests("mailpartner"))
    # A second message while the breaker is open waits instead of reaching the provider.
    second = producer.enqueue("email", email("mailpartner", 2))
    time.sleep(max(opened.retry_in_s - 0.4, 0))
    assert len(sandbox.requests("mailpartner")) == seen_at_open
    # The provider recovers: a half-open probe succeeds and the breaker closes.
    sandbox.set_faults([])
    assert first.get(timeout=TIMEOUT_S)["status"] == "sent"
    assert second.get(timeout=TIMEOUT_S)["status"] == "sent"
    assert health.state("mailpartner").state == "closed"
    assert ledger.get(second.id).attempts == 1  # type: ignore[union-attr]


def test_routed_email_fails_over_to_the_next_healthy_provider(
    worker_proc: Proc, producer: Producer, sandbox: SandboxAdmin, ops: Operations
) -> None:
    ops.pause("postal", "maintenance")
    sandbox.set_balance("emailmassivo", 0)
    result = producer.enqueue("email", email(None, 3)).get(timeout=TIMEOUT_S)
    assert result["status"] == "sent"
    assert result["provider"] == "mailpartner"
    assert sandbox.requests("postal") == []
    assert [r["status"] for r in sandbox.requests("emailmassivo")] == [402]
    assert ops.health.paused("emailmassivo") is not None
    assert len(sandbox.messages("mailpartner")) == 1


def test_named_provider_never_fails_over(
    worker_proc: Proc, producer: Producer, sandbox: SandboxAdmin, ops: Operations
) -> None:
    ops.pause("postal", "maintenance")
    delivery = producer.enqueue("email", email("postal", 4))
    deadline = time.monotonic() + TIMEOUT_S
    while delivery.state != "PARKED":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert delivery.info["provider"] == "postal"
    assert sandbox.requests() == []


def test_message_expires_at_its_deadline(
    worker_proc: Proc, producer: Producer, sandbox: SandboxAdmin
) -> None:
    sandbox.set_faults(
        [{"provider": "emailmassivo", "action": "status", "status": 503, "first_n": 1000}]
    )
    deadline = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    result = producer.enqueue("email", email("emailmassivo", 5, deadline=deadline)).get(
        timeout=TIMEOUT_S
    )
    assert result["status"] == "expired"
    assert result["error"]["kind"] == "expired"
    assert result["attempts"] >= 1
    assert sandbox.messages("emailmassivo") == []


def test_provider_429_holds_back_the_next_send(
    worker_proc: Proc, producer: Producer, sandbox: SandboxAdmin, ledger: RedisLedger
) -> None:
    sandbox.set_faults(
        [
            {
                "provider": "emailmassivo",
                "action": "status",
                "status": 429,
                "retry_after": 2,
                "first_n": 1,
            }
        ]
    )
    first = producer.enqueue("email", email("emailmassivo", 6))
    deadline = time.monotonic() + TIMEOUT_S
    while not sandbox.requests("emailmassivo"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    second = producer.enqueue("email", email("emailmassivo", 7))
    assert first.get(timeout=TIMEOUT_S)["status"] == "sent"
    assert second.get(timeout=TIMEOUT_S)["status"] == "sent"
    requests = sandbox.requests("emailmassivo")
    throttled_at = requests[0]["time"]
    assert requests[0]["status"] == 429
    assert all(r["time"] >= throttled_at + 1.8 for r in requests[1:])
    record = ledger.get(first.id)
    # The 429 counted as a throttle, not as an error attempt: one attempt (the send), one wait.
    assert record is not None and (record.attempts, record.throttled) == (1, 1)


@pytest.fixture
def second_worker(stack_env: dict[str, str], client: Celery, tmp_path: Path) -> Iterator[Proc]:
    proc = start_worker(tmp_path, stack_env, name="second", concurrency=4)
    wait_ready(client, proc)
    yield proc
    proc.stop()


def test_global_limit_holds_across_worker_processes(
    worker_proc: Proc, second_worker: Proc, producer: Producer, sandbox: SandboxAdmin
) -> None:
    results = [producer.enqueue("email", email("emailmassivo", n)) for n in range(35)]
    assert {r.get(timeout=TIMEOUT_S)["status"] for r in results} == {"sent"}
    stats = sandbox.http.get("/_admin/stats").json()["providers"]["emailmassivo"]
    assert stats["accepted"] == 35
    assert stats["throttled"] == 0
    assert stats["max_requests_1s"] <= 10
    statuses = {r["status"] for r in sandbox.requests("emailmassivo")}
    assert statuses == {200}  # EmailMassivo 200 OK (seed 003)


def test_worker_refuses_to_start_when_retries_outlive_the_visibility_timeout(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **stack_env,
        "DELIVERY_RETRY_BACKOFF_MAX_S": "7200",
        "DELIVERY_VISIBILITY_TIMEOUT_S": "3600",
    }
    proc = start_worker(tmp_path, env, name="misconfigured")
    try:
        assert proc.popen.wait(timeout=60) != 0
    finally:
        proc.stop()
    assert "visibility_timeout_s" in proc.log_path.read_text()
