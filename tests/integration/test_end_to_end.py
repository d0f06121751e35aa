"""End to end: producer → Redis → real ``celery worker`` → sandbox over HTTP → result backend."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from celery import Celery

from devstack.processes import Proc
from worker.models import InvalidMessage
from worker.producer import Producer
from worker.stores import RedisLedger

from .conftest import SandboxAdmin

pytestmark = pytest.mark.integration

RESULT_TIMEOUT_S = 30


def email(provider: str, **extra: Any) -> dict[str, Any]:
    return {
        "provider": provider,
        "to": [{"email": "ada@example.com", "name": "Ada"}],
        "from": {"email": "shop@example.org", "name": "Shop"},
        "subject": "Order 1042",
        "html": "<p>Thanks</p>",
        "text": "Thanks",
        **extra,
    }


def test_task_called_by_name_delivers_and_writes_the_result(
    worker_proc: Proc, client: Celery, sandbox: SandboxAdmin
) -> None:
    """A producer with no worker code: ``send_task`` by name, result from the backend."""
    async_result = client.send_task("tasks.send_email", args=[email("emailmassivo")])
    result = async_result.get(timeout=RESULT_TIMEOUT_S)
    assert result["status"] == "sent"
    assert result["provider"] == "emailmassivo"
    assert result["attempts"] == 1
    (arrived,) = sandbox.messages("emailmassivo")
    assert arrived["message_id"] == next(iter(result["provider_message_ids"].values()))
    assert arrived["idempotency_key"] == async_result.id  # the delivery id, stable on retries
    mail = arrived["fields"]["mail"]
    assert mail["to"] == {"email": "ada@example.com", "name": "Ada"}
    assert mail["subject"] == "Order 1042"
    (request,) = sandbox.requests("emailmassivo")
    assert (request["method"], request["status"]) == ("POST", 200)  # seed 003: 200 OK
    assert request["path"].endswith("/api/v1/external-mails/send")


def test_bare_client_send_task_without_queue_is_served(
    worker_proc: Proc, stack_env: dict[str, str], sandbox: SandboxAdmin
) -> None:
    """The by-name call of docs/design.md §2.1 exactly as written: a plain ``Celery`` app, no
    ``queue``.

    It publishes to Celery's default queue (``celery``), which a worker started without ``-Q``
    consumes besides ``delivery``; before, the message waited there forever with no error.
    """
    bare = Celery(
        broker=stack_env["DELIVERY_BROKER_URL"], backend=stack_env["DELIVERY_RESULT_BACKEND"]
    )
    try:
        message = {"provider": "smspartner", "to": ["+33612345609"], "text": "by name"}
        async_result = bare.send_task("tasks.send_sms", args=[message])
        assert async_result.get(timeout=RESULT_TIMEOUT_S)["status"] == "sent"
    finally:
        bare.close()
    (arrived,) = sandbox.messages("smspartner")
    assert arrived["fields"]["phoneNumbers"] == "+33612345609"


@pytest.mark.parametrize(
    ("channel", "provider", "message", "recipients"),
    [
        ("email", "postal", email("postal", cc=[{"email": "bo@example.com"}]), 2),
        ("email", "emailmassivo", email("emailmassivo"), 1),
        ("email", "mailpartner", email("mailpartner"), 1),
        (
            "sms",
            "smspartner",
            {
                "provider": "smspartner",
                "to": ["+33612345601", "+33612345602"],
                "text": "Hi\nthere",
                "sender": "Shop",
            },
            2,
        ),
        (
            "voice",
            "voicepartner",
            {
                "provider": "voicepartner",
                "mode": "tts",
                "to": ["+33612345603"],
                "text": "Bonjour",
                "lang": "fr",
            },
            1,
        ),
        (
            "voice",
            "voicepartner",
            {
                "provider": "voicepartner",
                "mode": "voicemail",
                "to": ["+33612345604"],
                "audio_token": "tok1",
            },
            1,
        ),
    ],
    ids=["postal", "emailmassivo", "mailpartner", "smspartner", "voice-tts", "voice-voicemail"],
)
def test_every_provider_delivers_through_the_sandbox(
    worker_proc: Proc,
    producer: Producer,
    sandbox: SandboxAdmin,
    channel: str,
    provider: str,
    message: dict[str, Any],
    recipients: int,
) -> None:
    result = producer.enqueue(channel, message).get(timeout=RESULT_TIMEOUT_S)
    assert result["status"] == "sent", result
    assert result["provider"] == provider
    assert len(result["provider_message_ids"]) == recipients
    arrived = sandbox.messages(provider)
    assert len(arrived) == 1
    assert len(arrived[0]["recipients"]) == recipients
    # The key never travels in what the sandbox recorded, and the result never holds it.
    assert "apiKey" not in arrived[0]["fields"]
    assert "sandbox-" not in repr(result)


def test_sms_wire_format(worker_proc: Proc, producer: Producer, sandbox: SandboxAdmin) -> None:
    message = {
        "provider": "smspartner",
        "to": ["+33612345601"],
        "text": "Prix: 5€\nMerci",
        "sender": "Shop",
    }
    result = producer.enqueue("sms", message).get(timeout=RESULT_TIMEOUT_S)
    assert result["status"] == "sent"
    (arrived,) = sandbox.messages("smspartner")
    fields = arrived["fields"]
    assert fields["phoneNumbers"] == "+33612345601"
    assert fields["message"] == "Prix: 5:euro::br:Merci"
    assert fields["sender"] == "Shop"
    assert arrived["tag"].startswith("dw")


def test_postal_attachment_and_tracing_header(
    worker_proc: Proc, producer: Producer, sandbox: SandboxAdmin
) -> None:
    content = base64.b64encode(b"hello").decode()
    attachment = {"filename": "a.txt", "content_type": "text/plain", "content": content}
    async_result = producer.enqueue("email", email("postal", attachments=[attachment]))
    assert async_result.get(timeout=RESULT_TIMEOUT_S)["status"] == "sent"
    (arrived,) = sandbox.messages("postal")
    fields = arrived["fields"]
    assert fields["attachments"] == [
        {"name": "a.txt", "content_type": "text/plain", "data": content}
    ]
    assert fields["headers"]["X-Delivery-Id"] == async_result.id


def test_invalid_message_is_refused_before_the_queue(
    worker_proc: Proc, producer: Producer, sandbox: SandboxAdmin, ledger: RedisLedger
) -> None:
    broker = ledger.redis
    before = broker.llen("delivery")
    with pytest.raises(InvalidMessage) as info:
        producer.enqueue(
            "sms", {"provider": "smspartner", "to": ["+33612345601"], "text": "x", "sender": "a b"}
        )
    assert info.value.errors[0]["field"] == "sender"
    assert broker.llen("delivery") == before
    assert sandbox.requests() == []


def test_invalid_message_sent_by_name_fails_cleanly_in_the_worker(
    worker_proc: Proc, client: Celery, sandbox: SandboxAdmin
) -> None:
    result = client.send_task("tasks.send_sms", args=[{"to": "nope"}]).get(timeout=RESULT_TIMEOUT_S)
    assert result["status"] == "failed"
    assert result["error"]["kind"] == "invalid_message"
    assert "to" in result["error"]["message"]
    assert sandbox.requests() == []


def test_transient_503s_are_retried_until_sent(
    worker_proc: Proc, producer: Producer, sandbox: SandboxAdmin
) -> None:
    sandbox.set_faults(
        [{"provider": "mailpartner", "action": "status", "status": 503, "first_n": 2}]
    )
    result = producer.enqueue("email", email("mailpartner")).get(timeout=RESULT_TIMEOUT_S)
    assert result["status"] == "sent"
    assert result["attempts"] == 3
    statuses = [r["status"] for r in sandbox.requests("mailpartner")]
    assert statuses == [503, 503, 200]
    assert len(sandbox.messages("mailpartner")) == 1


def test_postal_http_200_error_is_a_failure_not_a_send(
    worker_proc: Proc, producer: Producer, sandbox: SandboxAdmin
) -> None:
    message = email("postal", **{"from": {"email": "x@unverified.shop.example"}})
    result = producer.enqueue("email", message).get(timeout=RESULT_TIMEOUT_S)
    assert result["status"] == "failed"
    assert result["error"] == {
        "kind": "permanent",
        "code": "UnauthenticatedFromAddress",
        "message": result["error"]["message"],
    }
    assert [r["status"] for r in sandbox.requests("postal")] == [200]
    assert sandbox.messages("postal") == []


def test_suppressed_recipient_fails_once_without_retry(
    worker_proc: Proc, producer: Producer, sandbox: SandboxAdmin
) -> None:
    message = email("emailmassivo", to=[{"email": "unsubscribed.bob@example.com"}])
    result = producer.enqueue("email", message).get(timeout=RESULT_TIMEOUT_S)
    assert result["status"] == "failed"
    assert result["error"]["kind"] == "recipient_rejected"
    assert result["error"]["code"] == "422"
    assert len(sandbox.requests("emailmassivo")) == 1
    # The result masks the address the provider echoed back.
    assert "unsubscribed.bob@" not in repr(result)


def test_idempotent_enqueue_sends_once(
    worker_proc: Proc, producer: Producer, sandbox: SandboxAdmin
) -> None:
    message = email("postal", idempotency_key="order-1042-confirmation")
    first = producer.enqueue("email", message)
    second = producer.enqueue("email", message)
    assert first.id == second.id
    assert first.get(timeout=RESULT_TIMEOUT_S)["status"] == "sent"
    assert len(sandbox.messages("postal")) == 1


@pytest.mark.parametrize("success_status", [200, 201])
def test_emailmassivo_both_success_modes_with_cc_and_a_lost_answer(
    worker_proc: Proc, producer: Producer, sandbox: SandboxAdmin, success_status: int
) -> None:
    """EmailMassivo answers 200 (seed 003) or 201 (RuSender); a resend after a lost answer is
    answered 200 with the first uuid: one send, result ``sent``, cc reported by uuid."""
    sandbox.http.post(
        "/_admin/config", json={"emailmassivo_success_status": success_status}
    ).raise_for_status()
    sandbox.set_faults([{"provider": "emailmassivo", "action": "accept_then_drop", "first_n": 1}])
    message = email("emailmassivo", cc=[{"email": "cy@example.com"}])
    result = producer.enqueue("email", message).get(timeout=RESULT_TIMEOUT_S)
    assert result["status"] == "sent", result
    assert result["attempts"] == 2
    (arrived,) = sandbox.messages("emailmassivo")
    assert arrived["recipients"] == ["ada@example.com", "cy@example.com"]
    assert result["provider_message_ids"]["a***@example.com"] == arrived["message_id"]
    assert set(result["provider_message_ids"]) == {"a***@example.com", "c***@example.com"}
    assert result["rejected_recipients"] == {}
    requests = sandbox.requests("emailmassivo")
    assert [(r["status"], r["outcome"]) for r in requests] == [
        (None, "accepted"),
        (200, "duplicate"),
    ]
