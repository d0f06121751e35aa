"""Every source of the suppression lists over the real stack (redis-server, ``celery worker``
processes, the sandbox over HTTP): a provider's permanent answer, Postal's own suppression hold,
soft bounces and their expiry. Requests are counted at the sandbox: the next send of a
suppressed address costs no provider request, whichever provider it is sent through."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery

from devstack.processes import Proc, start_redis, start_worker
from devstack.receiver import start_receiver
from worker.app import client_app
from worker.producer import Producer
from worker.stores import RedisLedger
from worker.stores.suppression import Entry, RecipientHasher, RedisSuppressionStore

from .conftest import SandboxAdmin, wait_ready
from .webhook_catcher import Catcher, catching, signature_headers

pytestmark = pytest.mark.integration

RESULT_TIMEOUT_S = 30
ENTRY_TIMEOUT_S = 30.0


def wipe(client: redis.Redis) -> None:
    for key in client.scan_iter("dw:supp:*"):
        client.delete(key)


@pytest.fixture
def clean(sandbox: SandboxAdmin, ledger: RedisLedger) -> Iterator[SandboxAdmin]:
    """No suppression entry left by another test."""
    wipe(ledger.redis)
    yield sandbox
    wipe(ledger.redis)


def email(provider: str, address: str) -> dict[str, Any]:
    return {"provider": provider, "to": [{"email": address}], "from": {"email": "shop@example.org"},
            "subject": "Your order", "text": "Thanks"}  # fmt: skip


def entry_of(client: redis.Redis, address: str, secret: bytes | None = None) -> Entry | None:
    """The live entry of ``address`` on the email list, as the send's first script reads it."""
    key = RecipientHasher(secret).key("email", address)
    return RedisSuppressionStore(client).check("email", [key]).get(key)


def wait_entry(
    client: redis.Redis, address: str, timeout_s: float = ENTRY_TIMEOUT_S
) -> tuple[Entry, float]:
    """The entry once it is there, and when it was first seen (``time.monotonic()``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = entry_of(client, address)
        if found is not None:
            return found, time.monotonic()
        assert time.monotonic() < deadline, f"no suppression entry within {timeout_s} s"
        time.sleep(0.02)


# -- EmailMassivo's permanent answers ----------------------------------------------------------

# The sandbox's magic recipients (delivery_sandbox/providers/emailmassivo.py ``SUPPRESSED``)
# answer the 422s of docs/providers/emailmassivo.md §5.4.
EMAILMASSIVO_REFUSALS = [
    ("unsubscribed-ivy@example.com", "unsubscribed"),
    ("complained-ivy@example.com", "complaint"),
    ("missing-ivy@example.com", "invalid"),
]


@pytest.mark.parametrize(("address", "reason"), EMAILMASSIVO_REFUSALS)
@pytest.mark.parametrize("next_provider", ["postal", "mailpartner"])
def test_an_emailmassivo_refusal_costs_every_other_provider_its_request(
    worker_proc: Proc,
    producer: Producer,
    clean: SandboxAdmin,
    ledger: RedisLedger,
    address: str,
    reason: str,
    next_provider: str,
) -> None:
    first = producer.enqueue("email", email("emailmassivo", address)).get(RESULT_TIMEOUT_S)
    assert first["status"] == "failed" and first["error"]["kind"] == "recipient_rejected", first
    assert len(clean.requests("emailmassivo")) == 1
    entry = entry_of(ledger.redis, address)
    assert entry is not None, "the refusal added no entry"
    assert (entry.reason, entry.source, entry.provider) == (reason, "send", "emailmassivo")
    assert entry.expires_at is None and entry.masked.endswith("***@example.com")

    second = producer.enqueue("email", email(next_provider, address)).get(RESULT_TIMEOUT_S)
    assert second["status"] == "failed"
    assert (second["error"]["kind"], second["error"]["code"]) == ("suppressed", reason)
    assert clean.requests(next_provider) == []  # no request for the suppressed address


# -- Pushed by Postal: its suppression hold, soft bounces, a bounce webhook ------------------

SOFT_SUPPRESS_S = 2.0


@dataclass
class Stack:
    """A redis-server of its own, ``delivery-worker receiver`` and a ``celery worker`` with a
    small soft-bounce policy (2 within 30 s suppress for 2 s). Polling is 10 minutes away:
    every entry here comes from a signed Postal webhook through the receiver."""

    redis: redis.Redis
    producer: Producer
    receiver_url: str

    def send(self, provider: str, address: str) -> dict[str, Any]:
        task = self.producer.enqueue("email", email(provider, address))
        result: dict[str, Any] = task.get(RESULT_TIMEOUT_S)
        return result


@pytest.fixture(scope="module")
def stack(
    stack_env: dict[str, str], sandbox_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    workdir = Path(tmp_path_factory.mktemp("supp-sources"))
    server = start_redis(workdir)
    url = str(server.extra["url"])
    public_key = httpx.get(sandbox_url + "/_admin/webhooks").json()["postal"]["public_key"]
    env = {
        **stack_env,
        "DELIVERY_BROKER_URL": f"{url}/0",
        "DELIVERY_RESULT_BACKEND": f"{url}/1",
        "DELIVERY_TRACKING_POLL_FIRST_S": "600",
        "DELIVERY_POSTAL_WEBHOOK_PUBLIC_KEY": public_key,
        "DELIVERY_SUPPRESSION_SOFT_THRESHOLD": "2",
        "DELIVERY_SUPPRESSION_SOFT_WINDOW_S": "30",
        "DELIVERY_SUPPRESSION_SOFT_SUPPRESS_S": str(SOFT_SUPPRESS_S),
    }
    app: Celery = client_app(env["DELIVERY_BROKER_URL"], env["DELIVERY_RESULT_BACKEND"],
                             name="supp-sources")  # fmt: skip
    client = redis.Redis.from_url(env["DELIVERY_BROKER_URL"])
    receiver = start_receiver(workdir, env)
    worker = start_worker(workdir, env, name="suppsrc", concurrency=2)
    try:
        wait_ready(app, worker)
        yield Stack(client, Producer(app=app, ledger=RedisLedger(client)), receiver.extra["url"])
    finally:
        worker.stop()
        receiver.stop()
        client.close()
        server.stop()


@pytest.fixture
def pushed(stack: Stack, sandbox: SandboxAdmin) -> Iterator[SandboxAdmin]:
    """The sandbox's Postal pushes its signed webhooks to the stack's receiver."""
    wipe(stack.redis)
    sandbox.http.post("/_admin/webhooks", json={"postal_url": stack.receiver_url + "/hooks/postal"})
    yield sandbox
    sandbox.http.post("/_admin/webhooks", json={"postal_url": None}).raise_for_status()


def test_a_postal_hold_on_its_own_suppression_list_suppresses_everywhere(
    stack: Stack, pushed: SandboxAdmin
) -> None:
    address = "ada@example.com"
    settings = {"postal": {"suppressed": {address: "too many hard fails"}}}
    pushed.http.post("/_admin/settings", json=settings).raise_for_status()
    # Postal accepts the message and holds it: the send is "sent"; MessageHeld says why.
    assert stack.send("postal", address)["status"] == "sent"
    entry, _ = wait_entry(stack.redis, address)
    assert (entry.reason, entry.source, entry.provider) == ("hard_bounce", "tracking", "postal")
    assert entry.expires_at is None
    for provider in ("emailmassivo", "postal"):
        result = stack.send(provider, address)
        assert (result["error"]["kind"], result["error"]["code"]) == ("suppressed", "hard_bounce")
    assert pushed.requests("emailmassivo") == [] and len(pushed.requests("postal")) == 1


def test_a_hold_for_another_reason_suppresses_nothing(stack: Stack, pushed: SandboxAdmin) -> None:
    # The sandbox holds hold… addresses for itself (as a send limit would): not about them.
    assert stack.send("postal", "hold-ada@example.com")["status"] == "sent"
    deadline = time.monotonic() + ENTRY_TIMEOUT_S
    while not [a for a in webhook_attempts(pushed) if a["status"] == 200]:
        assert time.monotonic() < deadline, "the MessageHeld was never pushed"
        time.sleep(0.05)
    assert stack.send("mailpartner", "hold-ada@example.com")["status"] == "sent"


def webhook_attempts(sandbox: SandboxAdmin) -> list[dict[str, Any]]:
    attempts = sandbox.http.get("/_admin/webhooks").json()["attempts"]
    return [a for a in attempts if a["provider"] == "postal"]


def test_two_soft_bounces_suppress_for_a_while_then_the_address_is_sent_again(
    stack: Stack, pushed: SandboxAdmin
) -> None:
    # softfail… is SoftFail at once (MessageDelayed), then Sent after Postal's retry.
    address = "softfail-ada@example.com"
    assert stack.send("postal", address)["status"] == "sent"
    deadline = time.monotonic() + ENTRY_TIMEOUT_S
    while not stack.redis.exists(f"dw:supp:soft:email:{RecipientHasher().key('email', address)}"):
        assert time.monotonic() < deadline, "the first MessageDelayed was never counted"
        time.sleep(0.05)
    assert entry_of(stack.redis, address) is None  # one is not enough
    assert stack.send("postal", address)["status"] == "sent"
    entry, _ = wait_entry(stack.redis, address)
    assert (entry.reason, entry.source, entry.provider) == ("soft_bounce", "tracking", "postal")
    assert entry.expires_at is not None
    assert entry.expires_at - entry.at == pytest.approx(SOFT_SUPPRESS_S)
    suppressed = stack.send("mailpartner", address)
    assert (suppressed["error"]["kind"], suppressed["error"]["code"]) == (
        "suppressed",
        "soft_bounce",
    )
    assert pushed.requests("mailpartner") == []

    # Expired: sent again, by the next provider asked.
    deadline = time.monotonic() + SOFT_SUPPRESS_S + 5
    while entry_of(stack.redis, address) is not None:
        assert time.monotonic() < deadline, "the soft-bounce suppression never expired"
        time.sleep(0.05)
    assert stack.send("mailpartner", address)["status"] == "sent"
    assert len(pushed.requests("mailpartner")) == 1


# -- A bounce webhook takes effect for the next send within 1 s ------------------------------


@pytest.fixture
def catcher(sandbox: SandboxAdmin) -> Iterator[Catcher]:
    """Stands in for the receiver to take what the sandbox signs; the test delivers it."""
    with catching(ENTRY_TIMEOUT_S) as caught:
        url = caught.url
        sandbox.http.post("/_admin/webhooks", json={"postal_url": url}).raise_for_status()
        yield caught
        sandbox.http.post("/_admin/webhooks", json={"postal_url": None}).raise_for_status()


def test_a_bounce_webhook_suppresses_the_next_send_within_one_second(
    stack: Stack, sandbox: SandboxAdmin, catcher: Catcher
) -> None:
    wipe(stack.redis)
    address = "bounce-zed@example.com"  # Sent, then Bounced (a signed MessageBounced)
    assert stack.send("postal", address)["status"] == "sent"
    body, headers = catcher.wait_for("MessageBounced")
    signed = signature_headers(headers)
    assert entry_of(stack.redis, address) is None

    answer = httpx.post(stack.receiver_url + "/hooks/postal", content=body, headers=signed)
    accepted_at = time.monotonic()
    assert answer.status_code == 200, answer.text
    entry, seen_at = wait_entry(stack.redis, address, timeout_s=1.0)
    assert seen_at - accepted_at < 1.0
    assert (entry.reason, entry.source, entry.provider) == ("hard_bounce", "tracking", "postal")
    result = stack.send("mailpartner", address)
    assert (result["error"]["kind"], result["error"]["code"]) == ("suppressed", "hard_bounce")
    assert sandbox.requests("mailpartner") == []
