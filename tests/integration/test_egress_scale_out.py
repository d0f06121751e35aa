"""Scale-out across egress IPs: one rate budget per egress identity, counted per client IP.

Two worker groups bound to 127.0.0.1 and 127.0.0.2 (``DELIVERY_LOCAL_ADDRESS``; Linux routes
all of 127.0.0.0/8 to loopback, so both reach the sandbox on 127.0.0.1 and the sandbox, which
takes the connection's peer address, sees two client IPs). EmailMassivo allows 10 requests/s
per IP (docs/providers/index.md §6, docs/providers/emailmassivo.md §5.4) and the sandbox counts per
client IP.

At the documented limit, both layouts send everything with 0 x 429 and never more than 10
requests from one IP in any second. Which budget each group draws from is shown by counts, not
speed: with a long window (``DELIVERY_RATE_LIMITS``, 5 per 30 s) a budget is spent at once and
nothing more leaves for 30 s, so the sandbox's request log holds exactly one budget per
identity. One address under two identities (the misconfiguration) overruns the provider, which
answers 429. ``bench/rate_limit.py --modes egress`` measures the rates.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

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
LONG_BUDGET = 5
LONG_WINDOW = {"emailmassivo": {"send": f"{LONG_BUDGET}/30s"}}
"""A budget spent at once that does not come back during the test."""
# Redis databases of their own: no other test's worker consumes these queues or shares the
# limiter's budget.
BROKER_DB, RESULT_DB = 6, 7

Request = dict[str, object]


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


@contextmanager
def two_groups(
    env: dict[str, str],
    app: Celery,
    tmp_path: Path,
    identities: tuple[str, str],
    addresses: tuple[str, str] = ADDRESSES,
    extra: dict[str, str] | None = None,
) -> Iterator[Producer]:
    """One worker per address with its identity, running while the block sends."""
    procs: list[Proc] = []
    try:
        for n, (address, identity) in enumerate(zip(addresses, identities, strict=True), 1):
            group_env = {
                **env,
                **(extra or {}),
                "DELIVERY_LOCAL_ADDRESS": address,
                "DELIVERY_EGRESS_IDENTITY": identity,
            }
            procs.append(start_worker(tmp_path, group_env, name=f"egress{n}", concurrency=3))
        for proc in procs:
            wait_ready(app, proc)
        ledger = RedisLedger(redis.Redis.from_url(env["DELIVERY_BROKER_URL"]))
        yield Producer(app=app, ledger=ledger)
    finally:
        for proc in procs:
            proc.stop()


def send_emails(producer: Producer, count: int) -> list[AsyncResult[object]]:
    return [
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
        for i in range(count)
    ]


def send_all(producer: Producer) -> None:
    results = send_emails(producer, MESSAGES)
    assert {r.get(timeout=TIMEOUT_S)["status"] for r in results} == {"sent"}  # type: ignore[index]


def requests_after_budgets(sandbox: SandboxAdmin, at_least: int) -> list[Request]:
    """The request log once ``at_least`` requests arrived and the budgets had time to show
    any excess (the long window keeps every budget spent for 30 s)."""
    deadline = time.monotonic() + TIMEOUT_S
    while len(sandbox.requests("emailmassivo")) < at_least:
        assert time.monotonic() < deadline, "the budgets were not spent in time"
        time.sleep(0.1)
    time.sleep(3.0)  # anything beyond the budgets would have left by now
    return sandbox.requests("emailmassivo")


def by_ip(requests: list[Request]) -> dict[str, list[Request]]:
    out: dict[str, list[Request]] = {}
    for request in requests:
        out.setdefault(str(request["client_ip"]), []).append(request)
    return out


STAMP_TOLERANCE_S = 0.01
"""The log's times are when each request was received (wall clock); the sandbox's limiter,
which answers 429, stamps the attempt a few milliseconds later, once the request is parsed, on
the monotonic clock. Two requests almost exactly 1 s apart can fall in one second by one stamp
and not by the other, so the log's windows are read 10 ms short: the limiter's own verdict (no
429 above) is the exact one."""


def window(requests: list[Request]) -> int:
    return max_in_window((float(str(r["time"])) for r in requests), 1.0 - STAMP_TOLERANCE_S)


def test_two_identities_send_within_each_ips_limit(
    egress_stack: tuple[dict[str, str], Celery], sandbox: SandboxAdmin, tmp_path: Path
) -> None:
    env, app = egress_stack
    with two_groups(env, app, tmp_path, (f"ip-{ADDRESSES[0]}", f"ip-{ADDRESSES[1]}")) as producer:
        send_all(producer)
    requests = sandbox.requests("emailmassivo")
    assert len(requests) == MESSAGES
    assert {r["status"] for r in requests} == {200}  # no 429 (EmailMassivo 200, seed 003)
    groups = by_ip(requests)
    assert sorted(groups) == sorted(ADDRESSES)  # both groups sent, each from its address
    for mine in groups.values():
        assert window(mine) <= LIMIT_PER_S


def test_two_addresses_sharing_an_identity_stay_within_one_limit(
    egress_stack: tuple[dict[str, str], Celery], sandbox: SandboxAdmin, tmp_path: Path
) -> None:
    env, app = egress_stack
    with two_groups(env, app, tmp_path, ("shared-ip", "shared-ip")) as producer:
        send_all(producer)
    requests = sandbox.requests("emailmassivo")
    assert len(requests) == MESSAGES
    assert {r["status"] for r in requests} == {200}
    assert sorted(by_ip(requests)) == sorted(ADDRESSES)  # both groups sent
    # One budget for both: never more than one IP's limit in any second, both IPs together.
    assert window(requests) <= LIMIT_PER_S


@pytest.mark.parametrize(
    ("identities", "budgets"),
    [((f"ip-{ADDRESSES[0]}", f"ip-{ADDRESSES[1]}"), 2), (("shared-ip", "shared-ip"), 1)],
    ids=["identity-each", "shared-identity"],
)
def test_each_identity_draws_one_budget(
    egress_stack: tuple[dict[str, str], Celery],
    sandbox: SandboxAdmin,
    tmp_path: Path,
    identities: tuple[str, str],
    budgets: int,
) -> None:
    env, app = egress_stack
    extra = {"DELIVERY_RATE_LIMITS": json.dumps(LONG_WINDOW)}
    with two_groups(env, app, tmp_path, identities, extra=extra) as producer:
        send_emails(producer, 4 * LONG_BUDGET)
        requests = requests_after_budgets(sandbox, budgets * LONG_BUDGET)
    assert len(requests) == budgets * LONG_BUDGET
    assert {r["status"] for r in requests} == {200}
    if budgets == 2:
        # A budget each, spent from each group's own address.
        assert {ip: len(mine) for ip, mine in by_ip(requests).items()} == dict.fromkeys(
            ADDRESSES, LONG_BUDGET
        )


def test_one_address_under_two_identities_overruns_the_provider(
    egress_stack: tuple[dict[str, str], Celery], sandbox: SandboxAdmin, tmp_path: Path
) -> None:
    """The misconfiguration check-config warns about and the README rules out: two budgets
    drawn through one source IP. The provider (the sandbox, per client IP) sees their sum."""
    env, app = egress_stack
    # Two budgets of 15 per 30 s, spent at once (no pacing for long windows): 30 requests
    # from one IP in a burst, three times what EmailMassivo admits per second.
    extra = {"DELIVERY_RATE_LIMITS": json.dumps({"emailmassivo": {"send": "15/30s"}})}
    addresses = (ADDRESSES[0], ADDRESSES[0])
    with two_groups(env, app, tmp_path, ("ip-a", "ip-b"), addresses, extra) as producer:
        send_emails(producer, 30)
        requests = requests_after_budgets(sandbox, 30)
    assert {str(r["client_ip"]) for r in requests} == {ADDRESSES[0]}
    assert window(requests) > LIMIT_PER_S
    assert any(r["status"] == 429 for r in requests)
