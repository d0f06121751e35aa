"""The admin API and the JSON-lines log: what tests and operators read back."""

from __future__ import annotations

import json

import pytest

from delivery_sandbox import DEFAULT_KEYS

SMS = "/smspartner/v1"
SMS_KEY = DEFAULT_KEYS["smspartner"]


def sms_send(client, numbers="0600000001", tag=None):
    payload = {"apiKey": SMS_KEY, "phoneNumbers": numbers, "message": "Hi"}
    if tag:
        payload["tag"] = tag
    return client.post(f"{SMS}/send", json=payload)


def test_health(client, sandbox):
    health = client.get("/_admin/health").json()
    assert health["status"] == "ok"
    assert health["url"] == sandbox.url
    assert health["providers"]["smspartner"] == "/smspartner/v1"


def test_requests_and_messages_are_recorded_with_filters(client):
    sms_send(client)
    client.get(f"{SMS}/me", params={"apiKey": SMS_KEY})
    client.get("/voicepartner/v1/me/wrong")

    requests = client.get("/_admin/requests").json()["requests"]
    assert [(r["provider"], r["route"], r["outcome"], r["status"]) for r in requests] == [
        ("smspartner", "/send", "accepted", 200),
        ("smspartner", "/me", "ok", 200),
        ("voicepartner", "/me/{apiKey}", "refused", 401),
    ]
    first = requests[0]
    assert first["client_ip"] == "127.0.0.1"
    assert isinstance(first["time"], float) and first["time"] % 1 != 0
    assert first["path"] == "/smspartner/v1/send"

    only_voice = client.get("/_admin/requests", params={"provider": "voicepartner"}).json()
    assert len(only_voice["requests"]) == 1
    since = client.get("/_admin/requests", params={"since": first["seq"]}).json()["requests"]
    assert [r["route"] for r in since] == ["/me", "/me/{apiKey}"]
    [message] = client.get("/_admin/messages").json()["messages"]
    assert message["request_seq"] == first["seq"]
    assert client.get("/_admin/requests", params={"provider": "nobody"}).status_code == 400


def test_stats_count_per_provider(client, set_balance):
    for _ in range(3):
        sms_send(client)
    set_balance("smspartner", 0)
    sms_send(client)

    stats = client.get("/_admin/stats").json()
    sms = stats["providers"]["smspartner"]
    assert sms["requests"] == 4
    assert (sms["accepted"], sms["refused"], sms["throttled"], sms["duplicates"]) == (3, 1, 0, 0)
    assert sms["max_requests_1s"] == 4
    assert stats["providers"]["postal"]["requests"] == 0
    assert stats["balances"]["smspartner"] == 0


def test_reset_forgets_everything_and_restores_balances(client, set_balance, set_faults):
    sms_send(client, tag="x")
    client.post(f"{SMS}/stop-sms/add", json={"apiKey": SMS_KEY, "phoneNumber": "0600000009"})
    set_balance("smspartner", 0)
    set_faults({"provider": "postal", "action": "reset"})

    assert client.post("/_admin/reset").status_code == 200

    assert client.get("/_admin/requests").json()["requests"] == []
    assert client.get("/_admin/messages").json()["messages"] == []
    assert client.get("/_admin/faults").json()["rules"] == []
    assert client.get("/_admin/balance").json()["balances"]["smspartner"] == 1_000_000
    assert sms_send(client, numbers="0600000009").json()["success"] is True  # STOP list cleared
    tagged = client.get(f"{SMS}/bulk-status-by-tag", params={"apiKey": SMS_KEY, "tag": "x"}).json()
    assert tagged["StatutResponse_List"] == []


@pytest.mark.parametrize(
    "payload",
    [
        {"provider": "postal", "credits": 5},  # Postal has no balance
        {"provider": "smspartner", "credits": -1},
        {"provider": "smspartner"},
        [],
    ],
)
def test_balance_endpoint_refuses_bad_input(client, payload):
    assert client.post("/_admin/balance", json=payload).status_code == 400


def test_unknown_paths_are_404(client):
    assert client.get("/_admin/nothing").status_code == 404
    assert client.post("/nobody/send").status_code == 404


def test_log_file_has_json_lines_without_keys(client, sandbox, log_path):
    sms_send(client, tag="logged")
    client.get(f"{SMS}/me", params={"apiKey": SMS_KEY})
    client.get(f"/voicepartner/v1/me/{DEFAULT_KEYS['voicepartner']}")
    client.post("/postal/api/v1/send/message", headers={"X-Server-API-Key": DEFAULT_KEYS["postal"]})
    client.post(
        "/emailmassivo/api/v1/external-mails/send",
        headers={"X-Api-Key": DEFAULT_KEYS["emailmassivo"]},
        json={"mail": {}},
    )
    client.post("/_admin/reset")

    text = log_path.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["type"] for line in lines] == ["request", "message"] + ["request"] * 4 + ["reset"]
    message = lines[1]
    assert message["provider"] == "smspartner"
    assert message["tag"] == "logged"
    assert message["recipients"] == ["+33600000001"]
    assert message["fields"] == {"phoneNumbers": "0600000001", "message": "Hi", "tag": "logged"}
    assert len(message["body_sha256"]) == 64
    for key in DEFAULT_KEYS.values():
        assert key not in text
