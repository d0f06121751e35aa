"""The send pipeline against the suppression list (``worker.delivery.pipeline``), on the
in-memory stores (the Redis hot path's lookup is held to the same contract by
``tests/stores/test_hotpath_contract.py``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from worker.config import Settings
from worker.delivery import Done, process
from worker.runtime import Runtime
from worker.stores.suppression import Entry

A, B = "+33612345678", "+33698765432"
OK = {"success": True, "code": 200, "message_id": 307, "nb_sms": 1, "cost": 0.038}


@pytest.fixture(autouse=True)
def _uncached_loggers() -> Iterator[None]:
    was = structlog.get_config()["cache_logger_on_first_use"]
    structlog.configure(cache_logger_on_first_use=False)
    yield
    structlog.configure(cache_logger_on_first_use=was)


class Provider:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json=OK)

    def numbers(self) -> list[str]:
        body = json.loads(self.requests[-1].content)
        return str(body["phoneNumbers"]).split(",")


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
def rt(provider: Provider) -> Iterator[Runtime]:
    settings = Settings(
        smspartner_api_key="sms-secret-key",
        smspartner_base_url="http://provider.test/smspartner/v1",
        suppression_secret="s" * 32,
    )
    runtime = Runtime.in_memory(
        settings, client=httpx.Client(transport=httpx.MockTransport(provider))
    )
    yield runtime
    runtime.close()


def stop(rt: Runtime, number: str) -> None:
    key = rt.hasher.key("sms", number)
    rt.suppression.add(Entry("sms", key, "stop", "send", "smspartner", masked="+336****78"))


def run(rt: Runtime, to: list[str], **extra: Any) -> Done:
    message = {"provider": "smspartner", "to": to, "text": "Hello", **extra}
    outcome = process("sms", message, delivery_id="d-1", task_name="tasks.send_sms", rt=rt)
    assert isinstance(outcome, Done)
    return outcome


def test_every_recipient_suppressed_fails_without_a_provider_request(
    rt: Runtime, provider: Provider
) -> None:
    stop(rt, A)
    result = run(rt, [A]).result
    assert result.status == "failed"
    assert result.error is not None and result.error.kind == "suppressed"
    assert result.error.code == "stop" and "stop" in result.error.message
    assert result.suppressed_recipients == {"+3361*****78": "stop"}
    assert provider.requests == []
    record = rt.ledger.get("d-1")
    assert record is not None and record.state == "failed"


def test_some_suppressed_sends_to_the_rest_and_lists_them_masked(
    rt: Runtime, provider: Provider
) -> None:
    stop(rt, A)
    result = run(rt, [A, B]).result
    assert result.status == "sent"
    assert provider.numbers() == [B]
    assert result.suppressed_recipients == {"+3361*****78": "stop"}
    assert A not in result.model_dump_json()


def test_ignore_suppression_sends_and_is_logged(rt: Runtime, provider: Provider) -> None:
    stop(rt, A)
    with capture_logs() as logs:
        result = run(rt, [A], ignore_suppression=True).result
    assert result.status == "sent"
    assert provider.numbers() == [A]
    assert any(e["event"] == "delivery.suppression_ignored" for e in logs)


def test_a_number_written_otherwise_is_the_same_entry(rt: Runtime, provider: Provider) -> None:
    rt.suppression.add(Entry("sms", rt.hasher.key("sms", "0033 6 12 34 56 78"), "manual", "manual"))
    assert run(rt, [A]).result.status == "failed"
    assert provider.requests == []


def test_a_stop_refusal_suppresses_the_number_for_the_next_send(rt: Runtime) -> None:
    answers = [httpx.Response(200, json={"success": False, "code": 14, "message": "STOP"})]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0) if answers else httpx.Response(200, json=OK)

    rt.client = httpx.Client(transport=httpx.MockTransport(handler))
    first = run(rt, [A]).result
    assert first.status == "failed" and first.error is not None
    assert first.error.kind == "recipient_rejected"
    entry = rt.suppression.check("sms", [rt.hasher.key("sms", A)])[rt.hasher.key("sms", A)]
    assert (entry.reason, entry.source, entry.provider) == ("stop", "send", "smspartner")
    message = {"provider": "smspartner", "to": [A], "text": "Hello"}
    second = process("sms", message, delivery_id="d-2", task_name="tasks.send_sms", rt=rt)
    assert isinstance(second, Done) and second.result.error is not None
    assert second.result.error.kind == "suppressed"
    assert len(seen) == 1  # no request for the second send


def test_a_bounce_event_suppresses_its_recipient_and_a_soft_one_counts(rt: Runtime) -> None:
    from worker.tracking import DeliveryEvent, EventType
    from worker.tracking.service import suppress_from_events

    msg = {"provider": "smspartner", "to": [A, B], "text": "Hello"}
    rt.ledger.create("d-9", channel="sms", provider="smspartner",
                     extra={"message": json.dumps(msg)})  # fmt: skip

    def event(kind: EventType, masked: str, n: int) -> DeliveryEvent:
        return DeliveryEvent(event_id=f"e{n}", type=kind, provider="smspartner",
                             provider_message_id="1", delivery_id="d-9", recipient=masked,
                             occurred_at=1.0, source="webhook")  # fmt: skip

    suppress_from_events(rt, [event(EventType.BOUNCED, "+3361*****78", 1)])
    key_a, key_b = rt.hasher.key("sms", A), rt.hasher.key("sms", B)
    found = rt.suppression.check("sms", [key_a, key_b])
    assert set(found) == {key_a}
    assert (found[key_a].reason, found[key_a].source) == ("hard_bounce", "tracking")
    threshold = rt.settings.suppression_soft_threshold
    for n in range(threshold - 1):
        suppress_from_events(rt, [event(EventType.DEFERRED, "+3369*****32", 10 + n)])
    assert rt.suppression.check("sms", [key_b]) == {}
    suppress_from_events(rt, [event(EventType.DEFERRED, "+3369*****32", 99)])
    entry = rt.suppression.check("sms", [key_b])[key_b]
    assert entry.reason == "soft_bounce" and entry.expires_at is not None


def test_a_postal_hold_on_its_suppression_list_suppresses_on_every_email_provider() -> None:
    from worker.tracking import DeliveryEvent, EventType
    from worker.tracking.service import suppress_from_events

    settings = Settings(suppression_secret="s" * 32)
    rt = Runtime.in_memory(settings, client=httpx.Client(transport=httpx.MockTransport(Provider())))
    msg = {"provider": "postal", "to": [{"email": "ada@example.com"}],
           "from": {"email": "shop@example.org"}, "subject": "Order", "text": "Thanks"}  # fmt: skip
    rt.ledger.create("d-7", channel="email", provider="postal", extra={"message": json.dumps(msg)})

    def held(n: int, details: str) -> DeliveryEvent:
        return DeliveryEvent(event_id=f"h{n}", type=EventType.HELD, provider="postal",
                             provider_message_id="7", delivery_id="d-7",
                             recipient="a***@example.com", occurred_at=1.0, source="poll",
                             reason=details)  # fmt: skip

    key = rt.hasher.key("email", "ada@example.com")
    suppress_from_events(rt, [held(1, "Message held because send limit (100) has been reached.")])
    assert rt.suppression.check("email", [key]) == {}  # a send-limit hold is about the server
    reason = "Recipient (a***@example.com) is on the suppression list (reason: too many hard fails)"
    suppress_from_events(rt, [held(2, reason)])
    entry = rt.suppression.check("email", [key])[key]
    assert (entry.reason, entry.source, entry.provider) == ("hard_bounce", "tracking", "postal")
    assert entry.expires_at is None
    rt.close()
