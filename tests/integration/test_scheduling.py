"""Scheduled sends and cancellation over the real stack (Redis, ``celery worker``, sandbox).

Timing is read from the ledger: ``attempt_started_at`` is written by the send's gate right
before the request leaves, ``sent_at`` when the provider's answer was read.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery

from devstack.processes import Proc
from worker.config import get_settings
from worker.models import SmsMessage
from worker.producer import Producer
from worker.providers.smspartner import SmsPartnerDriver
from worker.stores import RedisLedger

from .conftest import SandboxAdmin

pytestmark = pytest.mark.integration

PARIS = ZoneInfo("Europe/Paris")


def at(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def sms(n: int, send_at: float | None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"provider": "smspartner", "to": [f"+336{n:08d}"], "text": "Hi"}
    if send_at is not None:
        message["send_at"] = at(send_at)
    return {**message, **extra}


def tag_of(delivery_id: str) -> str:
    """The tag the worker gives a delivery without its own (``reconcile_tag``)."""
    model = SmsMessage(provider="smspartner", to=["+33611112222"], text="x")
    tag = SmsPartnerDriver.reconcile_tag(model, delivery_id)
    assert tag is not None
    return tag


def wait_state(ledger: RedisLedger, delivery_id: str, states: set[str], timeout_s: float) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        record = ledger.get(delivery_id)
        if record is not None and record.state in states:
            return record
        time.sleep(0.02)
    raise AssertionError(f"{delivery_id}: not in {states}: {ledger.get(delivery_id)}")


def sms_tags(sandbox: SandboxAdmin) -> list[str]:
    return [m.get("tag") or "" for m in sandbox.messages("smspartner")]


def test_a_message_scheduled_3s_ahead_is_sent_at_its_time_not_before(
    worker_proc: Proc, producer: Producer, ledger: RedisLedger, sandbox: SandboxAdmin
) -> None:
    due = time.time() + 3.0
    result = producer.enqueue("sms", sms(1, due))
    record = wait_state(ledger, result.id, {"scheduled"}, 2.5)
    assert result.state == "SCHEDULED"
    assert tag_of(result.id) not in sms_tags(sandbox)  # held: not at the provider yet
    assert record.fields.get("provider_scheduled") is None  # 3 s: held by us, not the provider
    answer = result.get(timeout=15)
    assert answer["status"] == "sent"
    record = ledger.get(result.id)
    assert record is not None
    started, sent = float(record.fields["attempt_started_at"]), float(record.fields["sent_at"])
    assert started >= due, f"left {due - started:.3f} s early"
    assert sent - due <= 1.0, f"sent {sent - due:.3f} s after its time"
    assert sms_tags(sandbox).count(tag_of(result.id)) == 1


def test_cancel_before_the_send(
    worker_proc: Proc, producer: Producer, ledger: RedisLedger, sandbox: SandboxAdmin
) -> None:
    due = time.time() + 2.0
    result = producer.enqueue("sms", sms(2, due))
    wait_state(ledger, result.id, {"scheduled"}, 2.0)
    answer = producer.cancel(result.id)
    assert answer.answer == "cancelled", answer
    assert result.get(timeout=5)["status"] == "cancelled"
    # A copy already queued (e.g. a sweep) answers from the ledger and never sends.
    producer.app.send_task("tasks.send_sms", args=[sms(2, due)], task_id=result.id)
    time.sleep(max(0.0, due - time.time()) + 1.5)
    record = ledger.get(result.id)
    assert record is not None and record.state == "cancelled"
    assert tag_of(result.id) not in sms_tags(sandbox)
    assert producer.cancel(result.id).answer == "already_final"
    assert producer.cancel("no-such-id").answer == "unknown"


def test_cancel_after_the_send_is_refused(
    worker_proc: Proc, producer: Producer, ledger: RedisLedger, sandbox: SandboxAdmin
) -> None:
    result = producer.enqueue("sms", sms(3, None))
    assert result.get(timeout=15)["status"] == "sent"
    answer = producer.cancel(result.id)
    assert answer.answer == "already_sent" and "cannot be cancelled" in answer.detail
    record = ledger.get(result.id)
    assert record is not None and record.state == "sent"


def test_cancel_racing_the_send_ends_in_exactly_one_outcome(
    worker_proc: Proc, producer: Producer, ledger: RedisLedger, sandbox: SandboxAdmin
) -> None:
    due = time.time() + 2.5
    results = [producer.enqueue("sms", sms(100 + i, due)) for i in range(24)]
    answers: dict[str, str] = {}

    def cancel_at(offset_s: float, delivery_id: str) -> None:
        time.sleep(max(0.0, due + offset_s - time.time()))
        answers[delivery_id] = producer.cancel(delivery_id).answer

    # Cancels spread from just before to just after the due time, while the sends go out.
    threads = [
        threading.Thread(target=cancel_at, args=(-0.05 + 0.01 * i, r.id))
        for i, r in enumerate(results)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    time.sleep(1.0)
    tags = sms_tags(sandbox)
    outcomes = {"cancelled": 0, "already_sent": 0}
    for r in results:
        record = ledger.get(r.id)
        assert record is not None
        answer, copies = answers[r.id], tags.count(tag_of(r.id))
        if answer == "cancelled":
            assert record.state == "cancelled" and copies == 0, (answer, record.state, copies)
            assert r.get(timeout=5)["status"] == "cancelled"
        else:
            assert answer == "already_sent", answer
            assert record.state == "sent" and copies == 1, (answer, record.state, copies)
        outcomes[answer] += 1
    assert sum(outcomes.values()) == len(results)


@pytest.fixture
def operator(
    monkeypatch: pytest.MonkeyPatch, stack_env: dict[str, str], client: Celery, ledger: RedisLedger
) -> Any:
    """A producer whose process has the providers' keys (cancel at a provider needs them)."""
    for name, value in stack_env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    producer = Producer(app=client, ledger=ledger)
    yield producer
    producer.close()
    monkeypatch.undo()
    get_settings.cache_clear()


def _native_due() -> datetime:
    """The first 5-minute mark at least 7 minutes ahead (Paris and UTC marks coincide)."""
    t = datetime.now(UTC) + timedelta(minutes=7)
    t = t.replace(second=0, microsecond=0) + timedelta(minutes=(5 - t.minute % 5) % 5)
    return t


@pytest.mark.parametrize(
    ("channel", "provider", "message"),
    [
        ("sms", "smspartner", {"to": ["+33611112222"], "text": "Rdv demain"}),
        (
            "email",
            "mailpartner",
            {
                "to": [{"email": "ada@example.com"}],
                "from": {"email": "shop@example.org"},
                "subject": "Rdv",
                "html": "<p>Rdv</p>",
            },
        ),
        (
            "voice",
            "voicepartner",
            {"mode": "tts", "to": ["+33611112222"], "text": "Rdv", "lang": "fr"},
        ),
    ],
)
def test_native_scheduling_and_cancel_at_the_provider(
    worker_proc: Proc,
    operator: Producer,
    ledger: RedisLedger,
    sandbox: SandboxAdmin,
    channel: str,
    provider: str,
    message: dict[str, Any],
) -> None:
    due = _native_due()
    result = operator.enqueue(
        channel, {"provider": provider, **message, "send_at": due.isoformat()}
    )
    record = wait_state(ledger, result.id, {"scheduled"}, 10.0)
    end = time.monotonic() + 10
    while record.fields.get("provider_scheduled") != "1" and time.monotonic() < end:
        time.sleep(0.05)
        record = ledger.get(result.id)
    assert record.fields.get("provider_scheduled") == "1", record.fields
    while result.state != "SCHEDULED" and time.monotonic() < end:
        time.sleep(0.05)  # the ledger is written just before the task's state
    assert result.state == "SCHEDULED"
    (accepted,) = sandbox.messages(provider)
    fields = accepted["fields"]
    local = due.astimezone(PARIS)
    if provider == "voicepartner":
        assert fields["scheduledDate"] == local.strftime("%Y-%m-%d %H:%M:00")
    else:
        assert fields["scheduledDeliveryDate"] == local.strftime("%d/%m/%Y")
        assert (fields["time"], fields["minute"]) == (local.hour, local.minute)
    answer = operator.cancel(result.id)
    assert answer.answer == "cancelled_at_provider", answer
    final = result.get(timeout=5)
    assert final["status"] == "cancelled" and final["provider_message_ids"]
    record = ledger.get(result.id)
    assert record is not None and record.state == "cancelled"
    # The provider says it is cancelled: a second cancel there is refused as already done.
    assert operator.cancel(result.id).answer == "already_final"
