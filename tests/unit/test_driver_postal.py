"""Postal driver: the wire format of docs/providers/postal.md §4, against a MockTransport fake."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from worker.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentError,
    ThrottledError,
    TransientError,
    UnknownOutcomeError,
)
from worker.models import EmailMessage
from worker.providers.base import SendContext
from worker.providers.postal import CONFIG_CODES, PERMANENT_CODES, PostalDriver

from .driver_support import Handler, mock_client, recorder

API_KEY = "postal-test-key-7f3a9c"
BASE = "http://sandbox.test/prefix/postal"
CTX = SendContext(delivery_id="dlv-0001", idempotency_key="idem-0001")

# docs/providers/postal.md §4.2, success example.
SUCCESS = {
    "status": "success",
    "time": 0.05,
    "flags": {},
    "data": {
        "message_id": "8f2c-uuid@rp.postal.example.com",
        "messages": {
            "john@example.com": {"id": 37171, "token": "a4udnay1xY2bQ9mZ"},
            "mary@example.com": {"id": 37172, "token": "bsfhjsdfs0000000"},
        },
    },
}


def make_driver(handler: Handler, base_url: str = BASE) -> PostalDriver:
    client = mock_client(handler)
    return PostalDriver(client, api_key=API_KEY, base_url=base_url)


def message(**overrides: Any) -> EmailMessage:
    data: dict[str, Any] = {
        "provider": "postal",
        "to": [
            {"email": "john@example.com", "name": "John Doe"},
            {"email": "mary@example.com"},
        ],
        "from": {"email": "news@example.com", "name": "News"},
        "subject": "Hello",
        "text": "plain body",
        "html": "<p>html body</p>",
    }
    data.update(overrides)
    return EmailMessage.model_validate(data)


def envelope(status: str, data: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"status": status, "time": 0.01, "flags": {}, "data": data})


# -- request shape ----------------------------------------------------------------------------


def test_send_message_request_shape() -> None:
    seen, handler = recorder(httpx.Response(200, json=SUCCESS))
    attachment = base64.b64encode(b"hello").decode()
    msg = message(
        cc=[{"email": "cc@example.com", "name": "Doe, Jane"}],
        bcc=[{"email": "bcc@example.com"}],
        reply_to={"email": "reply@example.com"},
        tag="welcome",
        headers={"X-Campaign": "spring"},
        preview_text="never sent",
        attachments=[{"filename": "f.txt", "content_type": "text/plain", "content": attachment}],
    )
    make_driver(handler).send(msg, CTX)

    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "http://sandbox.test/prefix/postal/api/v1/send/message"
    assert request.headers["X-Server-API-Key"] == API_KEY
    assert request.headers["Content-Type"] == "application/json"
    body = json.loads(request.content)
    assert body == {
        "to": ["John Doe <john@example.com>", "mary@example.com"],
        # A name with a comma is quoted, so Postal cannot split it into two addresses.
        "cc": ['"Doe, Jane" <cc@example.com>'],
        "bcc": ["bcc@example.com"],
        "from": "News <news@example.com>",
        "reply_to": "reply@example.com",
        "subject": "Hello",
        "plain_body": "plain body",
        "html_body": "<p>html body</p>",
        "tag": "welcome",
        "headers": {"X-Campaign": "spring", "X-Delivery-Id": "dlv-0001"},
        "attachments": [{"name": "f.txt", "content_type": "text/plain", "data": attachment}],
    }
    assert API_KEY not in request.content.decode()


def test_non_ascii_display_name_is_rfc2047_encoded() -> None:
    seen, handler = recorder(httpx.Response(200, json=SUCCESS))
    make_driver(handler).send(message(to=[{"email": "john@example.com", "name": "Jöhn"}]), CTX)
    (to,) = json.loads(seen[0].content)["to"]
    assert to.startswith("=?utf-8?") and to.endswith(" <john@example.com>")


def test_delivery_id_header_replaces_a_caller_copy() -> None:
    seen, handler = recorder(httpx.Response(200, json=SUCCESS))
    make_driver(handler).send(message(headers={"x-delivery-id": "forged"}), CTX)
    assert json.loads(seen[0].content)["headers"] == {"X-Delivery-Id": "dlv-0001"}


def test_minimal_message_omits_optional_fields() -> None:
    seen, handler = recorder(httpx.Response(200, json=SUCCESS))
    make_driver(handler).send(message(html=None, to=[{"email": "john@example.com"}]), CTX)
    body = json.loads(seen[0].content)
    assert set(body) == {"to", "from", "subject", "plain_body", "headers"}


def test_raw_message_goes_to_send_raw_with_every_recipient() -> None:
    seen, handler = recorder(httpx.Response(200, json=SUCCESS))
    raw = base64.b64encode(b"From: news@example.com\r\nSubject: x\r\n\r\nbody").decode()
    msg = EmailMessage.model_validate(
        {
            "provider": "postal",
            "to": [{"email": "john@example.com", "name": "John"}],
            "cc": [{"email": "mary@example.com"}],
            "bcc": [{"email": "bcc@example.com"}, {"email": "john@example.com"}],
            "from": {"email": "news@example.com"},
            "raw": raw,
        }
    )
    make_driver(handler).send(msg, CTX)
    (request,) = seen
    assert str(request.url) == "http://sandbox.test/prefix/postal/api/v1/send/raw"
    assert request.headers["X-Server-API-Key"] == API_KEY
    assert json.loads(request.content) == {
        "mail_from": "news@example.com",
        "rcpt_to": ["john@example.com", "mary@example.com", "bcc@example.com"],
        "data": raw,
    }


def test_base_url_is_required() -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    with pytest.raises(ConfigurationError, match="DELIVERY_POSTAL_BASE_URL"):
        PostalDriver(client, api_key=API_KEY)


# -- success ------------------------------------------------------------------------------------


def test_success_maps_ids_per_recipient() -> None:
    _, handler = recorder(httpx.Response(200, json=SUCCESS))
    outcome = make_driver(handler).send(message(), CTX)
    assert outcome.provider == "postal"
    assert outcome.provider_message_ids == {
        "john@example.com": "37171",
        "mary@example.com": "37172",
    }


def test_postal_has_no_balance_and_no_reconcile() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json=SUCCESS)

    driver = make_driver(handler)
    assert driver.check_balance() is None
    assert driver.reconcile(message(), CTX) is None
    assert calls == []
    assert driver.supports_idempotency is False


# -- errors: HTTP 200 with status "error" ---------------------------------------------------------


@pytest.mark.parametrize("code", sorted(CONFIG_CODES))
def test_auth_codes_are_configuration_errors(code: str) -> None:
    # docs/providers/postal.md §4.1: InvalidServerAPIKey echoes the token; it must not reach the
    # error text.
    data = {"code": code, "message": "The API token provided in X-Server-API-Key was not valid."}
    if code == "InvalidServerAPIKey":
        data["token"] = API_KEY
    if code == "ServerSuspended":
        data = {"code": code}  # no message (docs/providers/postal.md §4.1)
    _, handler = recorder(envelope("error", data))
    with pytest.raises(ConfigurationError) as info:
        make_driver(handler).send(message(), CTX)
    assert info.value.provider_code == code
    assert info.value.status_code == 200
    assert API_KEY not in str(info.value)


@pytest.mark.parametrize("code", [*sorted(PERMANENT_CODES), "SomethingNewInV4"])
def test_validation_and_unknown_codes_are_permanent(code: str) -> None:
    _, handler = recorder(envelope("error", {"code": code, "message": f"{code} happened"}))
    with pytest.raises(PermanentError) as info:
        make_driver(handler).send(message(), CTX)
    assert info.value.provider_code == code
    assert f"{code} happened" in info.value.message
    # Not a transient in disguise: the service must never retry these.
    assert not isinstance(info.value, TransientError)


def test_no_recipients_example_is_permanent_not_sent() -> None:
    # The trap in docs/design.md §9: HTTP 200 with status "error" must not be reported as sent.
    body = {
        "status": "error",
        "time": 0.01,
        "flags": {},
        "data": {
            "code": "NoRecipients",
            "message": "There are no recipients defined to receive this message",
        },
    }
    _, handler = recorder(httpx.Response(200, json=body))
    with pytest.raises(PermanentError, match="no recipients"):
        make_driver(handler).send(message(), CTX)


def test_parameter_error_is_permanent() -> None:
    body = {
        "status": "parameter-error",
        "time": 0.0,
        "flags": {},
        "data": {"message": "`rcpt_to` parameter is required but is missing"},
    }
    _, handler = recorder(httpx.Response(200, json=body))
    with pytest.raises(PermanentError) as info:
        make_driver(handler).send(message(), CTX)
    assert info.value.provider_code == "parameter-error"
    assert "rcpt_to" in info.value.message


# -- errors: not from Postal itself ------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 500, 502, 503, 504])
def test_non_200_is_transient(status: int) -> None:
    _, handler = recorder(httpx.Response(status, text="<html>proxy error</html>"))
    with pytest.raises(TransientError) as info:
        make_driver(handler).send(message(), CTX)
    assert info.value.status_code == status
    assert not isinstance(info.value, ThrottledError)


def test_429_from_a_proxy_is_throttled_with_retry_after() -> None:
    _, handler = recorder(httpx.Response(429, headers={"Retry-After": "12"}, text="slow down"))
    with pytest.raises(ThrottledError) as info:
        make_driver(handler).send(message(), CTX)
    assert info.value.retry_after_s == 12.0


def test_503_keeps_retry_after() -> None:
    _, handler = recorder(httpx.Response(503, headers={"Retry-After": "30"}))
    with pytest.raises(TransientError) as info:
        make_driver(handler).send(message(), CTX)
    assert info.value.retry_after_s == 30.0


# -- hostile answers ----------------------------------------------------------------------------

HUGE = b'{"status":"success","pad":"' + b"x" * (2 * 1024 * 1024) + b'"}'


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        pytest.param(
            httpx.Response(502, html="<html><h1>502 Bad Gateway</h1></html>"),
            TransientError,
            id="html-502",
        ),
        pytest.param(
            httpx.Response(200, content=b'{"status":"success","data":{"mess'),
            UnknownOutcomeError,
            id="truncated-json-200",
        ),
        pytest.param(
            httpx.Response(200, json=[{"status": "success"}]), UnknownOutcomeError, id="array"
        ),
        pytest.param(httpx.Response(200, json={"status": True}), UnknownOutcomeError, id="bool"),
        pytest.param(httpx.Response(200, json={}), UnknownOutcomeError, id="empty-object"),
        pytest.param(
            httpx.Response(200, json={"status": "success", "data": "yes"}),
            UnknownOutcomeError,
            id="data-string",
        ),
        pytest.param(
            httpx.Response(
                200, json={"status": "success", "data": {"messages": {"a@example.com": 5}}}
            ),
            UnknownOutcomeError,
            id="message-not-object",
        ),
        pytest.param(
            httpx.Response(
                200,
                json={"status": "success", "data": {"messages": {"a@example.com": {"id": True}}}},
            ),
            UnknownOutcomeError,
            id="bool-id",
        ),
        pytest.param(
            httpx.Response(200, json={"status": "error", "data": ["NoRecipients"]}),
            PermanentError,
            id="error-data-list",
        ),
        pytest.param(
            httpx.Response(200, json={"status": "error", "data": {"code": 42}}),
            PermanentError,
            id="error-code-int",
        ),
        pytest.param(httpx.Response(200, content=HUGE), UnknownOutcomeError, id="huge-body"),
        pytest.param(
            httpx.Response(200, content=b"\xff\xfe\x00garbage"), UnknownOutcomeError, id="binary"
        ),
    ],
)
def test_hostile_answers_are_classified(
    response: httpx.Response, expected: type[DeliveryError]
) -> None:
    _, handler = recorder(response)
    with pytest.raises(DeliveryError) as info:
        make_driver(handler).send(message(), CTX)
    assert type(info.value) is expected
    assert info.value.provider == "postal"
    assert len(str(info.value)) < 1000
