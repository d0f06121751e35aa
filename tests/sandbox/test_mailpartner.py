"""Mail Partner: apiKey in the body, {success, code} envelope, code 9 lists, 2000/min/IP."""

from __future__ import annotations

import base64

import httpx
import pytest

BASE = "/mailpartner/v1"
KEY = "sandbox-mailpartner-key"


def body(**overrides):
    base = {
        "apiKey": KEY,
        "subject": "Hello",
        "htmlContent": "<p>Hi #FIRSTNAME#</p>",
        "params": {
            "to": [{"email": "ann@example.com", "name": "Ann"}, {"email": "bob@example.com"}]
        },
    }
    return {**base, **overrides}


def send(client, payload=None):
    return client.post(f"{BASE}/send", json=body() if payload is None else payload)


def test_accepted_send_shape(client, messages):
    response = send(client, body(tag="welcome"))

    assert response.status_code == 200
    data = response.json()
    assert data == {
        "success": True,
        "code": 200,
        "messageId": data["messageId"],
        "nbMail": 2,
        "cost": 2.0,
        "currency": "EUR",
    }
    [recorded] = messages("mailpartner")
    assert recorded["message_id"] == data["messageId"]
    assert recorded["recipients"] == ["ann@example.com", "bob@example.com"]
    assert recorded["tag"] == "welcome"
    assert "apiKey" not in recorded["fields"]


def test_me_reports_credit_mail(client):
    send(client)
    me = client.get(f"{BASE}/me", params={"apiKey": KEY}).json()
    assert me["success"] is True and me["code"] == 200
    assert me["credits"]["creditMail"] == 1_000_000 - 2
    assert me["credits"]["currency"] == "EUR"
    assert isinstance(me["credits"]["balance"], str)


@pytest.mark.parametrize(("key", "code"), [("wrong", 10), ("", 1)])
def test_bad_or_missing_key(client, messages, key, code):
    response = send(client, body(apiKey=key))
    assert response.status_code == 200
    assert response.json()["success"] is False
    assert response.json()["code"] == code
    assert client.get(f"{BASE}/me", params={"apiKey": key}).json()["code"] == code
    assert messages("mailpartner") == []


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        # docs/providers/mailpartner.md §2.3: each field problem has its own code (this test used to
        # expect the SMS Partner code 9 list for all of them; Mail Partner documents specific
        # codes).
        (body(subject=""), 2),
        ({k: v for k, v in body().items() if k != "htmlContent"}, 2),
        (body(params={"to": []}), 22),
        (body(params={"to": [{"email": f"r{i}@example.com"} for i in range(501)]}), 50),
        (body(params={"to": [{"email": "nope"}]}), 19),
    ],
)
def test_field_problems_answer_their_documented_code(client, payload, code):
    response = send(client, payload)
    data = response.json()
    assert (data["success"], data["code"]) == (False, code)
    assert isinstance(data["message"], str) and data["message"]


@pytest.mark.parametrize(
    ("payload", "element"),
    [
        (body(tag="Has Spaces"), "children[tag].data"),
        (
            body(
                attachments=[
                    {"base64Content": "eA==", "contentType": "text/plain", "filename": "f"}
                ]
                * 4
            ),
            "children[attachments].data",
        ),
    ],
)
def test_validation_is_code_9_with_an_error_list(client, payload, element):
    response = send(client, payload)
    assert response.status_code == 400
    data = response.json()
    assert (data["success"], data["code"]) == (False, 9)
    assert element in [item["elementId"] for item in data["error"]]
    assert all(isinstance(item["message"], str) for item in data["error"])


def test_attachment_over_5_mb_is_refused(client):
    big = base64.b64encode(b"x" * (5 * 1024 * 1024 + 1)).decode()
    attachment = {"base64Content": big, "contentType": "application/pdf", "filename": "big"}
    response = send(client, body(attachments=[attachment]))
    assert response.json()["code"] == 9


def test_unsubscribed_address_is_code_14(client, messages):
    refused = send(client, body(params={"to": [{"email": "unsubscribed.joe@example.com"}]}))
    assert refused.json()["code"] == 14

    added = client.post(f"{BASE}/unsubscribe/add", json={"apiKey": KEY, "email": "ann@example.com"})
    assert added.json()["success"] is True
    listed = client.get(f"{BASE}/unsubscribe/list", params={"apiKey": KEY}).json()
    assert [d["email"] for d in listed["data"]] == ["ann@example.com"]
    assert send(client).json()["code"] == 14
    assert messages("mailpartner") == []


def test_no_credit_is_code_11(client, set_balance, messages):
    set_balance("mailpartner", 1)  # two recipients cost two credits
    response = send(client)
    assert response.status_code == 200
    assert (response.json()["success"], response.json()["code"]) == (False, 11)
    assert messages("mailpartner") == []


def test_over_the_per_minute_limit_is_429(make_sandbox):
    sandbox = make_sandbox(limits={"mailpartner_per_min": 3})
    with httpx.Client(base_url=sandbox.url) as client:
        statuses = [send(client) for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert statuses[3].json()["code"] == 429
    assert int(statuses[3].headers["Retry-After"]) >= 59


def test_bulk_status_lists_each_recipient(client):
    message_id = send(client).json()["messageId"]
    status = client.get(
        f"{BASE}/bulk-status", params={"apiKey": KEY, "messageId": message_id}
    ).json()
    assert status["messageId"] == message_id
    assert [i["email"] for i in status["StatutResponseList"]] == [
        "ann@example.com",
        "bob@example.com",
    ]
    unknown = client.get(f"{BASE}/bulk-status", params={"apiKey": KEY, "messageId": "zzz"}).json()
    assert unknown["code"] == 4
