"""Scale-out across egress IPs: one rate budget per egress identity, counted per client IP.

Two worker groups bound to 127.0.0.1 and 127.0.0.2 (``DELIVERY_LOCAL_ADDRESS``; Linux routes
all of 127.0.0.0/8 to loopback, so both reach the sandbox on 127.0.0.1 and the sandbox sees two
client IPs). EmailMassivo allows 10 requests/s per IP (providers.md §6, §5.4) and the sandbox
counts per client IP. With an identity each, each group keeps its own budget; sharing one
identity, the two together stay within one IP's budget; one address under two identities (the
misconfiguration) overruns the provider, which answers 429. Figures come from the sandbox's request
log (the provider's view), not from timing; bench/rate_limit.py --modes egress measures rates.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from delivery_sandbox.state import max_in_window
from devstack.processes import Proc, start_worker
from worker.app import client_app
from worker.producer import Producer
from worker.stores import RedisLedger

from .conftest import SandboxAdmin, wait_ready

pytestmark = pytest.mark.integration

ADDRESSES = ("127.0.0.1", "127.0.0.2")
LIMIT_PER_S = 10
MESSAGES = 30
TIMEOUT_S = 60
# Redis databases of their own: no other test's worker consumes these queues or shares the
# limiter's budget.
BROKER_DB, RESULT_DB = 6, 7


@pytest.fixture
def egress_stack(
    stack_env: dict[str, str], redis_url: str
) -> Iterator[tuple[dict[str, str], Celery]]:
    env = {
        **stack_env,
        "DELIVERY_BROKER_URL": f"{redis_url}/{BROKER_DB}",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/{RESULT_DB}",
        "DELIVERY_LOG_LEVEL": "WARNING",
    }
    shared = redis.Redis.from_url(env["DELIVERY_BROKER_URL"])
    shared.flushdb()
    app = client_app(env["DELIVERY_BROKER_URL"], env["DELIVERY_RESULT_BACKEND"], name="egress")
    yield env, app
    app.close()
    shared.flushdb()
    shared.close()


def run_two_groups(
    env: dict[str, str],
    app: Celery,
    tmp_path: Path,
    identities: tuple[str, str],
    addresses: tuple[str, str] = ADDRESSES,
) -> None:
    """Start one worker per address with its identity, send MESSAGES emails, wait for all."""
    procs: list[Proc] = []
    try:
        for n, (address, identity) in enumerate(zip(addresses, identities, strict=True), 1):
            group_env = {
                **env,
                "DELIVERY_LOCAL_ADDRESS": address,
                "DELIVERY_EGRESS_IDENTITY": identity,
            }
            procs.append(start_worker(tmp_path, group_env, name=f"egress{n}", concurrency=3))
        for proc in procs:
            wait_ready(app, proc)
        ledger = RedisLedger(redis.Redis.from_url(env["DELIVERY_BROKER_URL"]))
        producer = Producer(app=app, ledger=ledger)
        results = [
            producer.enqueue(
                "email",
                {
                    "provider": "emailmassivo",
                    "to": [{"email": f"reader{i}@example.com"}],
                    "from": {"email": "news@example.org"},
                    "subject": f"Egress {i}",
                    "text": "Hello",
                },
            )
            for i in range(MESSAGES)
        ]
        assert {r.get(timeout=TIMEOUT_S)["status"] for r in results} == {"sent"}
    finally:
        for proc in procs:
            proc.stop()


def per_ip(sandbox: SandboxAdmin) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for request in sandbox.requests("emailmassivo"):
        out.setdefault(str(request["client_ip"]), []).append(request)
    return out


def window(requests: list[dict[str, object]]) -> int:
    return max_in_window((float(str(r["time"])) for r in requests), 1.0)


def test_two_identities_keep_a_budget_each(
    egress_stack: tuple[dict[str, str], Celery], sandbox: SandboxAdmin, tmp_path: Path
) -> None:
    env, app = egress_stack
    run_two_groups(env, app, tmp_path, (f"ip-{ADDRESSES[0]}", f"ip-{ADDRESSES[1]}"))
    by_ip = per_ip(sandbox)
    # Both groups sent, from their own address, and nothing was refused.
    assert sorted(by_ip) == sorted(ADDRESSES)
    everything = [r for requests in by_ip.values() for r in requests]
    assert len(everything) == MESSAGES
    assert {r["status"] for r in everything} == {200}  # no 429 (EmailMassivo 200, seed 003)
    for requests in by_ip.values():
        assert window(requests) <= LIMIT_PER_S
    # Two budgets: together they exceeded one IP's limit in some second, legally.
    assert window(everything) > LIMIT_PER_S


def test_two_addresses_sharing_an_identity_share_one_budget(
    egress_stack: tuple[dict[str, str], Celery], sandbox: SandboxAdmin, tmp_path: Path
) -> None:
    env, app = egress_stack
    run_two_groups(env, app, tmp_path, ("shared-ip", "shared-ip"))
    by_ip = per_ip(sandbox)
    assert sorted(by_ip) == sorted(ADDRESSES)  # both groups sent
    everything = [r for requests in by_ip.values() for r in requests]
    assert len(everything) == MESSAGES
    assert {r["status"] for r in everything} == {200}
    # One budget for both: never more than one IP's limit in any second, all IPs together.
    assert window(everything) <= LIMIT_PER_S


def test_one_address_under_two_identities_overruns_the_provider(
    egress_stack: tuple[dict[str, str], Celery], sandbox: SandboxAdmin, tmp_path: Path
) -> None:
    """The misconfiguration check-config warns about and the README rules out: two budgets
    drawn through one source IP. The provider (the sandbox, per client IP) sees their sum."""
    env, app = egress_stack
    run_two_groups(env, app, tmp_path, ("ip-a", "ip-b"), addresses=(ADDRESSES[0], ADDRESSES[0]))
    requests = sandbox.requests("emailmassivo")
    assert {str(r["client_ip"]) for r in requests} == {ADDRESSES[0]}
    throttled = [r for r in requests if r["status"] == 429]
    # More than one IP's limit arrived in some second, and the provider refused the excess.
    assert window(requests) > LIMIT_PER_S
    assert throttled
