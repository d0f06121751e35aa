"""Every source of the suppression lists over the real stack (redis-server, ``celery worker``
processes, the sandbox over HTTP): a provider's permanent answer, Postal's own suppression hold,
soft bounces and their expiry. Requests are counted at the sandbox: the next send of a
suppressed address costs no provider request, whichever provider it is sent through."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from devstack.processes import Proc
from worker.producer import Producer
from worker.stores import RedisLedger
from worker.stores.suppression import Entry, RecipientHasher, RedisSuppressionStore

from .conftest import SandboxAdmin

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
