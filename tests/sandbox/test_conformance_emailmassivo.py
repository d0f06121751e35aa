"""EmailMassivo conformance: the sandbox answers as the documentation says, rule by rule.

Each test names its source: a line of the EmailMassivo page (seed 003, "Email API
Documentation") or a section of docs/providers/emailmassivo.md §5. Where the two disagree the seed
wins (200 for a new send; RuSender's 201 is an option). The last tests run the real driver against
the sandbox in both success modes.
"""

from __future__ import annotations

import base64
import time
import uuid

import httpx
import pytest

from delivery_sandbox import DEFAULT_KEYS
from worker.errors import (
    PermanentError,
    RecipientDeferredError,
    RecipientRejectedError,
    ThrottledError,
)
from worker.models import EmailMessage
from worker.providers.base import SendContext
from worker.providers.emailmassivo import EmailMassivoDriver

PREFIX = "/emailmassivo"
SEND = PREFIX + "/api/v1/external-mails/send"
BY_TEMPLATE = PREFIX + "/api/v1/external-mails/send-by-template"
KEY = {"X-Api-Key": DEFAULT_KEYS["emailmassivo"]}


def mail(**overrides):
    base = {
        "to": {"email": "ann@example.com", "name": "Ann"},
        "from": {"email": "app@mail.example.test", "name": "App"},
        "subject": "Hello",
        "html": "<p>Hi</p>",
    }
    return {**base, **overrides}


def send(client, body, path=SEND, headers=KEY):
    return client.post(path, json=body, headers=headers)


def error_shape(response, status):
    """docs/providers/emailmassivo.md §5.4: "The error body is {"message": string, "statusCode":
    int}" (RS-DOC, RS-GO)."""
    data = response.json()
    assert response.status_code == status
    assert set(data) == {"message", "statusCode"}
    assert data["statusCode"] == status
    assert isinstance(data["message"], str) and data["message"]
    return data["message"]


# -- success: 200 (seed 003) or 201 (RS-DOC) ---------------------------------------------------


def test_new_send_is_200_with_a_uuid(client):
    # Seed 003: "200 OK — Email accepted for processing"; "uuid — UUID of the sent email".
    response = send(client, {"idempotencyKey": "c-1", "mail": mail()})
    assert response.status_code == 200
    assert set(response.json()) == {"uuid"}
    uuid.UUID(response.json()["uuid"])


def test_warning_only_without_an_idempotency_key(client):
    # Seed 003: "warning — Returned if idempotencyKey was not provided".
    keyless = send(client, {"mail": mail(subject="no key")})
    keyed = send(client, {"idempotencyKey": "c-2", "mail": mail(subject="key")})
    assert isinstance(keyless.json()["warning"], str) and keyless.json()["warning"]
    assert "warning" not in keyed.json()


def test_201_mode_for_rusender(make_sandbox):
    # docs/providers/emailmassivo.md §5.4: "200 (EM seed) / 201 (RS-DOC)"; the sandbox offers both.
    sandbox = make_sandbox(config={"emailmassivo_success_status": 201})
    with httpx.Client(base_url=sandbox.url) as client:
        first = send(client, {"idempotencyKey": "c-3", "mail": mail()})
        again = send(client, {"idempotencyKey": "c-3", "mail": mail()})
    assert first.status_code == 201
    # Seed 003 / docs/providers/emailmassivo.md §5.5: a repeat is answered 200 with the same uuid,
    # in either mode.
    assert again.status_code == 200
    assert again.json()["uuid"] == first.json()["uuid"]


def test_success_status_can_be_switched_at_runtime_and_reset(client):
    # delivery_sandbox.config: RUNTIME_FIELDS via POST /_admin/config; reset restores them.
    changed = client.post("/_admin/config", json={"emailmassivo_success_status": 201})
    assert changed.json()["config"]["emailmassivo_success_status"] == 201
    assert send(client, {"idempotencyKey": "c-4", "mail": mail()}).status_code == 201
    refused = client.post("/_admin/config", json={"emailmassivo_success_status": 202})
    assert refused.status_code == 400
    assert client.post("/_admin/config", json={"max_body_bytes": 1}).status_code == 400
    client.post("/_admin/reset")
    assert client.get("/_admin/config").json()["config"]["emailmassivo_success_status"] == 200
    assert send(client, {"idempotencyKey": "c-5", "mail": mail()}).status_code == 200


# -- repeats (seed 003 "Sending Using Idempotency Key"; docs/providers/emailmassivo.md §5.5) -------


def test_repeat_with_the_same_key_is_200_with_the_first_uuid_and_sends_nothing(client, messages):
    # docs/providers/emailmassivo.md §5.5 [INFERRED]: "The same key repeated returns the original
    # uuid, with the same one-hour window"; seed 003: the repeat "does not create a new email".
    first = send(client, {"idempotencyKey": "r-1", "mail": mail()})
    again = send(client, {"idempotencyKey": "r-1", "mail": mail()})
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["uuid"] == first.json()["uuid"]
    assert len(messages("emailmassivo")) == 1


def test_a_different_key_is_a_different_email(client, messages):
    # Seed 003: "with idempotency key ... emails are considered different when key values
    # differ and will be sent again".
    a = send(client, {"idempotencyKey": "r-2", "mail": mail()})
    b = send(client, {"idempotencyKey": "r-3", "mail": mail()})
    assert a.json()["uuid"] != b.json()["uuid"]
    assert len(messages("emailmassivo")) == 2


def test_keyless_repeat_of_equal_content_is_200_with_the_first_uuid(client, messages):
    # Seed 003: "If within one hour a repeated request ... with completely matching parameters
    # arrives: From, To, Body, Subject, Attachments ... without idempotency key API responds
    # with code 200 and returns the same email uuid".
    pdf = {"a.pdf": base64.b64encode(b"%PDF").decode()}
    first = send(client, {"mail": mail(attachments=[pdf])})
    again = send(client, {"mail": mail(attachments=[pdf])})
    other = send(client, {"mail": mail(attachments=[{"b.pdf": pdf["a.pdf"]}])})
    assert again.status_code == 200
    assert again.json()["uuid"] == first.json()["uuid"]
    assert other.json()["uuid"] != first.json()["uuid"]
    assert len(messages("emailmassivo")) == 2


def test_repeat_after_the_window_is_a_new_email(make_sandbox):
    # Seed 003: "within one hour" (the window is configurable in the sandbox).
    sandbox = make_sandbox(config={"idempotency_window_s": 0.2})
    with httpx.Client(base_url=sandbox.url) as client:
        first = send(client, {"idempotencyKey": "r-4", "mail": mail()})
        time.sleep(0.25)
        later = send(client, {"idempotencyKey": "r-4", "mail": mail()})
    assert later.json()["uuid"] != first.json()["uuid"]


# -- additionalRecipients (seed 003; shape [NOT FOUND] docs/providers/emailmassivo.md §5.2) --------


def test_cc_and_bcc_get_additional_recipients_in_order(client, messages):
    # Seed 003: "If recipients are specified in cc or bcc, the response will contain an
    # additional field — additionalRecipients"; "Each item contains either uuid for a
    # successfully accepted recipient or error for an invalid email address".
    response = send(client, {"idempotencyKey": "a-1", "mail": mail(cc="cy@example.com", bcc="x")})
    items = response.json()["additionalRecipients"]
    assert len(items) == 2
    assert set(items[0]) == {"uuid"}  # cc first
    assert set(items[1]) == {"error"}  # then bcc: "x" is not an address
    [recorded] = messages("emailmassivo")
    assert recorded["recipients"] == ["ann@example.com", "cy@example.com"]
    assert recorded["units"] == 2
    again = send(client, {"idempotencyKey": "a-1", "mail": mail(cc="cy@example.com", bcc="x")})
    assert again.json()["additionalRecipients"] == items  # the repeat answers the first answer


def test_no_additional_recipients_without_cc_or_bcc(client):
    response = send(client, {"idempotencyKey": "a-2", "mail": mail()})
    assert "additionalRecipients" not in response.json()


# -- errors (seed 003 "Possible Responses"; docs/providers/emailmassivo.md §5.4) -------------------


@pytest.mark.parametrize(
    ("attachments", "text"),
    [
        # Seed 003, 400 "Possible messages".
        ([{"a.txt": "%%%"}], "Attachments parse failed"),
        ([{"a.bin": base64.b64encode(b"x" * (3 << 20)).decode()}] * 2, "Attachments size"),
        ([{"run.exe": base64.b64encode(b"MZ").decode()}], "Attachments type forbidden"),
    ],
)
def test_400_attachment_messages(client, attachments, text):
    assert text in error_shape(send(client, {"mail": mail(attachments=attachments)}), 400)


def test_400_validation_messages_joined_with_commas(client):
    # docs/providers/emailmassivo.md §5.4: "mail.to.name must be shorter than or equal to 255
    # characters,mail.from.email must be an email" (RS-DOC).
    body = {"mail": mail(to={"email": "a@example.com", "name": "n" * 256}, subject="")}
    assert "," in error_shape(send(client, body), 400)


def test_401_invalid_key(client):
    # Seed 003: "401 Unauthorized — Invalid API key"; docs/providers/emailmassivo.md §5.4: "Неверный
    # ключ API" (RS-DOC).
    response = send(client, {"mail": mail()}, headers={"X-Api-Key": "wrong"})
    assert error_shape(response, 401) == "Неверный ключ API"


def test_402_balance(client, set_balance, messages):
    # Seed 003: "402 Payment Required — Not enough resources on the user balance";
    # docs/providers/emailmassivo.md §5.4 text.
    set_balance("emailmassivo", 0)
    message = error_shape(send(client, {"mail": mail()}), 402)
    assert message == "Is not enough resource on user Balance"
    assert messages("emailmassivo") == []


def test_403_unverified_sender_domain(client):
    # docs/providers/emailmassivo.md §5.4: RS-DOC "ExternalMailApiKey not enabled, or user domain is
    # not verify".
    body = {"mail": mail(**{"from": {"email": "a@unverified.example.test"}})}
    error_shape(send(client, body), 403)


def test_404_unknown_template(client, messages):
    # Seed 003, 404: "TemplateMailUser not found by id — Email template was not found for
    # /send-by-template".
    template = {k: v for k, v in mail().items() if k != "html"}
    body = {"mail": {**template, "idTemplateMailUser": 123456, "params": {}}}
    assert error_shape(send(client, body, BY_TEMPLATE), 404) == "TemplateMailUser not found by id"
    known = {"mail": {**template, "idTemplateMailUser": 12, "params": {}}}
    assert send(client, known, BY_TEMPLATE).status_code == 200
    assert len(messages("emailmassivo")) == 1


@pytest.mark.parametrize(
    ("prefix", "text"),
    [
        # Seed 003, 422 "Possible messages".
        ("unsubscribed", "Email receiver unsubscribed from this API key mails"),
        ("complained", "Email receiver complained from this API key mails"),
        ("missing", "Email receiver doesn't exist"),
        ("unavailable", "Email receiver unavailable"),
    ],
)
def test_422_receiver_messages(client, messages, prefix, text):
    body = {"mail": mail(to={"email": f"{prefix}.joe@example.com"})}
    assert error_shape(send(client, body), 422) == text
    assert messages("emailmassivo") == []


def test_429_past_10_requests_per_second_without_retry_after(client):
    # Seed 003 Notes: "no more than 10 requests per second from one IP address";
    # docs/providers/emailmassivo.md §5.4: whether a Retry-After header is sent is [NOT FOUND], so
    # none is sent.
    statuses = [send(client, {"mail": mail(subject=f"t{i}")}) for i in range(11)]
    assert [r.status_code for r in statuses[:10]] == [200] * 10
    assert error_shape(statuses[10], 429) == "Too Many Requests"
    assert "retry-after" not in statuses[10].headers


def test_503_shape(client, set_faults):
    # Seed 003: "503 Service Unavailable — Email processing service is temporarily
    # unavailable"; docs/providers/emailmassivo.md §5.4 error body.
    set_faults({"provider": "emailmassivo", "action": "status", "status": 503, "first_n": 1})
    error_shape(send(client, {"mail": mail()}), 503)


# -- the driver against the sandbox, in both success modes ---------------------------------------


def driver_message(**overrides) -> EmailMessage:
    data = {
        "provider": "emailmassivo",
        "to": [{"email": "ann@example.com"}],
        "from": {"email": "shop@example.org"},
        "subject": "Hello",
        "text": "Hi",
        **overrides,
    }
    return EmailMessage.model_validate(data)


@pytest.mark.parametrize("status", [200, 201])
def test_driver_accepts_both_modes_and_a_repeat(make_sandbox, status):
    sandbox = make_sandbox(config={"emailmassivo_success_status": status})
    with httpx.Client(timeout=5) as http:
        driver = EmailMassivoDriver(
            http,
            api_key=DEFAULT_KEYS["emailmassivo"],
            base_url=sandbox.provider_url("emailmassivo"),
        )
        ctx = SendContext(delivery_id="d-1", idempotency_key="drv-1")
        message = driver_message(cc=[{"email": "cy@example.com"}])
        first = driver.send(message, ctx)
        again = driver.send(message, SendContext(delivery_id="d-1", idempotency_key="drv-1"))
        statuses = [r["status"] for r in sandbox.recorder.requests("emailmassivo")]
    assert statuses == [status, 200]
    assert set(first.provider_message_ids) == {"ann@example.com", "cy@example.com"}
    assert again.provider_message_ids == first.provider_message_ids
    assert first.rejected_recipients == {}
    assert len(sandbox.recorder.messages("emailmassivo")) == 1


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (driver_message(to=[{"email": "unavailable.x@example.com"}]), RecipientDeferredError),
        (driver_message(to=[{"email": "complained.x@example.com"}]), RecipientRejectedError),
        (driver_message(text=None, template={"id": 99999, "params": {}}), PermanentError),
    ],
)
def test_driver_classifies_the_sandbox_refusals(sandbox, message, expected):
    with httpx.Client(timeout=5) as http:
        driver = EmailMassivoDriver(
            http,
            api_key=DEFAULT_KEYS["emailmassivo"],
            base_url=sandbox.provider_url("emailmassivo"),
        )
        with pytest.raises(expected):
            driver.send(message, SendContext(delivery_id="d", idempotency_key="drv-2"))


def test_driver_waits_one_second_on_a_429_without_retry_after(make_sandbox):
    sandbox = make_sandbox(limits={"emailmassivo_per_s": 1})
    with httpx.Client(timeout=5) as http:
        driver = EmailMassivoDriver(
            http,
            api_key=DEFAULT_KEYS["emailmassivo"],
            base_url=sandbox.provider_url("emailmassivo"),
        )
        driver.send(driver_message(), SendContext(delivery_id="a", idempotency_key="t-1"))
        with pytest.raises(ThrottledError) as info:
            driver.send(driver_message(), SendContext(delivery_id="b", idempotency_key="t-2"))
    assert info.value.retry_after_s == 1.0


def test_command_line_success_status_flag():
    # python -m delivery_sandbox --emailmassivo-success-status 201 (RuSender); 200 by default.
    from delivery_sandbox.__main__ import build_parser

    assert build_parser().parse_args([]).emailmassivo_success_status == 200
    args = build_parser().parse_args(["--emailmassivo-success-status", "201"])
    assert args.emailmassivo_success_status == 201
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--emailmassivo-success-status", "202"])
