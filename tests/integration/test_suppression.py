"""Suppression over the real stack: redis-server, ``celery worker`` processes, the sandbox over
HTTP, and the ``delivery-worker suppression`` command as its own process. Requests are counted
at the sandbox: a suppressed recipient must cost no provider request at all."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from devstack.processes import Proc
from worker.producer import Producer
from worker.stores import RedisLedger

from .conftest import SandboxAdmin

pytestmark = pytest.mark.integration

RESULT_TIMEOUT_S = 30
STOP = "+33612340014"  # the sandbox's SMS Partner refuses numbers ending in 0014 (code 14)
A, B = "+33612345601", "+33612345602"


@pytest.fixture
def clean(sandbox: SandboxAdmin, ledger: RedisLedger) -> Iterator[SandboxAdmin]:
    """No suppression entry left by another test."""

    def wipe() -> None:
        for key in ledger.redis.scan_iter("dw:supp:*"):
            ledger.redis.delete(key)

    wipe()
    yield sandbox
    wipe()


def cli(stack_env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str]:
    """``delivery-worker suppression ...`` as the operator runs it, against the stack's Redis."""
    env = {**os.environ, **stack_env, "DELIVERY_REDIS_URL": stack_env["DELIVERY_BROKER_URL"]}
    done = subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "suppression", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr


def sms(producer: Producer, to: list[str], **extra: Any) -> dict[str, Any]:
    message = {"provider": "smspartner", "to": to, "text": "Your code is 1234", **extra}
    result: dict[str, Any] = producer.enqueue("sms", message).get(timeout=RESULT_TIMEOUT_S)
    return result


def test_a_stop_at_sms_partner_costs_the_next_send_no_request(
    worker_proc: Proc, producer: Producer, clean: SandboxAdmin
) -> None:
    first = sms(producer, [STOP])
    assert first["status"] == "failed" and first["error"]["kind"] == "recipient_rejected"
    assert len(clean.requests("smspartner")) == 1
    second = sms(producer, [STOP])
    assert second["status"] == "failed"
    assert (second["error"]["kind"], second["error"]["code"]) == ("suppressed", "stop")
    assert len(clean.requests("smspartner")) == 1  # the second send made no request


def test_some_suppressed_the_rest_is_sent_and_the_left_out_listed_masked(
    worker_proc: Proc, producer: Producer, clean: SandboxAdmin, stack_env: dict[str, str]
) -> None:
    code, out = cli(stack_env, "add", "sms", A, "--reason", "stop")
    assert code == 0, out
    result = sms(producer, [A, B])
    assert result["status"] == "sent"
    assert result["suppressed_recipients"] == {"+3361*****01": "stop"}
    assert len(clean.requests("smspartner")) == 1
    (arrived,) = clean.messages("smspartner")
    assert arrived["fields"]["phoneNumbers"] == B  # A left out of the request


def test_ignore_suppression_sends_anyway(
    worker_proc: Proc, producer: Producer, clean: SandboxAdmin, stack_env: dict[str, str]
) -> None:
    assert cli(stack_env, "add", "sms", A)[0] == 0
    assert sms(producer, [A])["error"]["kind"] == "suppressed"
    assert clean.requests("smspartner") == []
    result = sms(producer, [A], ignore_suppression=True)
    assert result["status"] == "sent"
    assert len(clean.requests("smspartner")) == 1


def test_export_then_import_keeps_the_worker_from_sending(
    worker_proc: Proc,
    producer: Producer,
    clean: SandboxAdmin,
    stack_env: dict[str, str],
    ledger: RedisLedger,
    tmp_path: Path,
) -> None:
    code, out = cli(stack_env, "import", "-", stdin=f"channel,recipient,reason\nsms,{A},stop\n")
    assert (code, "imported 1 entry" in out) == (0, True), out
    path = tmp_path / "supp.csv"
    code, out = cli(stack_env, "export", "--output", str(path))
    assert code == 0, out
    assert A not in path.read_text() and A.lstrip("+") not in path.read_text()
    client: redis.Redis = ledger.redis
    for key in client.scan_iter("dw:supp:*"):
        client.delete(key)
    assert sms(producer, [A])["status"] == "sent"  # forgotten: sent
    assert cli(stack_env, "import", str(path))[0] == 0
    result = sms(producer, [A])
    assert result["status"] == "failed" and result["error"]["kind"] == "suppressed"
    assert len(clean.requests("smspartner")) == 1  # only the send between the two
