"""EmailMassivo: 200 {uuid} (seed 003), {message, statusCode} errors, idempotency, 10 req/s/IP."""

from __future__ import annotations

import base64
import time
import uuid

import httpx
import pytest

SEND = "/emailmassivo/api/v1/external-mails/send"
BY_TEMPLATE = "/emailmassivo/api/v1/external-mails/send-by-template"
KEY = {"X-Api-Key": "sandbox-emailmassivo-key"}


def mail(**overrides):
    base = {
        "to": {"email": "ann@example.com", "name": "Ann"},
        "from": {"email": "app@mail.example.test", "name": "App"},
        "subject": "Hello",
        "html": "<p>Hi</p>",
    }
    return {**base, **overrides}


def send(client, body=None, headers=KEY, path=SEND):
    return client.post(path, json={"mail": mail()} if body is None else body, headers=headers)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_accepted_send_is_200_with_a_uuid(client, messages):
    response = send(client, {"idempotencyKey": "k-1", "mail": mail(cc="c@example.com")})

    assert response.status_code == 200  # seed 003: "200 OK — Email accepted for processing"
    assert set(response.json()) == {"uuid", "additionalRecipients"}
    uuid.UUID(response.json()["uuid"])
    [recorded] = messages("emailmassivo")
    assert recorded["message_id"] == response.json()["uuid"]
    assert recorded["recipients"] == ["ann@example.com", "c@example.com"]
    assert recorded["idempotency_key"] == "k-1"
    assert recorded["fields"]["mail"]["subject"] == "Hello"
    assert len(recorded["body_sha256"]) == 64


@pytest.mark.parametrize("headers", [{}, {"X-Api-Key": "wrong"}])
def test_missing_or_wrong_key_is_401(client, messages, headers):
    response = send(client, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"message": "Неверный ключ API", "statusCode": 401}
    assert messages("emailmassivo") == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"mail": mail(to=[{"email": "a@example.com"}])}, "mail.to must be a single"),
        ({"mail": {k: v for k, v in mail().items() if k != "from"}}, "mail.from should not be"),
        ({"mail": mail(html=None)}, "mail.html or mail.text must be provided"),
        ({"mail": mail(previewTitle="x" * 256)}, "mail.previewTitle must be shorter than"),
        ({"mail": mail(to={"email": "not-an-address"})}, "mail.to.email must be an email"),
        ({}, "mail should not be null or undefined"),
    ],
)
def test_invalid_fields_are_400(client, messages, body, message):
    response = send(client, body)
    assert response.status_code == 400
    assert response.json()["statusCode"] == 400
    assert message in response.json()["message"]
    assert messages("emailmassivo") == []


def test_several_problems_are_joined_with_commas(client):
    body = {"mail": mail(to={"email": "a@example.com", "name": "n" * 256}, subject="")}
    response = send(client, body)
    assert response.json()["message"] == (
        "mail.to.name must be shorter than or equal to 255 characters,"
        "mail.subject should not be empty"
    )


@pytest.mark.parametrize(
    ("attachments", "message"),
    [
        ([{"a.txt": b64(b"x")}] * 21, "Attachments count more than allowed"),
        ([{"invoice.EXE": b64(b"MZ")}], "Attachments type forbidden"),
        ([{"a.bin": b64(b"x" * (3 * 1024 * 1024))}] * 2, "Attachments size more than allowed"),
        ([{"a.txt": "%%% not base64"}], "Attachments parse failed"),
        ([{"name": "a.txt", "content": b64(b"x")}], "Attachments parse failed"),
    ],
)
def test_attachment_limits(client, attachments, message):
    response = send(client, {"mail": mail(attachments=attachments)})
    assert response.status_code == 400
    assert response.json() == {"message": message, "statusCode": 400}


@pytest.mark.parametrize("prefix", ["unsubscribed", "complained", "missing", "unavailable"])
def test_suppressed_recipient_is_422(client, messages, prefix):
    response = send(client, {"mail": mail(to={"email": f"{prefix}.joe@example.com"})})
    assert response.status_code == 422
    assert response.json()["statusCode"] == 422
    assert messages("emailmassivo") == []


def test_unverified_from_domain_is_403(client):
    response = send(client, {"mail": mail(**{"from": {"email": "a@unverified.x.example"}})})
    assert response.status_code == 403


def test_same_idempotency_key_returns_the_first_uuid_and_sends_once(client, messages):
    first = send(client, {"idempotencyKey": "job-42", "mail": mail()})
    again = send(client, {"idempotencyKey": "job-42", "mail": mail(subject="edited")})
    other = send(client, {"idempotencyKey": "job-43", "mail": mail()})

    assert first.status_code == again.status_code == other.status_code == 200
    assert again.json()["uuid"] == first.json()["uuid"]
    assert other.json()["uuid"] != first.json()["uuid"]
    assert [m["idempotency_key"] for m in messages("emailmassivo")] == ["job-42", "job-43"]
    stats = client.get("/_admin/stats").json()["providers"]["emailmassivo"]
    assert (stats["accepted"], stats["duplicates"]) == (2, 1)
    assert client.get("/_admin/balance").json()["balances"]["emailmassivo"] == 1_000_000 - 2


def test_equal_content_without_a_key_is_deduplicated(client, messages):
    first = send(client)
    again = send(client)
    different = send(client, {"mail": mail(subject="Other")})

    assert again.json()["uuid"] == first.json()["uuid"]
    assert different.json()["uuid"] != first.json()["uuid"]
    assert len(messages("emailmassivo")) == 2


def test_idempotency_window_expires(make_sandbox):
    sandbox = make_sandbox(config={"idempotency_window_s": 0.2})
    with httpx.Client(base_url=sandbox.url) as client:
        first = send(client, {"idempotencyKey": "k", "mail": mail()})
        time.sleep(0.25)
        later = send(client, {"idempotencyKey": "k", "mail": mail()})
    assert later.json()["uuid"] != first.json()["uuid"]


def test_eleventh_request_in_one_second_is_429(client):
    statuses = [send(client, {"mail": mail(subject=f"s{i}")}) for i in range(11)]

    assert [r.status_code for r in statuses[:10]] == [200] * 10
    throttled = statuses[10]
    assert throttled.status_code == 429
    assert throttled.json() == {"message": "Too Many Requests", "statusCode": 429}
    # none documented (docs/providers/emailmassivo.md §5.4)
    assert "Retry-After" not in throttled.headers
    stats = client.get("/_admin/stats").json()["providers"]["emailmassivo"]
    assert (stats["accepted"], stats["throttled"]) == (10, 1)


def test_refused_requests_count_in_the_window(make_sandbox):
    # Every attempt counts (a throttler that increments before it checks): a client that keeps
    # knocking while throttled stays throttled. (Until now a 429 was not counted.)
    sandbox = make_sandbox(limits={"emailmassivo_per_s": 2})
    with httpx.Client(base_url=sandbox.url) as client:
        t0 = time.monotonic()
        assert send(client, {"mail": mail(subject="a")}).status_code == 200
        time.sleep(0.5)
        assert send(client, {"mail": mail(subject="b")}).status_code == 200
        assert send(client, {"mail": mail(subject="c")}).status_code == 429
        time.sleep(max(0.0, 1.2 - (time.monotonic() - t0)))
        # "a" left the window; "b" and the refused "c" are still in it.
        assert send(client, {"mail": mail(subject="d")}).status_code == 429
        time.sleep(max(0.0, 1.75 - (time.monotonic() - t0)))
        # "b" and "c" left; "d" (refused) is in it: one more fits.
        assert send(client, {"mail": mail(subject="e")}).status_code == 200


def test_hammering_client_stays_throttled(make_sandbox):
    sandbox = make_sandbox(limits={"emailmassivo_per_s": 3})
    with httpx.Client(base_url=sandbox.url) as client:
        statuses = []
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            statuses.append(send(client, {"mail": mail(subject=f"h{len(statuses)}")}).status_code)
            time.sleep(0.02)
    # Only the first 3 get through: every later attempt keeps the window full.
    assert statuses[:3] == [200, 200, 200]
    assert len(statuses) > 20
    assert set(statuses[3:]) == {429}


def test_each_client_ip_has_its_own_budget(make_sandbox):
    sandbox = make_sandbox(limits={"emailmassivo_per_s": 1})
    other_ip = httpx.HTTPTransport(local_address="127.0.0.2")
    with (
        httpx.Client(base_url=sandbox.url) as a,
        httpx.Client(base_url=sandbox.url, transport=other_ip) as b,
    ):
        assert send(a, {"mail": mail(subject="1")}).status_code == 200
        assert send(a, {"mail": mail(subject="2")}).status_code == 429
        assert send(b, {"mail": mail(subject="3")}).status_code == 200
        ips = {r["client_ip"] for r in a.get("/_admin/requests").json()["requests"]}
    assert ips == {"127.0.0.1", "127.0.0.2"}


def test_empty_balance_is_402(client, set_balance, messages):
    set_balance("emailmassivo", 1)
    assert send(client, {"mail": mail(subject="one")}).status_code == 200
    response = send(client, {"mail": mail(subject="two")})

    assert response.status_code == 402
    assert response.json() == {
        "message": "Is not enough resource on user Balance",
        "statusCode": 402,
    }
    assert len(messages("emailmassivo")) == 1


def test_send_by_template(client, messages):
    template = {k: v for k, v in mail().items() if k != "html"}
    ok = send(
        client,
        {"mail": {**template, "idTemplateMailUser": 7, "params": {"a": "b"}}},
        path=BY_TEMPLATE,
    )
    bad = send(client, {"mail": template}, path=BY_TEMPLATE)

    assert ok.status_code == 200
    assert bad.status_code == 400
    assert "idTemplateMailUser" in bad.json()["message"]
    assert messages("emailmassivo")[0]["route"] == "/api/v1/external-mails/send-by-template"
