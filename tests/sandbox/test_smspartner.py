"""SMS Partner: send, billing by segments, code 9 lists (HTTP 400), STOP list, status by tag."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import pytest

from delivery_sandbox.providers.partner import PROVIDER_TZ
from delivery_sandbox.providers.smspartner import segments

BASE = "/smspartner/v1"
KEY = "sandbox-smspartner-key"


def body(**overrides):
    return {
        "apiKey": KEY,
        "phoneNumbers": "0600000001,+33600000002",
        "message": "Hello",
        **overrides,
    }


def send(client, payload=None):
    return client.post(f"{BASE}/send", json=body() if payload is None else payload)


def get(client, command, **params):
    return client.get(f"{BASE}/{command}", params={"apiKey": KEY, **params}).json()


def test_accepted_send_shape_and_recording(client, messages):
    response = send(client, body(tag="job1", sender="MyShop"))

    assert response.status_code == 200
    data = response.json()
    assert data == {
        "success": True,
        "code": 200,
        "message_id": data["message_id"],
        "nb_sms": 2,
        "cost": 0.076,
        "currency": "EUR",
    }
    assert isinstance(data["message_id"], int)
    [recorded] = messages("smspartner")
    assert recorded["message_id"] == str(data["message_id"])
    assert recorded["recipients"] == ["+33600000001", "+33600000002"]
    assert recorded["tag"] == "job1"
    assert "apiKey" not in recorded["fields"]


@pytest.mark.parametrize(
    ("text", "unicode", "expected"),
    [
        ("a" * 160, False, 1),
        ("a" * 161, False, 2),
        ("a" * 306, False, 2),
        ("a" * 307, False, 3),
        ("a" * 158 + ":br:", False, 1),  # a line break counts two characters
        ("a" * 159 + ":br:", False, 2),
        ("é" * 70, True, 1),
        ("é" * 71, True, 2),
        ("é" * 135, True, 3),
    ],
)
def test_segments(text, unicode, expected):
    assert segments(text, unicode=unicode) == expected


def test_billing_is_segments_times_numbers(client):
    data = send(client, body(message="a" * 200)).json()
    assert (data["nb_sms"], data["cost"]) == (4, 0.152)
    assert get(client, "me")["credits"]["creditSms"] == 1_000_000 - 4


def test_validation_is_code_9_list_served_with_http_400(client, messages):
    payload = body(
        phoneNumbers="0600000001,922264", message="", sender="ABCDEFGHIJKL", tag="Bad Tag"
    )
    response = send(client, payload)

    assert response.status_code == 400
    data = response.json()
    assert (data["success"], data["code"]) == (False, 9)
    assert {item["elementId"] for item in data["error"]} == {
        "children[phoneNumbers].data",
        "children[message].data",
        "children[sender].data",
        "children[tag].data",
    }
    assert {"elementId": "children[message].data", "message": "Le message est requis"} in data[
        "error"
    ]
    assert messages("smspartner") == []


@pytest.mark.parametrize(
    "payload",
    [
        body(phoneNumbers=",".join(f"+336{i:08d}" for i in range(501))),
        body(phoneNumbers=["0600000001"]),  # a list, not the comma-separated string
        body(sender="ab"),
        body(sender="my-shop"),
        body(scheduledDeliveryDate="01/01/2020", time=9, minute=0),
        body(scheduledDeliveryDate="01/01/2999", time=9, minute=7),
    ],
)
def test_more_validation_errors(client, payload):
    response = send(client, payload)
    assert (response.status_code, response.json()["code"]) == (400, 9)


def test_bad_key_is_code_10_on_post_and_get(client):
    assert send(client, body(apiKey="nope")).json()["code"] == 10
    response = client.get(f"{BASE}/me", params={"apiKey": "nope"})
    assert (response.status_code, response.json()["code"]) == (200, 10)


def test_stop_listed_numbers_are_code_14(client, messages):
    assert send(client, body(phoneNumbers="+33611110014")).json()["code"] == 14  # default rule

    added = client.post(f"{BASE}/stop-sms/add", json={"apiKey": KEY, "phoneNumber": "0600000001"})
    assert added.json()["success"] is True
    listed = get(client, "stop-sms/list")
    assert [d["phoneNumber"] for d in listed["data"]] == ["+33600000001"]
    assert send(client).json()["code"] == 14
    again = client.post(f"{BASE}/stop-sms/add", json={"apiKey": KEY, "phoneNumber": "+33600000001"})
    assert again.json()["code"] == 15
    assert messages("smspartner") == []


def test_no_credit_is_code_11(client, set_balance, messages):
    set_balance("smspartner", 1)
    response = send(client)  # two numbers, one credit
    assert (response.status_code, response.json()["code"]) == (200, 11)
    assert messages("smspartner") == []
    assert send(client, body(phoneNumbers="0600000001")).json()["success"] is True


def test_magic_number_is_code_500_and_not_charged(client, messages):
    response = send(client, body(phoneNumbers="+33600000500"))
    assert response.json()["code"] == 500
    assert messages("smspartner") == []
    assert get(client, "me")["credits"]["creditSms"] == 1_000_000


def test_too_many_segments_and_low_cost_limits(client):
    assert send(client, body(message="a" * 1600)).json()["code"] == 52
    assert send(client, body(message="a" * 161, gamme=2)).json()["code"] == 42


def test_bulk_status_by_tag_finds_accepted_sends(client):
    sent = send(client, body(tag="job7")).json()
    found = get(client, "bulk-status-by-tag", tag="job7")

    assert found["success"] is True
    assert found["message_id"] == str(sent["message_id"])
    assert [i["phoneNumber"] for i in found["StatutResponse_List"]] == [
        "+33600000001",
        "+33600000002",
    ]
    # docs/providers/smspartner.md §1.2.9: items carry no messageId (was a sandbox convenience
    # field); the id is top-level.
    assert all("messageId" not in i for i in found["StatutResponse_List"])
    assert found["total"] == 2

    empty = get(client, "bulk-status-by-tag", tag="never-sent")
    assert (empty["success"], empty["StatutResponse_List"], empty["total"]) == (True, [], 0)


def test_status_goes_from_waiting_to_delivered(make_sandbox):
    sandbox = make_sandbox(config={"sms_delivery_delay_s": 0.0})
    with httpx.Client(base_url=sandbox.url) as client:
        message_id = send(client).json()["message_id"]
        status = get(client, "message-status", messageId=message_id, phoneNumber="+33600000001")
        multi = client.post(
            f"{BASE}/multi-status",
            json={
                "apiKey": KEY,
                "SMSStatut_List": [{"phoneNumber": "+33600000002", "messageId": message_id}],
            },
        ).json()
        bulk = get(client, "bulk-status", messageId=message_id)
    assert (status["statut"], status["messageId"]) == ("Delivered", str(message_id))
    assert multi["StatutResponse_List"][0]["status"] == "Delivered"
    assert bulk["message_id"] == str(message_id)


def test_scheduled_send_can_be_cancelled_and_is_refunded(client):
    when = datetime.now(PROVIDER_TZ) + timedelta(days=2)
    schedule = {"scheduledDeliveryDate": when.strftime("%d/%m/%Y"), "time": 9, "minute": 30}
    sent = send(client, body(**schedule)).json()
    assert sent["scheduledDeliveryDate"].endswith("09:30:00")
    assert (
        get(client, "message-status", messageId=sent["message_id"], phoneNumber="0600000001")[
            "statut"
        ]
        == "Waiting"
    )

    cancelled = get(client, "message-cancel", messageId=sent["message_id"])
    assert cancelled["success"] is True
    assert get(client, "message-cancel", messageId=sent["message_id"])["code"] == 5
    assert get(client, "me")["credits"]["creditSms"] == 1_000_000
