"""Mail Partner driver: the wire format of docs/providers/mailpartner.md §2, against a MockTransport
fake."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from worker.errors import (
    AccountBlockedError,
    ConfigurationError,
    DeliveryError,
    PermanentError,
    RecipientRejectedError,
    ThrottledError,
    TransientError,
    UnknownOutcomeError,
)
from worker.models import EmailMessage
from worker.providers.base import SendContext
from worker.providers.mailpartner import MAIL_CODES, MailPartnerDriver, text_to_html, unsent_fields

from .driver_support import Handler, mock_client, recorder

API_KEY = "mailpartner-test-key-9e0c"
BASE = "http://sandbox.test/prefix/mailpartner/v1"
CTX = SendContext(delivery_id="dlv-0003", idempotency_key="idem-0003")

# docs/providers/mailpartner.md §2.2, send response.
SUCCESS = {
    "success": True,
    "code": 200,
    "messageId": "xxx",
    "nbMail": 1,
    "cost": 1,
    "currency": "EUR",
    "scheduledDeliveryDate": "2020-09-25 12:00:00",
}
# docs/providers/mailpartner.md §2.2, credits.
ME = {
    "success": True,
    "code": 200,
    "user": {"username": "exemple@email.com"},
    "credits": {"creditMail": 269082, "currency": "EUR", "balance": "10225.119"},
}


def make_driver(handler: Handler, base_url: str | None = BASE) -> MailPartnerDriver:
    client = mock_client(handler)
    return MailPartnerDriver(client, api_key=API_KEY, base_url=base_url)


def message(**overrides: Any) -> EmailMessage:
    data: dict[str, Any] = {
        "provider": "mailpartner",
        "to": [
            {"email": "john@example.com", "name": "John"},
            {"email": "mary@example.com"},
        ],
        "from": {"email": "shop@example.com", "name": "Shop"},
        "subject": "Newsletter",
        "html": "<h1>News</h1>",
    }
    data.update(overrides)
    return EmailMessage.model_validate(data)


def code_answer(code: int, status: int = 200, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"success": False, "code": code, **extra})


# -- request shape ----------------------------------------------------------------------------


def test_send_request_shape() -> None:
    seen, handler = recorder(httpx.Response(200, json=SUCCESS))
    txt = base64.b64encode(b"hello").decode()
    msg = message(
        reply_to={"email": "help@example.com", "name": "Help"},
        tag="spring-news",
        preview_text="not a Mail Partner field",
        attachments=[
            {"filename": "test.txt", "content_type": "text/plain", "content": txt},
            {"filename": "archive.tar.gz", "content_type": "application/gzip", "content": txt},
            {"filename": "README", "content": txt},
        ],
    )
    make_driver(handler).send(msg, CTX)

    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "http://sandbox.test/prefix/mailpartner/v1/send"
    assert "apikey" not in {k.lower() for k in request.headers}
    assert request.url.params.get("apiKey") is None
    assert json.loads(request.content) == {
        "apiKey": API_KEY,
        "subject": "Newsletter",
        "htmlContent": "<h1>News</h1>",
        "params": {
            "to": [{"email": "john@example.com", "name": "John"}, {"email": "mary@example.com"}]
        },
        "replyTo": {"email": "help@example.com", "name": "Help"},
        "attachments": [
            # docs/providers/mailpartner.md §2.2: the filename is given without extension.
            {"base64Content": txt, "contentType": "text/plain", "filename": "test"},
            {"base64Content": txt, "contentType": "application/gzip", "filename": "archive.tar"},
            {
                "base64Content": txt,
                "contentType": "application/octet-stream",
                "filename": "README",
            },
        ],
        "tag": "spring-news",
    }


def test_sender_is_not_sent() -> None:
    # docs/providers/mailpartner.md §2.2: the sender is not a documented request field [NOT FOUND].
    seen, handler = recorder(httpx.Response(200, json=SUCCESS))
    make_driver(handler).send(message(), CTX)
    body = json.loads(seen[0].content)
    assert not {"from", "sender", "fromEmail", "senderEmail"} & set(body)


def test_default_base_url() -> None:
    seen, handler = recorder(httpx.Response(200, json=SUCCESS))
    make_driver(handler, base_url=None).send(message(), CTX)
    assert str(seen[0].url) == "https://api.mailpartner.fr/v1/send"


def test_text_only_message_becomes_escaped_html() -> None:
    seen, handler = recorder(httpx.Response(200, json=SUCCESS))
    msg = message(html=None, text="Price < 5 & rising\r\nsee <b>you</b>\nbye")
    make_driver(handler).send(msg, CTX)
    html = json.loads(seen[0].content)["htmlContent"]
    assert html == "Price &lt; 5 &amp; rising<br>\nsee &lt;b&gt;you&lt;/b&gt;<br>\nbye"


def test_text_to_html_escapes_quotes() -> None:
    assert text_to_html('say "hi"') == "say &quot;hi&quot;"


# -- success ------------------------------------------------------------------------------------


def test_success_maps_message_id_per_recipient() -> None:
    _, handler = recorder(httpx.Response(200, json=SUCCESS))
    outcome = make_driver(handler).send(message(), CTX)
    assert outcome.provider_message_ids == {"john@example.com": "xxx", "mary@example.com": "xxx"}
    assert outcome.cost == 1.0
    assert outcome.currency == "EUR"


def test_snake_case_message_id_is_accepted() -> None:
    body = {"success": True, "code": 200, "message_id": 42, "cost": "0.5", "currency": "EUR"}
    _, handler = recorder(httpx.Response(200, json=body))
    outcome = make_driver(handler).send(message(), CTX)
    assert outcome.provider_message_ids["john@example.com"] == "42"
    assert outcome.cost == 0.5


@pytest.mark.parametrize("message_id", [None, "", True, {"id": 1}])
def test_success_without_message_id_is_an_unknown_outcome(message_id: Any) -> None:
    body = {"success": True, "code": 200, "messageId": message_id}
    _, handler = recorder(httpx.Response(200, json=body))
    with pytest.raises(UnknownOutcomeError):
        make_driver(handler).send(message(), CTX)


# -- the code table (docs/providers/mailpartner.md §2.3) -------------------------------------------

EXPECTED_CLASS: dict[int, type[DeliveryError]] = {
    **{code: PermanentError for code in MAIL_CODES},
    1: ConfigurationError,
    3: ConfigurationError,
    10: ConfigurationError,
    20: ConfigurationError,
    30: ConfigurationError,
    40: ConfigurationError,
    96: ConfigurationError,
    11: AccountBlockedError,
    14: RecipientRejectedError,
    429: ThrottledError,
    500: TransientError,
}


def test_code_table_covers_the_reference() -> None:
    documented = {1, 2, 3, 4, 5, 8, 9, 10, 11, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25}
    documented |= {30, 40, 45, 46, 47, 48, 49, 50, 55, 90, 96, 429, 500}
    assert documented <= set(MAIL_CODES)


@pytest.mark.parametrize(("code", "expected"), sorted(EXPECTED_CLASS.items()))
def test_code_classes(code: int, expected: type[DeliveryError]) -> None:
    _, handler = recorder(code_answer(code, message=f"code {code} text"))
    with pytest.raises(DeliveryError) as info:
        make_driver(handler).send(message(), CTX)
    assert type(info.value) is expected
    assert info.value.provider_code == str(code)
    assert info.value.provider == "mailpartner"


def test_code_429_waits_a_minute_by_default() -> None:
    _, handler = recorder(code_answer(429, status=429))
    with pytest.raises(ThrottledError) as info:
        make_driver(handler).send(message(), CTX)
    assert info.value.retry_after_s == 60.0


def test_code_429_honours_retry_after() -> None:
    response = httpx.Response(
        429, json={"success": False, "code": 429}, headers={"Retry-After": "5"}
    )
    _, handler = recorder(response)
    with pytest.raises(ThrottledError) as info:
        make_driver(handler).send(message(), CTX)
    assert info.value.retry_after_s == 5.0


def test_unknown_code_is_permanent_unless_http_5xx() -> None:
    _, handler = recorder(code_answer(77))
    with pytest.raises(PermanentError):
        make_driver(handler).send(message(), CTX)
    _, handler = recorder(code_answer(77, status=503))
    with pytest.raises(TransientError):
        make_driver(handler).send(message(), CTX)


def test_validation_details_reach_the_error() -> None:
    body = {
        "success": False,
        "code": 9,
        "error": [{"elementId": "children[attachments].data", "message": "Extension interdite"}],
    }
    _, handler = recorder(httpx.Response(400, json=body))
    with pytest.raises(PermanentError, match="Extension interdite"):
        make_driver(handler).send(message(), CTX)


# -- balance ------------------------------------------------------------------------------------


def test_check_balance_reads_credit_mail() -> None:
    seen, handler = recorder(httpx.Response(200, json=ME))
    balance = make_driver(handler).check_balance()
    assert balance is not None
    assert balance.has_credit is True
    assert balance.credits == 269082.0
    assert balance.currency == "EUR"
    (request,) = seen
    assert request.method == "GET"
    assert request.url.path == "/prefix/mailpartner/v1/me"
    assert request.url.params["apiKey"] == API_KEY


def test_check_balance_without_credit() -> None:
    body = {**ME, "credits": {"creditMail": 0, "currency": "EUR", "balance": "0.000"}}
    _, handler = recorder(httpx.Response(200, json=body))
    balance = make_driver(handler).check_balance()
    assert balance is not None and balance.has_credit is False


def test_check_balance_with_a_bad_key() -> None:
    _, handler = recorder(code_answer(10, message="Clé API incorrecte"))
    with pytest.raises(ConfigurationError):
        make_driver(handler).check_balance()


# -- hostile answers ----------------------------------------------------------------------------

HUGE = b'{"success":true,"code":200,"messageId":"' + b"x" * (2 * 1024 * 1024) + b'"}'


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        pytest.param(
            httpx.Response(502, html="<html><h1>502 Bad Gateway</h1></html>"),
            TransientError,
            id="html-502",
        ),
        pytest.param(
            httpx.Response(200, content=b'{"success":true,"code":200,"messa'),
            UnknownOutcomeError,
            id="truncated-json-200",
        ),
        pytest.param(httpx.Response(200, json=[SUCCESS]), UnknownOutcomeError, id="array"),
        pytest.param(
            httpx.Response(200, json={"success": "yes", "code": 200, "messageId": "x"}),
            UnknownOutcomeError,
            id="success-yes",
        ),
        pytest.param(
            httpx.Response(200, json={"success": True, "code": "two hundred"}),
            UnknownOutcomeError,
            id="code-garbage",
        ),
        pytest.param(httpx.Response(200, content=HUGE), UnknownOutcomeError, id="huge-body"),
        pytest.param(
            httpx.Response(404, json={"detail": "not here"}), PermanentError, id="404-no-envelope"
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
    assert len(str(info.value)) < 1000


def test_unsent_fields_name_each_field_and_why() -> None:
    # docs/providers/mailpartner.md §2.2: no sender field [NOT FOUND], no preheader, one HTML body:
    # each is reported.
    full = message(text="plain", preview_text="teaser")
    assert [w.partition(":")[0] for w in unsent_fields(full)] == ["from", "text", "preview_text"]
    assert all("shop@example.com" not in w and "teaser" not in w for w in unsent_fields(full))
    # A text-only body reaches Mail Partner as htmlContent (text_to_html): nothing to report.
    text_only = message(html=None, text="plain", **{"from": None})
    assert unsent_fields(text_only) == ()
    _, handler = recorder(httpx.Response(200, json=SUCCESS))
    assert make_driver(handler).send(full, CTX).warnings == unsent_fields(full)
