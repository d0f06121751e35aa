"""Voice Partner: tts and voicemail campaigns, string error codes, 5 campaigns/min/IP."""

from __future__ import annotations

import httpx
import pytest

BASE = "/voicepartner/v1"
KEY = "sandbox-voicepartner-key"
TTS = {"apiKey": KEY, "phoneNumbers": "0600000001,0600000002", "text": "Bonjour", "lang": "fr"}
CAMPAIGN = {
    "apiKey": KEY,
    "phoneNumbers": "0600000001",
    "tokenAudio": "audio-123",
    "emailForNotification": "ops@example.com",
}


def post(client, command, payload):
    return client.post(f"{BASE}/{command}", json=payload)


def test_tts_send_success_shape(client, messages):
    response = post(client, "tts/send", TTS)

    assert response.status_code == 200
    data = response.json()
    assert data["success"] is True
    assert isinstance(data["campaignId"], str) and len(data["campaignId"]) == 10
    assert (data["cost"], data["currency"], data["nbSms"], data["lang"]) == (0.2, "EUR", 2, "fr")
    [recorded] = messages("voicepartner")
    assert (recorded["message_id"], recorded["mode"]) == (data["campaignId"], "tts")
    assert recorded["recipients"] == ["+33600000001", "+33600000002"]
    assert "apiKey" not in recorded["fields"]


def test_campaign_send_success_shape(client, messages):
    data = post(client, "campaign/send", CAMPAIGN).json()
    assert data["success"] is True
    assert (data["cost"], data["nbSms"]) == (0.15, 1)
    assert messages("voicepartner")[0]["mode"] == "campaign"


def test_bad_key_is_401_invalid_api_key(client, requests_of):
    response = post(client, "tts/send", {**TTS, "apiKey": "nope"})
    assert response.status_code == 401
    assert response.json() == {"success": False, "error": "INVALID_API_KEY"}
    assert client.get(f"{BASE}/me/nope").status_code == 401
    # The key travels in the /me path; it never reaches the records.
    assert {r["route"] for r in requests_of("voicepartner")} == {"/tts/send", "/me/{apiKey}"}


def test_me_reports_credit(client):
    post(client, "tts/send", TTS)
    me = client.get(f"{BASE}/me/{KEY}").json()
    assert me["success"] is True
    assert me["credit"] == str(1_000_000 - 2)


@pytest.mark.parametrize(
    ("command", "payload", "code"),
    [
        ("tts/send", {**TTS, "phoneNumbers": ""}, "PHONE_NUMBER_REQUIRED"),
        (
            "tts/send",
            {**TTS, "phoneNumbers": ",".join(f"+336{i:08d}" for i in range(501))},
            "PHONE_NUMBER_SIZE_ERROR",
        ),
        ("tts/send", {k: v for k, v in TTS.items() if k != "text"}, "TEXT_REQUIRED"),
        ("tts/send", {**TTS, "notifyUrl": "not a url"}, "NOTIFY_URL_INVALID"),
        ("tts/send", {**TTS, "phoneNumbers": "12"}, "DESTINATION_INVALID"),
        ("campaign/send", {**CAMPAIGN, "tokenAudio": ""}, "TOKEN_AUDIO_REQUIRED"),
        ("campaign/send", {**CAMPAIGN, "sender": "call-me"}, "SENDER_INVALID"),
        ("campaign/send", {**CAMPAIGN, "tokenAudio": "missing-1"}, "AUDIO_FILE_NOT_FOUND"),
    ],
)
def test_validation_errors_use_the_documented_string_codes(
    client, messages, command, payload, code
):
    response = post(client, command, payload)
    assert response.status_code == 400
    assert response.json() == {"success": False, "error": code}
    assert messages("voicepartner") == []


def test_no_credit_is_not_credit(client, set_balance, messages):
    set_balance("voicepartner", 1)
    response = post(client, "tts/send", TTS)  # two numbers
    assert response.json() == {"success": False, "error": "NOT_CREDIT"}
    assert messages("voicepartner") == []


def test_sixth_campaign_in_a_minute_is_429(client):
    statuses = [post(client, "campaign/send", CAMPAIGN).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    throttled = post(client, "campaign/send", CAMPAIGN)
    assert throttled.json() == {"success": False, "error": "TOO_MANY_REQUESTS"}
    assert 1 <= int(throttled.headers["Retry-After"]) <= 60
    assert post(client, "tts/send", TTS).status_code == 200  # tts has no per-minute limit


def test_hourly_limit_covers_tts(make_sandbox):
    sandbox = make_sandbox(limits={"voicepartner_per_hour": 3})
    with httpx.Client(base_url=sandbox.url) as client:
        statuses = [post(client, "tts/send", TTS).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


def test_me_is_limited_to_five_per_minute(client):
    statuses = [client.get(f"{BASE}/me/{KEY}").status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
