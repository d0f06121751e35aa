"""Voice Partner campaigns: several numbers per request (docs/providers/voicepartner.md §3.2:
``tts/send`` and ``campaign/send`` take ``phoneNumbers`` comma-separated, at most 500;
docs/providers/voicepartner.md §3.3 ``PHONE_NUMBER_SIZE_ERROR``), against a MockTransport
fake: what batches together, the one request built, the one ``campaignId`` answered per number,
refusals per request."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from worker.errors import AccountBlockedError, PermanentError, UnknownOutcomeError
from worker.models import VoiceMessage
from worker.providers.base import SendOutcome
from worker.providers.voicepartner import MAX_NUMBERS, VoicePartnerDriver

from .driver_support import Handler, mock_client, recorder

API_KEY = "voicepartner-batch-key-7a1c"
BASE = "http://sandbox.test/voicepartner/v1"
NUMBERS = ["+33612000001", "+33612000003", "+33612000005"]


def driver(handler: Handler) -> VoicePartnerDriver:
    return VoicePartnerDriver(
        mock_client(handler), api_key=API_KEY, base_url=BASE, notification_email="ops@example.org"
    )


def tts(number: str, text: str = "Votre rendez-vous est demain", **extra: Any) -> VoiceMessage:
    return VoiceMessage.model_validate({"mode": "tts", "to": [number], "text": text, **extra})


def drop(number: str, **extra: Any) -> VoiceMessage:
    message = {"mode": "voicemail", "to": [number], "audio_token": "promo-2026", **extra}
    return VoiceMessage.model_validate(message)


def ok(count: int, campaign_id: str = "cmp123") -> httpx.Response:
    body = {
        "success": True,
        "campaignId": campaign_id,
        "cost": round(0.1 * count, 3),
        "currency": "EUR",
        "nbSms": count,
    }
    return httpx.Response(200, json=body)


def test_the_driver_declares_500_numbers_per_request() -> None:
    assert VoicePartnerDriver.batch_limit == MAX_NUMBERS == 500


def test_messages_with_the_same_content_batch_together_others_go_alone() -> None:
    key = VoicePartnerDriver.batch_key
    assert key(tts(NUMBERS[0])) == key(tts(NUMBERS[1]))
    assert key(tts(NUMBERS[0])) != key(tts(NUMBERS[1], text="Autre texte"))
    assert key(tts(NUMBERS[0])) != key(tts(NUMBERS[1], lang="en"))
    assert key(tts(NUMBERS[0])) != key(tts(NUMBERS[1], speech_rate=1.5))
    assert key(tts(NUMBERS[0])) != key(drop(NUMBERS[1]))
    assert key(drop(NUMBERS[0])) != key(drop(NUMBERS[1], sender="+33123456789"))
    assert key(drop(NUMBERS[0])) != key(drop(NUMBERS[1], notification_email="a@example.org"))
    several = VoiceMessage.model_validate({"mode": "tts", "to": NUMBERS[:2], "text": "x"})
    assert key(several) is None  # one request already


def test_a_tts_batch_is_one_request_with_every_number_and_one_campaign_id_each() -> None:
    seen, handler = recorder(ok(3))
    d = driver(handler)
    messages = [tts(n) for n in NUMBERS]
    gates: list[int] = []
    answers = d.send_batch(messages, "batch-tag-1", lambda: gates.append(1))
    assert gates == [1]  # one limiter slot for the request
    (request,) = seen
    assert request.url.path == "/voicepartner/v1/tts/send"
    body = json.loads(request.content)
    assert body["phoneNumbers"] == ",".join(NUMBERS)
    assert (body["text"], body["lang"], body["apiKey"]) == (messages[0].text, "fr", API_KEY)
    assert "notifyUrl" not in body and "scheduledDate" not in body
    assert [a.provider_message_ids for a in answers if isinstance(a, SendOutcome)] == [
        {n: "cmp123"} for n in NUMBERS
    ]
    assert [a.cost for a in answers if isinstance(a, SendOutcome)] == [0.1, 0.1, 0.1]
    assert VoicePartnerDriver.limiter_bucket(messages[0]) == "tts"


def test_a_voicemail_batch_goes_to_campaign_send_with_its_notification_email() -> None:
    seen, handler = recorder(ok(2, "drop77"))
    answers = driver(handler).send_batch([drop(n) for n in NUMBERS[:2]], "t", lambda: None)
    (request,) = seen
    assert request.url.path == "/voicepartner/v1/campaign/send"
    body = json.loads(request.content)
    assert body["phoneNumbers"] == ",".join(NUMBERS[:2])
    assert (body["tokenAudio"], body["emailForNotification"]) == ("promo-2026", "ops@example.org")
    assert all(isinstance(a, SendOutcome) for a in answers)
    assert VoicePartnerDriver.limiter_bucket(drop(NUMBERS[0])) == "campaign"


def test_a_refusal_one_number_can_cause_asks_each_again_alone() -> None:
    refused = httpx.Response(400, json={"success": False, "error": "DESTINATION_INVALID"})
    _, handler = recorder(refused)
    answers = driver(handler).send_batch([tts(n) for n in NUMBERS], "t", lambda: None)
    assert answers == [None, None, None]
    # Alone, the same refusal is that message's own (permanent) error.
    _, handler = recorder(refused)
    with pytest.raises(PermanentError):
        driver(handler).send_batch([tts(NUMBERS[0])], "t", lambda: None)


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (httpx.Response(400, json={"success": False, "error": "NOT_CREDIT"}), AccountBlockedError),
        (
            httpx.Response(400, json={"success": False, "error": "PHONE_NUMBER_SIZE_ERROR"}),
            PermanentError,
        ),
        (httpx.Response(200, json={"success": True}), UnknownOutcomeError),  # no campaignId
        (httpx.Response(200, text="<html>"), UnknownOutcomeError),
    ],
)
def test_a_refusal_of_the_request_is_raised_for_the_whole_batch(
    response: httpx.Response, error: type[Exception]
) -> None:
    _, handler = recorder(response)
    with pytest.raises(error):
        driver(handler).send_batch([tts(n) for n in NUMBERS], "t", lambda: None)
