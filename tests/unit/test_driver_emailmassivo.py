"""EmailMassivo driver: the wire format of docs/providers/emailmassivo.md §5, against a
MockTransport fake."""

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
    RecipientDeferredError,
    RecipientRejectedError,
    ThrottledError,
    TransientError,
    UnknownOutcomeError,
)
from worker.models import EmailMessage
from worker.providers.base import SendContext
from worker.providers.emailmassivo import EmailMassivoDriver

from .driver_support import Handler, mock_client, recorder

API_KEY = "emailmassivo-test-key-41d2"
BASE = "http://sandbox.test/prefix/emailmassivo"
CTX = SendContext(delivery_id="dlv-0002", idempotency_key="idem-5b1e")
UUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"  # docs/providers/emailmassivo.md §5.4


def make_driver(handler: Handler, base_url: str | None = BASE) -> EmailMassivoDriver:
    client = mock_client(handler)
    return EmailMassivoDriver(client, api_key=API_KEY, base_url=base_url)


def message(**overrides: Any) -> EmailMessage:
    data: dict[str, Any] = {
        "provider": "emailmassivo",
        "to": [{"email": "user@example.com", "name": "User"}],
        "from": {"email": "shop@example.com", "name": "Shop"},
        "subject": "Your order",
        "html": "<p>Thanks</p>",
        "text": "Thanks",
    }
    data.update(overrides)
    return EmailMessage.model_validate(data)


def created() -> httpx.Response:
    return httpx.Response(201, json={"uuid": UUID})


def error(status: int, text: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"message": text, "statusCode": status}, headers=headers)


# -- request shape ----------------------------------------------------------------------------


def test_send_request_shape() -> None:
    seen, handler = recorder(created())
    pdf = base64.b64encode(b"%PDF-1.4").decode()
    msg = message(
        cc=[{"email": "cc@example.com", "name": "Copy"}],
        bcc=[{"email": "bcc@example.com"}],
        preview_text="Your receipt inside",
        headers={"X-Order": "42"},
        attachments=[{"filename": "invoice.pdf", "content": pdf}],
    )
    make_driver(handler).send(msg, CTX)

    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == (
        "http://sandbox.test/prefix/emailmassivo/api/v1/external-mails/send"
    )
    assert request.headers["X-Api-Key"] == API_KEY
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "idempotencyKey": "idem-5b1e",
        "mail": {
            "to": {"email": "user@example.com", "name": "User"},
            "from": {"email": "shop@example.com", "name": "Shop"},
            "subject": "Your order",
            "previewTitle": "Your receipt inside",
            "headers": {"X-Order": "42"},
            "cc": "cc@example.com",
            "bcc": "bcc@example.com",
            "html": "<p>Thanks</p>",
            "text": "Thanks",
            "attachments": [{"invoice.pdf": pdf}],
        },
    }
    assert API_KEY not in request.content.decode()


def test_default_base_url() -> None:
    seen, handler = recorder(created())
    make_driver(handler, base_url=None).send(message(), CTX)
    assert str(seen[0].url) == "https://api.emailmassivo.com/api/v1/external-mails/send"


def test_idempotency_key_is_always_sent_and_stable_across_attempts() -> None:
    seen, handler = recorder(created())
    driver = make_driver(handler)
    driver.send(message(), SendContext(delivery_id="d", idempotency_key="k-1", attempt=1))
    driver.send(message(), SendContext(delivery_id="d", idempotency_key="k-1", attempt=2))
    keys = [json.loads(r.content)["idempotencyKey"] for r in seen]
    assert keys == ["k-1", "k-1"]
    assert EmailMassivoDriver.supports_idempotency is True


def test_optional_fields_are_omitted() -> None:
    seen, handler = recorder(created())
    make_driver(handler).send(message(to=[{"email": "user@example.com"}], text=None), CTX)
    mail = json.loads(seen[0].content)["mail"]
    assert mail["to"] == {"email": "user@example.com"}
    assert set(mail) == {"to", "from", "subject", "html"}


@pytest.mark.parametrize("template_id", [123, "123"])
def test_template_goes_to_send_by_template(template_id: int | str) -> None:
    seen, handler = recorder(created())
    msg = message(
        html=None, text=None, template={"id": template_id, "params": {"test": "a", "test1": "b"}}
    )
    make_driver(handler).send(msg, CTX)
    (request,) = seen
    assert str(request.url).endswith("/prefix/emailmassivo/api/v1/external-mails/send-by-template")
    mail = json.loads(request.content)["mail"]
    assert mail["idTemplateMailUser"] == 123
    assert mail["params"] == {"test": "a", "test1": "b"}
    assert "html" not in mail and "text" not in mail


# -- success ------------------------------------------------------------------------------------


def test_201_uuid_is_success() -> None:
    _, handler = recorder(created())
    outcome = make_driver(handler).send(message(), CTX)
    assert outcome.provider == "emailmassivo"
    assert outcome.provider_message_ids == {"user@example.com": UUID}


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(httpx.Response(200, json={"ok": True}), id="200-without-uuid"),
        pytest.param(httpx.Response(202, json={}), id="202"),
        pytest.param(httpx.Response(201, json={}), id="201-without-uuid"),
        pytest.param(httpx.Response(201, json={"uuid": ""}), id="201-empty-uuid"),
        pytest.param(httpx.Response(201, json={"uuid": 7}), id="201-int-uuid"),
        pytest.param(httpx.Response(201, text="Created"), id="201-not-json"),
    ],
)
def test_anything_but_200_or_201_with_uuid_is_an_unknown_outcome(
    response: httpx.Response,
) -> None:
    # docs/providers/emailmassivo.md §5.4 (corrected): success is 200 or 201 with a uuid; for
    # anything else the idempotency key makes a resend safe. (A 200 with a uuid was here until seed
    # 003 showed that EmailMassivo answers 200.)
    _, handler = recorder(response)
    with pytest.raises(UnknownOutcomeError):
        make_driver(handler).send(message(), CTX)


# -- errors (docs/providers/emailmassivo.md §5.4) --------------------------------------------------


@pytest.mark.parametrize(
    ("status", "text", "expected"),
    [
        (
            400,
            "mail.to.name must be shorter than or equal to 255 characters,"
            "mail.from.email must be an email",
            PermanentError,
        ),
        (400, "Attachments type forbidden", PermanentError),
        (401, "Неверный ключ API", ConfigurationError),
        (402, "Is not enough resource on user Balance", AccountBlockedError),
        (403, "Forbidden — access denied", ConfigurationError),
        (404, "User, UserDomain or ExternalMailApiKey not found", ConfigurationError),
        (422, "receiver unsubscribed", RecipientRejectedError),
        (500, "Internal Server Error", TransientError),
        (503, "Service temporarily unavailable", TransientError),
        (418, "I'm a teapot", PermanentError),
    ],
)
def test_status_table(status: int, text: str, expected: type[DeliveryError]) -> None:
    _, handler = recorder(error(status, text))
    with pytest.raises(DeliveryError) as info:
        make_driver(handler).send(message(), CTX)
    assert type(info.value) is expected
    assert info.value.status_code == status
    assert info.value.provider == "emailmassivo"
    assert text[:20] in info.value.message


def test_429_honours_retry_after() -> None:
    _, handler = recorder(error(429, "Too Many Requests", {"Retry-After": "3"}))
    with pytest.raises(ThrottledError) as info:
        make_driver(handler).send(message(), CTX)
    assert info.value.retry_after_s == 3.0


def test_429_without_retry_after_waits_one_second() -> None:
    _, handler = recorder(error(429, "Too Many Requests"))
    with pytest.raises(ThrottledError) as info:
        make_driver(handler).send(message(), CTX)
    assert info.value.retry_after_s == 1.0


def test_503_keeps_retry_after() -> None:
    _, handler = recorder(error(503, "Service temporarily unavailable", {"Retry-After": "20"}))
    with pytest.raises(TransientError) as info:
        make_driver(handler).send(message(), CTX)
    assert not isinstance(info.value, (ThrottledError, UnknownOutcomeError))
    assert info.value.retry_after_s == 20.0


def test_redirect_is_a_configuration_error() -> None:
    _, handler = recorder(httpx.Response(301, headers={"Location": "https://elsewhere.test/"}))
    with pytest.raises(ConfigurationError):
        make_driver(handler).send(message(), CTX)


def test_no_balance_endpoint() -> None:
    _, handler = recorder(created())
    assert make_driver(handler).check_balance() is None


# -- hostile answers ----------------------------------------------------------------------------

HUGE = b'{"uuid":"' + b"x" * (2 * 1024 * 1024) + b'"}'


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        pytest.param(
            httpx.Response(502, html="<html><h1>502 Bad Gateway</h1></html>"),
            TransientError,
            id="html-502",
        ),
        pytest.param(
            httpx.Response(201, content=b'{"uuid":"3fa8'), UnknownOutcomeError, id="truncated-201"
        ),
        pytest.param(
            httpx.Response(200, content=b'{"uuid":"3fa8'), UnknownOutcomeError, id="truncated-200"
        ),
        pytest.param(httpx.Response(201, json=[UUID]), UnknownOutcomeError, id="array"),
        pytest.param(httpx.Response(201, json={"uuid": True}), UnknownOutcomeError, id="bool"),
        pytest.param(
            httpx.Response(400, json={"message": ["a", "b"], "statusCode": "400"}),
            PermanentError,
            id="message-list",
        ),
        pytest.param(httpx.Response(401, json=["nope"]), ConfigurationError, id="401-array"),
        pytest.param(httpx.Response(201, content=HUGE), UnknownOutcomeError, id="huge-body"),
        pytest.param(httpx.Response(500, content=HUGE), TransientError, id="huge-500"),
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


# -- 200 or 201 (seed 003, docs/providers/emailmassivo.md §5.4 corrected) --------------------------


@pytest.mark.parametrize("status", [200, 201])
def test_200_or_201_with_uuid_is_success(status: int) -> None:
    # Seed 003: "200 OK — Email accepted for processing" (uuid, additionalRecipients, warning);
    # RuSender (RS-DOC) answers 201.
    body = {"uuid": UUID, "warning": "idempotencyKey was not provided"}
    _, handler = recorder(httpx.Response(status, json=body))
    outcome = make_driver(handler).send(message(), CTX)
    assert outcome.provider_message_ids == {"user@example.com": UUID}
    assert outcome.rejected_recipients == {}


def test_repeat_answered_200_with_the_first_uuid_is_the_same_delivery() -> None:
    # Seed 003 / docs/providers/emailmassivo.md §5.5: a repeat within 1 h is answered 200 with the
    # same uuid, nothing new sent.
    answers = [httpx.Response(201, json={"uuid": UUID}), httpx.Response(200, json={"uuid": UUID})]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    driver = make_driver(handler)
    first = driver.send(message(), SendContext(delivery_id="d", idempotency_key="k", attempt=1))
    again = driver.send(message(), SendContext(delivery_id="d", idempotency_key="k", attempt=2))
    assert first.provider_message_ids == again.provider_message_ids == {"user@example.com": UUID}
    assert [json.loads(r.content)["idempotencyKey"] for r in seen] == ["k", "k"]


# -- error kinds by message text (seed 003 "Possible messages"; docs/providers/emailmassivo.md §5.4)
# -------------


@pytest.mark.parametrize(
    ("status", "text", "expected"),
    [
        # 404: a missing template is this message's fault; key/domain are configuration.
        (404, "TemplateMailUser not found by id", PermanentError),
        (404, "Шаблон не найден", PermanentError),
        (404, "ExternalMailApiKey not found", ConfigurationError),
        (404, "User Domain not found", ConfigurationError),
        (404, "MailUuid not found", ConfigurationError),
        (404, "", ConfigurationError),
        # 422: the five seed messages, then RuSender-style Russian texts.
        (422, "Email receiver unsubscribed from this API key mails", RecipientRejectedError),
        (422, "Email receiver complained from this API key mails", RecipientRejectedError),
        (422, "Email receiver doesn't exist", RecipientRejectedError),
        (422, "Email receiver unavailable", RecipientDeferredError),
        (422, "Template not found by templateId", PermanentError),
        (422, "Получатель отписался от писем этого ключа", RecipientRejectedError),
        (422, "Получатель пожаловался на письма этого ключа", RecipientRejectedError),
        (422, "Получатель не существует", RecipientRejectedError),
        (422, "Получатель недоступен", RecipientDeferredError),
        # Unknown 422 text: permanent for this message, but not claimed as a suppression.
        (422, "Something new went wrong", PermanentError),
        (422, "", PermanentError),
        # 400 attachment and template messages stay permanent.
        (400, "Attachments parse failed", PermanentError),
        (400, "Attachments size more than allowed", PermanentError),
        (400, "HTML template is not valid", PermanentError),
        (403, "API key is not active", ConfigurationError),
    ],
)
def test_error_kind_by_message_text(status: int, text: str, expected: type[DeliveryError]) -> None:
    _, handler = recorder(error(status, text))
    with pytest.raises(DeliveryError) as info:
        make_driver(handler).send(message(), CTX)
    assert type(info.value) is expected, info.value
    assert info.value.status_code == status


def test_recipient_deferred_is_retryable_and_not_a_provider_fault() -> None:
    _, handler = recorder(error(422, "Email receiver unavailable"))
    with pytest.raises(RecipientDeferredError) as info:
        make_driver(handler).send(message(), CTX)
    assert info.value.retryable is True
    assert info.value.provider_fault is False
    assert info.value.kind == "recipient_deferred"
    assert TransientError.provider_fault is True


def test_429_without_retry_after_on_a_json_or_empty_body_waits_one_second() -> None:
    # docs/providers/emailmassivo.md §5.4: EmailMassivo documents no Retry-After; the sandbox sends
    # none.
    for response in (error(429, "Too Many Requests"), httpx.Response(429)):
        _, handler = recorder(response)
        with pytest.raises(ThrottledError) as info:
            make_driver(handler).send(message(), CTX)
        assert info.value.retry_after_s == 1.0


# -- additionalRecipients (seed 003; item shape [NOT FOUND] docs/providers/emailmassivo.md §5.2) ---

CC_UUID = "11111111-2222-3333-4444-555555555555"


def cc_message() -> EmailMessage:
    return message(cc=[{"email": "cc@example.com"}], bcc=[{"email": "bcc@example.com"}])


def accepted_with(extra: Any) -> httpx.Response:
    return httpx.Response(200, json={"uuid": UUID, "additionalRecipients": extra})


def test_additional_recipients_by_position_cc_then_bcc() -> None:
    items = [{"uuid": CC_UUID}, {"error": "Invalid email address"}]
    _, handler = recorder(accepted_with(items))
    outcome = make_driver(handler).send(cc_message(), CTX)
    assert outcome.provider_message_ids == {"user@example.com": UUID, "cc@example.com": CC_UUID}
    assert outcome.rejected_recipients == {
        "bcc@example.com": "refused by emailmassivo: Invalid email address"
    }


def test_additional_recipients_by_email_field_in_any_order() -> None:
    items = [
        {"email": "BCC@example.com", "uuid": CC_UUID},
        {"email": "cc@example.com", "error": "Invalid email address"},
    ]
    _, handler = recorder(accepted_with(items))
    outcome = make_driver(handler).send(cc_message(), CTX)
    assert outcome.provider_message_ids == {"user@example.com": UUID, "bcc@example.com": CC_UUID}
    assert list(outcome.rejected_recipients) == ["cc@example.com"]


@pytest.mark.parametrize(
    "items",
    [
        pytest.param(
            [{"email": "cc@example.com", "uuid": CC_UUID}, {"email": "x@other.com", "uuid": "u2"}],
            id="an-address-we-did-not-send",
        ),
        pytest.param(
            [
                {"email": "cc@example.com", "uuid": CC_UUID},
                {"email": "cc@example.com", "error": "e"},
            ],
            id="a-repeat-of-a-matched-address",
        ),
    ],
)
def test_an_item_naming_another_address_is_never_paired_by_position(
    items: list[dict[str, str]],
) -> None:
    _, handler = recorder(accepted_with(items))
    outcome = make_driver(handler).send(cc_message(), CTX)
    assert outcome.provider_message_ids == {"user@example.com": UUID, "cc@example.com": CC_UUID}
    assert outcome.rejected_recipients == {
        "bcc@example.com": "not confirmed: no readable additionalRecipients item"
    }


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(None, id="missing"),
        pytest.param("yes", id="string"),
        pytest.param({"uuid": CC_UUID}, id="object"),
        pytest.param([{"uuid": CC_UUID}], id="fewer-items"),
        pytest.param([{"uuid": CC_UUID}] * 3, id="more-items"),
        pytest.param([7, None], id="junk-items"),
        pytest.param([{"uuid": 5}, {"uuid": ""}], id="bad-uuids"),
        pytest.param([{"uuid": "x" * 100_000}, {"error": {"deep": ["x"] * 10_000}}], id="huge"),
    ],
)
def test_hostile_additional_recipients_never_crash_and_are_reported(extra: Any) -> None:
    _, handler = recorder(accepted_with(extra))
    outcome = make_driver(handler).send(cc_message(), CTX)
    assert outcome.provider_message_ids["user@example.com"] == UUID
    confirmed = set(outcome.provider_message_ids) - {"user@example.com"}
    # Every cc/bcc is either confirmed with an id or reported, never dropped.
    assert confirmed | set(outcome.rejected_recipients) == {"cc@example.com", "bcc@example.com"}
    assert all(len(v) <= 250 for v in outcome.rejected_recipients.values())
    assert all(len(v) <= 200 for v in outcome.provider_message_ids.values())


def test_no_cc_ignores_additional_recipients() -> None:
    _, handler = recorder(accepted_with([{"error": "x"}]))
    outcome = make_driver(handler).send(message(), CTX)
    assert outcome.rejected_recipients == {}
