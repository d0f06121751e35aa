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


@pytest.fixture(scope="module")
def tracking_worker(
    stack_env: dict[str, str], redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, str], Producer]]:
    """A worker with beat (the tracking poller), on broker databases of its own (3, 4)."""
    from celery import Celery

    from devstack.processes import start_worker
    from worker.app import client_app

    from .conftest import wait_ready

    env = {
        **stack_env,
        "DELIVERY_BROKER_URL": f"{redis_url}/3",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/4",
        "DELIVERY_TRACKING_POLL_FIRST_S": "0.5",
        "DELIVERY_TRACKING_POLL_MAX_BACKOFF_S": "1",
        "DELIVERY_TRACKING_POLL_INTERVAL_S": "0.5",
    }
    shared = redis.Redis.from_url(env["DELIVERY_BROKER_URL"])
    shared.flushdb()
    app: Celery = client_app(env["DELIVERY_BROKER_URL"], env["DELIVERY_RESULT_BACKEND"],
                             name="supp-tests")  # fmt: skip
    workdir = Path(tmp_path_factory.mktemp("supp-tracking"))
    proc = start_worker(workdir, env, name="supptrack", concurrency=2,
                        extra_args=["-B", "-s", str(workdir / "beat-schedule")])  # fmt: skip
    try:
        wait_ready(app, proc)
        yield env, Producer(app=app, ledger=RedisLedger(shared))
    finally:
        proc.stop()
        shared.close()


def test_a_postal_hard_bounce_keeps_every_other_email_provider_from_sending(
    tracking_worker: tuple[dict[str, str], Producer], sandbox: SandboxAdmin
) -> None:
    import time

    env, producer = tracking_worker
    address = "bounce-ada@example.com"  # the sandbox's Postal bounces bounce… after sending

    def email(provider: str) -> dict[str, Any]:
        sender = {"email": "shop@example.org"}
        return {"provider": provider, "to": [{"email": address}], "from": sender,
                "subject": "Order", "text": "Thanks"}  # fmt: skip

    first = producer.enqueue("email", email("postal")).get(timeout=RESULT_TIMEOUT_S)
    assert first["status"] == "sent"
    shared = redis.Redis.from_url(env["DELIVERY_BROKER_URL"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not shared.hlen("dw:supp:email"):
        time.sleep(0.2)  # the poller reads Postal's Bounced status, tracking suppresses
    assert shared.hlen("dw:supp:email") == 1, "the bounce never reached the suppression list"
    code, out = cli(env, "list", "--channel", "email")
    assert code == 0 and "b***@example.com" in out and "hard_bounce" in out and "postal" in out
    for provider in ("emailmassivo", "mailpartner"):
        result = producer.enqueue("email", email(provider)).get(timeout=RESULT_TIMEOUT_S)
        assert result["status"] == "failed"
        assert (result["error"]["kind"], result["error"]["code"]) == ("suppressed", "hard_bounce")
        assert sandbox.requests(provider) == []
    shared.close()
