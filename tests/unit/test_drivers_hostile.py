"""Property tests: whatever a provider answers, a driver returns an outcome or raises a
classified :class:`~worker.errors.DeliveryError`, never anything else.

Answers are drawn from random bytes, arbitrary JSON of the wrong shapes, each provider's own
envelopes with fields replaced by junk, HTML error pages, truncated bodies, huge payloads and
odd ``Retry-After`` headers, under any HTTP status.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.errors import DeliveryError
from worker.models import Message
from worker.providers import SendContext, SendOutcome, make_driver, parse_message

from .driver_support import mock_client

CTX = SendContext(delivery_id="d-1", idempotency_key="k-1", tag="dwd1")
BASE = "http://provider.test/prefix"

MESSAGES: dict[str, tuple[str, dict[str, Any]]] = {
    "postal": (
        "email",
        {
            "provider": "postal",
            "to": [{"email": "ada@example.com"}],
            "from": {"email": "shop@example.org"},
            "subject": "s",
            "text": "t",
        },
    ),
    "emailmassivo": (
        "email",
        {
            "provider": "emailmassivo",
            "to": [{"email": "ada@example.com"}],
            "cc": [{"email": "cy@example.com"}],
            "from": {"email": "shop@example.org"},
            "subject": "s",
            "text": "t",
        },
    ),
    "mailpartner": (
        "email",
        {
            "provider": "mailpartner",
            "to": [{"email": "ada@example.com"}],
            "subject": "s",
            "html": "<p>t</p>",
        },
    ),
    "smspartner": ("sms", {"provider": "smspartner", "to": ["+33612345678"], "text": "t"}),
    "voicepartner": (
        "voice",
        {
            "provider": "voicepartner",
            "mode": "voicemail",
            "to": ["+33612345678"],
            "audio_token": "tok",
            "notification_email": "ops@example.org",
        },
    ),
}

# Each provider's documented success shapes (docs/providers/), as seeds for mutation.
ENVELOPES: list[dict[str, Any]] = [
    {"status": "success", "time": 0.1, "flags": {}, "data": {"message_id": "m", "messages": {}}},
    {"status": "error", "time": 0.1, "flags": {}, "data": {"code": "NoRecipients"}},
    {"uuid": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "additionalRecipients": [{"error": "x"}]},
    {"message": "mail.to.name must be shorter", "statusCode": 400},
    {"success": True, "code": 200, "messageId": "x", "nbMail": 1, "cost": 1, "currency": "EUR"},
    {"success": True, "code": 200, "message_id": 307, "nb_sms": 1, "cost": 0.038},
    {"success": False, "code": 9, "error": [{"elementId": "x", "message": "y"}]},
    {"success": True, "campaignId": "Ff1tbu0lax", "cost": 0.1, "currency": "EUR"},
    {"success": False, "error": "NOT_CREDIT"},
    {"success": True, "code": 200, "credits": {"creditSms": 1, "balance": "0.9"}},
    {"success": True, "code": 200, "StatutResponse_List": [{"phoneNumber": "+33612345678"}]},
]

# Each provider's success answer (docs/providers/), and the fields that mark it as a success.
SUCCESS: dict[str, tuple[int, dict[str, Any], frozenset[str]]] = {
    "postal": (
        200,
        {
            "status": "success",
            "time": 0.05,
            "flags": {},
            "data": {"message_id": "m@x", "messages": {"ada@example.com": {"id": 1, "token": "t"}}},
        },
        frozenset({"status"}),
    ),
    "emailmassivo": (
        200,
        {"uuid": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "additionalRecipients": [{"uuid": "c"}]},
        frozenset(),
    ),
    "mailpartner": (
        200,
        {"success": True, "code": 200, "messageId": "x", "nbMail": 1, "cost": 1, "currency": "EUR"},
        frozenset({"success", "code"}),
    ),
    "smspartner": (
        200,
        {
            "success": True,
            "code": 200,
            "message_id": 307,
            "nb_sms": 1,
            "cost": 0.038,
            "currency": "EUR",
        },
        frozenset({"success", "code"}),
    ),
    "voicepartner": (
        200,
        {"success": True, "campaignId": "Ff1tbu0lax", "cost": 0.15, "currency": "EUR", "nbSms": 1},
        frozenset({"success"}),
    ),
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated_envelope(draw: st.DrawFn) -> bytes:
    envelope = dict(draw(st.sampled_from(ENVELOPES)))
    for key in draw(st.lists(st.sampled_from(sorted(envelope)), max_size=3)):
        envelope[key] = draw(json_values)
    if draw(st.booleans()):
        envelope[draw(st.text(max_size=10))] = draw(json_values)
    return json.dumps(envelope).encode()


@st.composite
def truncated(draw: st.DrawFn) -> bytes:
    body = json.dumps(draw(st.sampled_from(ENVELOPES))).encode()
    return body[: draw(st.integers(0, max(len(body) - 1, 0)))]


bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    mutated_envelope(),
    truncated(),
    st.sampled_from(
        [
            b"<html><body><h1>502 Bad Gateway</h1></body></html>",
            b"",
            b"null",
            b"\xff\xfe\x00garbage",
            b'{"success": true, "code": 200, "message_id": "' + b"9" * 2_000_000 + b'"}',
        ]
    ),
)
statuses = st.one_of(
    st.sampled_from([200, 201, 202, 204, 400, 401, 402, 403, 404, 408, 422, 429, 500, 502, 503]),
    st.integers(100, 599),
)
retry_after = st.one_of(
    st.none(),
    st.sampled_from(["0", "5", "-3", "1e9", "nan", "Wed, 21 Oct 2015 07:28:00 GMT", "soon"]),
)


def answer(status: int, body: bytes, retry: str | None) -> httpx.Response:
    headers = {"Retry-After": retry} if retry is not None else {}
    return httpx.Response(status, content=body, headers=headers)


def driver_for(provider: str, response: httpx.Response) -> tuple[Any, Message]:
    channel, data = MESSAGES[provider]
    driver = make_driver(
        provider,
        mock_client(lambda _request: response),
        api_key="hostile-test-key",
        base_url=BASE,
        **({"notification_email": None} if provider == "voicepartner" else {}),
    )
    return driver, parse_message(channel, data)


@st.composite
def junk_in_success(draw: st.DrawFn, provider: str) -> tuple[int, bytes]:
    """The provider's success answer, markers kept, other fields given values of wrong types."""
    status, envelope, markers = SUCCESS[provider]
    answer_ = json.loads(json.dumps(envelope))
    fields = sorted(set(answer_) - markers)
    for key in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3)):
        answer_[key] = draw(json_values)
    return status, json.dumps(answer_).encode()


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("provider", sorted(MESSAGES))
@PROPERTY
@given(status=statuses, body=bodies, retry=retry_after)
def test_send_answers_are_always_classified(
    provider: str, status: int, body: bytes, retry: str | None
) -> None:
    driver, message = driver_for(provider, answer(status, body, retry))
    try:
        outcome = driver.send(message, CTX)
    except DeliveryError as exc:
        assert exc.kind
        assert "hostile-test-key" not in str(exc)
        assert len(str(exc)) < 1000
        if exc.retry_after_s is not None:
            assert 0 <= exc.retry_after_s <= 3600
    else:
        assert isinstance(outcome, SendOutcome)
        assert outcome.provider == provider
        assert all(isinstance(v, str) for v in outcome.provider_message_ids.values())
        assert all(isinstance(v, str) for v in outcome.rejected_recipients.values())


@pytest.mark.parametrize("provider", sorted(MESSAGES))
@PROPERTY
@given(data=st.data())
def test_success_answers_with_wrong_types_are_classified(
    provider: str, data: st.DataObject
) -> None:
    status, body = data.draw(junk_in_success(provider))
    driver, message = driver_for(provider, answer(status, body, None))
    try:
        outcome = driver.send(message, CTX)
    except DeliveryError as exc:
        assert "hostile-test-key" not in str(exc)
    else:
        assert isinstance(outcome, SendOutcome)
        assert outcome.cost is None or isinstance(outcome.cost, float)
        assert outcome.currency is None or isinstance(outcome.currency, str)
        assert all(isinstance(v, str) for v in outcome.provider_message_ids.values())
        assert all(isinstance(v, str) for v in outcome.rejected_recipients.values())


@pytest.mark.parametrize("provider", ["mailpartner", "smspartner", "voicepartner"])
@PROPERTY
@given(status=statuses, body=bodies, retry=retry_after)
def test_balance_answers_are_always_classified(
    provider: str, status: int, body: bytes, retry: str | None
) -> None:
    driver, _message = driver_for(provider, answer(status, body, retry))
    try:
        balance = driver.check_balance()
    except DeliveryError as exc:
        assert "hostile-test-key" not in str(exc)
    else:
        assert balance is not None and isinstance(balance.has_credit, bool)


@PROPERTY
@given(status=statuses, body=bodies, retry=retry_after)
def test_sms_status_by_tag_answers_are_always_classified(
    status: int, body: bytes, retry: str | None
) -> None:
    driver, message = driver_for("smspartner", answer(status, body, retry))
    try:
        found = driver.reconcile(message, CTX)
    except DeliveryError as exc:
        assert "hostile-test-key" not in str(exc)
    else:
        assert found is None or isinstance(found, SendOutcome)
