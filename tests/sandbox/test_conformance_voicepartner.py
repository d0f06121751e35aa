"""Voice Partner conformance: each rule the sandbox follows, with the
docs/providers/voicepartner.md section it comes from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from delivery_sandbox import DEFAULT_KEYS
from delivery_sandbox.__main__ import build_parser
from delivery_sandbox.config import Limits
from delivery_sandbox.providers.partner import PROVIDER_TZ
from worker.errors import AccountBlockedError, PermanentError
from worker.models import VoiceMessage
from worker.providers.base import SendContext
from worker.providers.voicepartner import VoicePartnerDriver

BASE = "/voicepartner/v1"
KEY = DEFAULT_KEYS["voicepartner"]
CAMPAIGN = {
    "apiKey": KEY,
    "phoneNumbers": "0600000001",
    "tokenAudio": "audio-123",
    "emailForNotification": "ops@example.com",
}
TTS = {"apiKey": KEY, "phoneNumbers": "0600000001", "text": "Bonjour", "lang": "fr"}
CTX = SendContext(delivery_id="dlv-conf-3", idempotency_key="idem-conf-3")


def post(client: httpx.Client, command: str, payload: dict[str, Any]) -> httpx.Response:
    return client.post(f"{BASE}/{command}", json=payload)


def later(minutes: int) -> str:
    # docs/providers/voicepartner.md §3.2 scheduledDate: "YYYY-mm-dd H:m:00".
    return (datetime.now(PROVIDER_TZ) + timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M:00")


def test_post_key_goes_in_the_body_and_get_key_in_the_path(client):
    # docs/providers/voicepartner.md §3.1: apiKey in the JSON body for POST, in the URL path for
    # GET/DELETE.
    assert post(client, "tts/send", TTS).json()["success"] is True
    in_query = client.post(f"{BASE}/tts/send", params={"apiKey": KEY}, json={**TTS, "apiKey": ""})
    assert in_query.status_code == 401
    assert client.get(f"{BASE}/me/{KEY}").json()["success"] is True
    assert client.get(f"{BASE}/me", params={"apiKey": KEY}).status_code == 404


def test_more_than_500_numbers(client):
    # docs/providers/voicepartner.md §3.2 campaign "≤500 numbers per request";
    # docs/providers/voicepartner.md §3.3 PHONE_NUMBER_SIZE_ERROR.
    numbers = ",".join(f"06{i:08d}" for i in range(501))
    response = post(client, "campaign/send", {**CAMPAIGN, "phoneNumbers": numbers})
    assert response.json() == {"success": False, "error": "PHONE_NUMBER_SIZE_ERROR"}


def test_one_request_takes_up_to_500_numbers_on_both_endpoints(client):
    # docs/providers/voicepartner.md §3.2: phoneNumbers comma-separated, one campaignId for the
    # request; docs/providers/voicepartner.md §3.3 PHONE_NUMBER_SIZE_ERROR beyond 500.
    assert VoicePartnerDriver.batch_limit == 500
    five_hundred = ",".join(f"06{i:08d}" for i in range(500))
    for command, body in (("tts/send", TTS), ("campaign/send", CAMPAIGN)):
        answer = post(client, command, {**body, "phoneNumbers": five_hundred}).json()
        assert answer["success"] is True and answer["nbSms"] == 500
        over = post(client, command, {**body, "phoneNumbers": five_hundred + ",0699999999"})
        assert over.json() == {"success": False, "error": "PHONE_NUMBER_SIZE_ERROR"}


def test_a_bad_number_refuses_the_whole_request(client):
    # docs/providers/voicepartner.md §3.3 DESTINATION_INVALID: nothing of the request is accepted
    # (the driver then asks again per number).
    refused = post(client, "tts/send", {**TTS, "phoneNumbers": "0600000001,not-a-number"})
    assert refused.json() == {"success": False, "error": "DESTINATION_INVALID"}


def test_scheduled_date_is_whole_minutes(client):
    # docs/providers/voicepartner.md §3.2 scheduledDate "YYYY-mm-dd H:m:00".
    at = later(30)
    assert post(client, "tts/send", {**TTS, "scheduledDate": at}).json()["success"] is True
    seconds = at[:-2] + "30"
    refused = post(client, "tts/send", {**TTS, "scheduledDate": seconds})
    assert refused.json() == {"success": False, "error": "SCHEDULED_DATE_INVALID"}


def test_a_driver_batch_is_one_accepted_request_with_one_campaign_id(client):
    d = VoicePartnerDriver(client, api_key=KEY, base_url=str(client.base_url).rstrip("/") + BASE)
    numbers = [f"+336120{i:05d}" for i in range(1, 41, 2)]
    messages = [VoiceMessage(mode="tts", to=[n], text="Rappel") for n in numbers]
    answers = d.send_batch(messages, "batch-conf", lambda: None)
    ids = {a.provider_message_ids[n] for a, n in zip(answers, numbers, strict=True) if a}
    assert len(ids) == 1 and all(answers)


def test_not_enough_credit(client, set_balance):
    # docs/providers/voicepartner.md §3.3 NOT_CREDIT (insufficient credit).
    set_balance("voicepartner", 1)
    response = post(client, "tts/send", {**TTS, "phoneNumbers": "0600000001,0600000002"})
    assert response.json()["error"] == "NOT_CREDIT"


def test_sender_must_be_validated_on_the_account(client):
    # docs/providers/voicepartner.md §3.2: `sender` is "a callback number validated beforehand on
    # my.voicepartner.fr"; docs/providers/voicepartner.md §3.3 SENDER_NOT_AUTHORIZED. The default
    # validated number is +33123456789.
    refused = post(client, "campaign/send", {**CAMPAIGN, "sender": "+33999999999"})
    assert (refused.status_code, refused.json()["error"]) == (400, "SENDER_NOT_AUTHORIZED")
    assert post(client, "campaign/send", {**CAMPAIGN, "sender": "0123456789"}).json()["success"]
    # docs/providers/voicepartner.md §3.3 SENDER_INVALID: not a phone number at all.
    assert post(client, "campaign/send", {**CAMPAIGN, "sender": "Shop"}).json()["error"] == (
        "SENDER_INVALID"
    )


def test_senders_are_configurable(client):
    response = client.post("/_admin/settings", json={"voicepartner": {"senders": ["0999999999"]}})
    assert response.json()["settings"]["voicepartner"] == {"senders": ["+33999999999"]}
    assert post(client, "campaign/send", {**CAMPAIGN, "sender": "+33999999999"}).json()["success"]
    bad = client.post("/_admin/settings", json={"voicepartner": {"senders": ["call-me"]}})
    assert bad.status_code == 400
    args = build_parser().parse_args(["--voicepartner-sender", "+33111111111"])
    assert args.voicepartner_senders == ["+33111111111"]


def test_campaign_limit_is_5_per_minute(client):
    # docs/providers/voicepartner.md §3.2 campaign/send: "2000 requests/hour, 5 requests/minute".
    statuses = [post(client, "campaign/send", CAMPAIGN).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]


def test_hourly_limit_is_2000(make_sandbox):
    # docs/providers/voicepartner.md §3.2 tts/send: 2000 requests/hour (a small value stands in for
    # it here).
    sandbox = make_sandbox(limits={"voicepartner_per_hour": 3})
    with httpx.Client(base_url=sandbox.url) as client:
        statuses = [post(client, "tts/send", TTS).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert Limits().voicepartner_per_hour == 2000
    assert Limits().voicepartner_campaign_per_min == 5


def test_cancel_a_scheduled_campaign(client, requests_of):
    # docs/providers/voicepartner.md §3.2 DELETE /v1/campaign/cancel/{apiKey}/{campaignId}.
    sent = post(client, "campaign/send", {**CAMPAIGN, "scheduledDate": later(60)}).json()
    before = client.get(f"{BASE}/me/{KEY}").json()["credit"]
    response = client.delete(f"{BASE}/campaign/cancel/{KEY}/{sent['campaignId']}")
    assert response.status_code == 200
    # docs/providers/voicepartner.md §3.2:
    # {"success":true,"campaignId":"D572M","assignedCredit":"1.8","currency":"EUR"}.
    data = response.json()
    assert set(data) == {"success", "campaignId", "assignedCredit", "currency"}
    assert (data["success"], data["campaignId"]) == (True, sent["campaignId"])
    assert float(data["assignedCredit"]) == pytest.approx(0.15)
    assert int(client.get(f"{BASE}/me/{KEY}").json()["credit"]) == int(before) + 1
    # docs/providers/voicepartner.md §3.2 documented HTTP codes: 400 bad request (already
    # cancelled), 401, 404.
    again = client.delete(f"{BASE}/campaign/cancel/{KEY}/{sent['campaignId']}")
    assert again.status_code == 400
    assert client.delete(f"{BASE}/campaign/cancel/wrong/{sent['campaignId']}").status_code == 401
    assert client.delete(f"{BASE}/campaign/cancel/{KEY}/nosuchid").status_code == 404
    # The key is in the path: it never reaches the records.
    routes = json.dumps([r["route"] for r in requests_of("voicepartner")])
    assert KEY not in routes
    assert f"/campaign/cancel/{{apiKey}}/{sent['campaignId']}" in routes


def test_an_immediate_campaign_cannot_be_cancelled(client):
    sent = post(client, "campaign/send", CAMPAIGN).json()
    assert client.delete(f"{BASE}/campaign/cancel/{KEY}/{sent['campaignId']}").status_code == 400


# -- the driver against these rules -----------------------------------------------------------


@pytest.fixture
def driver(sandbox) -> Iterator[VoicePartnerDriver]:
    with httpx.Client(timeout=5.0) as http:
        yield VoicePartnerDriver(http, api_key=KEY, base_url=sandbox.provider_url("voicepartner"))


def voicemail(**overrides: Any) -> VoiceMessage:
    data: dict[str, Any] = {
        "mode": "voicemail",
        "to": ["+33600000001"],
        "audio_token": "audio-1",
        "notification_email": "ops@example.com",
    }
    return VoiceMessage.model_validate({**data, **overrides})


def test_driver_unvalidated_sender_is_permanent(driver):
    with pytest.raises(PermanentError) as info:
        driver.send(voicemail(sender="+33999999999"), CTX)
    assert info.value.provider_code == "SENDER_NOT_AUTHORIZED"
    assert driver.send(voicemail(sender="+33123456789"), CTX).provider_message_ids


def test_driver_no_credit_is_an_account_error(driver, set_balance):
    set_balance("voicepartner", 0)
    with pytest.raises(AccountBlockedError):
        driver.send(voicemail(), CTX)
