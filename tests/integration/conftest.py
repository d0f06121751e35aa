"""The real stack: redis-server, the sandbox over a socket, ``celery worker`` subprocesses."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery

from devstack.processes import Proc, sandbox_env, start_sandbox, start_worker
from worker.app import client_app
from worker.producer import Producer
from worker.stores import RedisLedger

pytestmark = pytest.mark.integration


class SandboxAdmin:
    """Read what arrived at the sandbox, and steer it (balances, faults)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def reset(self) -> None:
        self.http.post("/_admin/reset").raise_for_status()

    def messages(self, provider: str | None = None) -> list[dict[str, Any]]:
        data = self.http.get("/_admin/messages").raise_for_status().json()
        items: list[dict[str, Any]] = data["messages"] if isinstance(data, dict) else data
        return [m for m in items if provider is None or m.get("provider") == provider]

    def requests(self, provider: str | None = None) -> list[dict[str, Any]]:
        data = self.http.get("/_admin/requests").raise_for_status().json()
        items: list[dict[str, Any]] = data["requests"] if isinstance(data, dict) else data
        return [r for r in items if provider is None or r.get("provider") == provider]

    def set_balance(self, provider: str, credits: float) -> None:
        self.http.post(
            "/_admin/balance", json={"provider": provider, "credits": credits}
        ).raise_for_status()

    def set_faults(self, rules: list[dict[str, Any]]) -> None:
        self.http.post("/_admin/faults", json={"rules": rules}).raise_for_status()


@pytest.fixture(scope="session")
def sandbox_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_sandbox(Path(tmp_path_factory.mktemp("sandbox")), extra_args=["--quiet"])
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def sandbox_url(sandbox_proc: Proc) -> str:
    return str(sandbox_proc.extra["url"])


FLOW_STATE_PATTERNS = ("*dw:rl:*", "dw:health:*", "dw:parked:*", "dw:metrics:*")


def clear_flow_state(client: redis.Redis) -> None:
    """Limiter logs and holds, pauses, breakers, parked messages: shared state between tests."""
    for pattern in FLOW_STATE_PATTERNS:
        for key in client.scan_iter(pattern):
            client.delete(key)


@pytest.fixture
def sandbox(sandbox_url: str, ledger: RedisLedger) -> Iterator[SandboxAdmin]:
    admin = SandboxAdmin(sandbox_url)
    admin.reset()
    clear_flow_state(ledger.redis)
    yield admin
    admin.http.close()


@pytest.fixture(scope="session")
def stack_env(redis_url: str, sandbox_url: str) -> dict[str, str]:
    return {
        "DELIVERY_BROKER_URL": f"{redis_url}/0",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/1",
        "DELIVERY_VOICEPARTNER_NOTIFICATION_EMAIL": "ops@example.org",
        # Short backoff so retry tests finish in seconds.
        "DELIVERY_RETRY_BACKOFF_BASE_S": "0.2",
        "DELIVERY_RETRY_BACKOFF_MAX_S": "2",
        "DELIVERY_HTTP_READ_TIMEOUT_S": "3",
        # Ask about an unknown outcome 2 s after it, not the default 60 s.
        "DELIVERY_RECONCILE_GRACE_S": "2",
        # A breaker that opens and probes within seconds.
        "DELIVERY_BREAKER_FAILURE_THRESHOLD": "3",
        "DELIVERY_BREAKER_OPEN_S": "1.5",
        "DELIVERY_BREAKER_MAX_OPEN_S": "3",
        **sandbox_env(sandbox_url),
    }


@pytest.fixture(scope="session")
def client(stack_env: dict[str, str]) -> Celery:
    return client_app(
        stack_env["DELIVERY_BROKER_URL"], stack_env["DELIVERY_RESULT_BACKEND"], name="tests"
    )


@pytest.fixture(scope="session")
def ledger(stack_env: dict[str, str]) -> RedisLedger:
    return RedisLedger(redis.Redis.from_url(stack_env["DELIVERY_BROKER_URL"]))


@pytest.fixture(scope="session")
def producer(client: Celery, ledger: RedisLedger) -> Producer:
    return Producer(app=client, ledger=ledger)


def wait_ready(app: Celery, proc: Proc, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    name = proc.name.removeprefix("worker-")
    while time.monotonic() < deadline:
        assert proc.alive(), f"worker exited:\n{proc.log_tail()}"
        replies = app.control.ping(timeout=0.5)
        if any(name in next(iter(r)) for r in replies):
            return
    raise AssertionError(f"worker not ready after {timeout_s}s:\n{proc.log_tail()}")


@pytest.fixture(scope="session")
def worker_proc(
    stack_env: dict[str, str], client: Celery, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    """One worker process (concurrency 4) shared by the integration tests."""
    proc = start_worker(
        Path(tmp_path_factory.mktemp("worker")), stack_env, name="main", concurrency=4
    )
    wait_ready(client, proc)
    yield proc
    proc.stop()
