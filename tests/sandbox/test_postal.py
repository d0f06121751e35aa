"""Postal: HTTP 200 always, the outcome in ``status``; first validation error only."""

from __future__ import annotations

import base64
import json
import re
import uuid

import pytest

from delivery_sandbox.providers.postal import ERROR_MESSAGES

SEND = "/postal/api/v1/send/message"
RAW = "/postal/api/v1/send/raw"
LOOKUP = "/postal/api/v1/messages/message"
GOOD = {"to": ["ann@example.com"], "from": "app@example.test", "plain_body": "hi"}


def post(client, path, params, key="sandbox-postal-key"):
    headers = {} if key is None else {"X-Server-API-Key": key}
    response = client.post(path, json=params, headers=headers)
    # Postal answers 200 for errors too (docs/providers/postal.md §4.1)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "time", "flags", "data"}
    assert isinstance(body["time"], float) and body["flags"] == {}
    return body


def test_send_creates_one_message_per_recipient(client, messages):
    params = {
        **GOOD,
        "to": "Ann <ann@example.com>, bob@example.com",
        "cc": ["ann@example.com"],  # a duplicate address collapses into one key
        "bcc": ["carl@example.com"],
        "subject": "Hello",
        "tag": "welcome",
    }
    body = post(client, SEND, params)

    assert body["status"] == "success"
    data = body["data"]
    local, domain = data["message_id"].split("@")
    uuid.UUID(local)
    assert domain == "rp.sandbox.test"
    assert set(data["messages"]) == {"ann@example.com", "bob@example.com", "carl@example.com"}
    for entry in data["messages"].values():
        assert isinstance(entry["id"], int)
        assert re.fullmatch(r"[A-Za-z0-9]{16}", entry["token"])
    [recorded] = messages("postal")
    assert recorded["message_id"] == data["message_id"]
    assert recorded["tag"] == "welcome"
    assert recorded["recipient_ids"] == {a: e["id"] for a, e in data["messages"].items()}


def test_missing_key_is_access_denied(client):
    body = post(client, SEND, GOOD, key=None)
    assert body["status"] == "error"
    assert body["data"] == {"code": "AccessDenied", "message": "Must be authenticated as a server."}


def test_wrong_key_is_invalid_server_api_key(client, messages):
    body = post(client, SEND, GOOD, key="nope")
    assert body["status"] == "error"
    assert body["data"]["code"] == "InvalidServerAPIKey"
    assert body["data"]["token"] == "nope"
    assert messages("postal") == []


FIFTY_ONE = [f"r{i}@example.com" for i in range(51)]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({}, "NoRecipients"),  # also no content and no from: only the first error is answered
        ({"to": FIFTY_ONE}, "TooManyToAddresses"),
        ({"to": ["a@example.com"], "cc": FIFTY_ONE}, "TooManyCCAddresses"),
        ({"bcc": FIFTY_ONE}, "TooManyBCCAddresses"),
        ({"to": ["a@example.com"], "from": "x@y.test"}, "NoContent"),
        ({"to": ["a@example.com"], "html_body": "<p>x</p>"}, "FromAddressMissing"),
        ({**GOOD, "from": "App <app@unverified.news.example>"}, "UnauthenticatedFromAddress"),
        ({**GOOD, "attachments": [{"data": "aGk="}]}, "AttachmentMissingName"),
        ({**GOOD, "attachments": [{"name": "a.txt"}]}, "AttachmentMissingData"),
    ],
)
def test_validation_answers_the_first_error_in_postal_order(client, messages, params, code):
    body = post(client, SEND, params)
    assert body["status"] == "error"
    assert body["data"] == {"code": code, "message": ERROR_MESSAGES[code]}
    assert messages("postal") == []


def test_form_encoded_params_field_is_read(client):
    response = client.post(
        SEND,
        data={"params": json.dumps(GOOD)},
        headers={"X-Server-API-Key": "sandbox-postal-key"},
    )
    assert response.json()["status"] == "success"


def test_send_raw_uses_the_message_id_header(client):
    raw = b"From: app@example.test\r\nMessage-ID: <abc@example.test>\r\n\r\nbody"
    params = {
        "rcpt_to": ["x@example.com", "x@example.com"],
        "mail_from": "app@example.test",
        "data": base64.b64encode(raw).decode(),
    }
    body = post(client, RAW, params)
    assert body["status"] == "success"
    assert body["data"]["message_id"] == "abc@example.test"
    assert list(body["data"]["messages"]) == ["x@example.com"]


def test_send_raw_parameter_and_from_errors(client):
    body = post(client, RAW, {"mail_from": "a@b.test", "data": "eA=="})
    assert body["status"] == "parameter-error"
    assert body["data"] == {"message": "`rcpt_to` parameter is required but is missing"}

    raw = base64.b64encode(b"From: x@unverified.spam.example\r\n\r\nhi").decode()
    body = post(client, RAW, {"rcpt_to": ["a@b.test"], "mail_from": "a@b.test", "data": raw})
    assert body["status"] == "error"
    # no message here (docs/providers/postal.md §4.3)
    assert body["data"] == {"code": "UnauthenticatedFromAddress"}


def test_message_lookup_with_expansions(client):
    sent = post(client, SEND, {**GOOD, "subject": "Hi"})["data"]
    message = sent["messages"]["ann@example.com"]

    body = post(client, LOOKUP, {"id": message["id"], "_expansions": ["status", "details"]})
    assert body["status"] == "success"
    data = body["data"]
    assert (data["id"], data["token"]) == (message["id"], message["token"])
    assert data["status"]["status"] == "Sent"
    assert data["details"]["rcpt_to"] == "ann@example.com"
    assert data["details"]["subject"] == "Hi"
    assert data["details"]["message_id"] == sent["message_id"]
    assert "plain_body" not in data

    missing = post(client, LOOKUP, {"id": 999_999})
    assert missing["data"]["code"] == "MessageNotFound"
    assert post(client, LOOKUP, {})["status"] == "parameter-error"
