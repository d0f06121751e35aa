"""Voice Partner driver: the wire format of docs/providers/voicepartner.md §3, against a
MockTransport fake."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from worker.errors import (
    AccountBlockedError,
    ConfigurationError,
    DeliveryError,
    PermanentError,
    ThrottledError,
    TransientError,
    UnknownOutcomeError,
)
from worker.models import VoiceMessage
from worker.providers import make_driver as registry_make_driver
from worker.providers.base import SendContext
from worker.providers.voicepartner import ERROR_CODES, VoicePartnerDriver

from .driver_support import Handler, mock_client, recorder

API_KEY = "voicepartner-test/key+6a2"  # '/' and '+' prove the key is quoted in URL paths
BASE = "http://sandbox.test/prefix/voicepartner/v1"
CTX = SendContext(delivery_id="dlv-0005", idempotency_key="idem-0005")
NUMBERS = ["+33612345678", "+33698765432"]

# docs/providers/voicepartner.md §3.2 examples.
TTS_SUCCESS = {
    "success": True,
    "campaignId": "Ff1tbu0lax",
    "cost": 0.1,
    "currency": "EUR",
    "nbSms": 1,
    "lang": "en",
    "duration": 6.3,
    "detail": {"33": {"nbSms": 1, "cost_unity": 0.1, "cost": 0.1, "country_code": "fr"}},
}
CAMPAIGN_SUCCESS = {
    "success": True,
    "campaignId": "D572M",
    "cost": 0.15,
    "currency": "EUR",
    "nbSms": 1,
    "audioFile": {"filename": "filename.wav", "size": "135.8Ko"},
    "detail": {"33": {"nbSms": 1, "cost_unity": 0.15, "cost": 0.15}},
}
ME = {
    "success": True,
    "credit": "19",
    "currency": "€",
    "details": {
        "tts": {"h": 5, "m": 55, "s": 66},
        "tts_fixe": {"h": 3, "m": 44, "s": 55},
        "voice": {"message": 10},
    },
}


def make_driver(
    handler: Handler, base_url: str | None = BASE, notification_email: str | None = None
) -> VoicePartnerDriver:
    client = mock_client(handler)
    return VoicePartnerDriver(
        client, api_key=API_KEY, base_url=base_url, notification_email=notification_email
    )


def tts(**overrides: Any) -> VoiceMessage:
    data: dict[str, Any] = {"mode": "tts", "to": NUMBERS, "text": "Bonjour, votre code est 1 2 3"}
    data.update(overrides)
    return VoiceMessage.model_validate(data)


def voicemail(**overrides: Any) -> VoiceMessage:
    data: dict[str, Any] = {"mode": "voicemail", "to": NUMBERS, "audio_token": "abc123"}
    data.update(overrides)
    return VoiceMessage.model_validate(data)


# -- request shape ----------------------------------------------------------------------------


def test_tts_request_shape() -> None:
    seen, handler = recorder(httpx.Response(200, json=TTS_SUCCESS))
    make_driver(handler).send(tts(lang="en", speech_rate=1.5), CTX)
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "http://sandbox.test/prefix/voicepartner/v1/tts/send"
    assert json.loads(request.content) == {
        "apiKey": API_KEY,
        "phoneNumbers": "+33612345678,+33698765432",
        "text": "Bonjour, votre code est 1 2 3",
        "lang": "en",
        "speechRate": 1.5,
    }
    assert request.url.params.get("apiKey") is None


def test_tts_with_audio_token_sends_only_the_token() -> None:
    seen, handler = recorder(httpx.Response(200, json=TTS_SUCCESS))
    make_driver(handler).send(tts(text=None, audio_token="tok_1"), CTX)
    body = json.loads(seen[0].content)
    assert body["tokenAudio"] == "tok_1"
    assert "text" not in body and "speechRate" not in body
    assert body["lang"] == "fr"


def test_default_base_url() -> None:
    seen, handler = recorder(httpx.Response(200, json=TTS_SUCCESS))
    make_driver(handler, base_url=None).send(tts(), CTX)
    assert str(seen[0].url) == "https://api.voicepartner.fr/v1/tts/send"


def test_voicemail_request_shape() -> None:
    seen, handler = recorder(httpx.Response(200, json=CAMPAIGN_SUCCESS))
    msg = voicemail(notification_email="ops@example.com", sender="+33123456789")
    make_driver(handler).send(msg, CTX)
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "http://sandbox.test/prefix/voicepartner/v1/campaign/send"
    assert json.loads(request.content) == {
        "apiKey": API_KEY,
        "tokenAudio": "abc123",
        "emailForNotification": "ops@example.com",
        "phoneNumbers": "+33612345678,+33698765432",
        "sender": "+33123456789",
    }


def test_voicemail_falls_back_to_the_configured_notification_email() -> None:
    seen, handler = recorder(httpx.Response(200, json=CAMPAIGN_SUCCESS))
    make_driver(handler, notification_email="default@example.com").send(voicemail(), CTX)
    body = json.loads(seen[0].content)
    assert body["emailForNotification"] == "default@example.com"
    assert "sender" not in body


def test_message_notification_email_wins_over_the_default() -> None:
    seen, handler = recorder(httpx.Response(200, json=CAMPAIGN_SUCCESS))
    driver = make_driver(handler, notification_email="default@example.com")
    driver.send(voicemail(notification_email="ops@example.com"), CTX)
    assert json.loads(seen[0].content)["emailForNotification"] == "ops@example.com"


def test_voicemail_without_any_notification_email_is_a_configuration_error() -> None:
    seen, handler = recorder(httpx.Response(200, json=CAMPAIGN_SUCCESS))
    with pytest.raises(ConfigurationError, match="notification_email"):
        make_driver(handler).send(voicemail(), CTX)
    assert seen == []


def test_registry_passes_notification_email() -> None:
    seen, handler = recorder(httpx.Response(200, json=CAMPAIGN_SUCCESS))
    client = mock_client(handler)
    driver = registry_make_driver(
        "voicepartner",
        client,
        api_key=API_KEY,
        base_url=BASE,
        notification_email="reg@example.com",
    )
    assert isinstance(driver, VoicePartnerDriver)
    driver.send(voicemail(), CTX)
    assert json.loads(seen[0].content)["emailForNotification"] == "reg@example.com"


# -- success ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "body", "campaign", "cost"),
    [(tts, TTS_SUCCESS, "Ff1tbu0lax", 0.1), (voicemail, CAMPAIGN_SUCCESS, "D572M", 0.15)],
)
def test_success_maps_campaign_id_per_number(
    build: Callable[..., VoiceMessage], body: dict[str, Any], campaign: str, cost: float
) -> None:
    _, handler = recorder(httpx.Response(200, json=body))
    driver = make_driver(handler, notification_email="ops@example.com")
    outcome = driver.send(build(), CTX)
    assert outcome.provider == "voicepartner"
    assert outcome.provider_message_ids == {n: campaign for n in NUMBERS}
    assert outcome.cost == cost
    assert outcome.currency == "EUR"


@pytest.mark.parametrize("campaign_id", [None, "", False, ["x"]])
def test_success_without_campaign_id_is_an_unknown_outcome(campaign_id: Any) -> None:
    _, handler = recorder(httpx.Response(200, json={"success": True, "campaignId": campaign_id}))
    with pytest.raises(UnknownOutcomeError):
        make_driver(handler).send(tts(), CTX)


# -- errors (docs/providers/voicepartner.md §3.3: body shape NOT FOUND, so several shapes) ---------


def _shapes(code: str) -> list[dict[str, Any]]:
    return [
        {"success": False, "error": code},
        {"success": False, "code": code, "message": "Crédit insuffisant"},
        {"success": False, "message": code},
        {"success": False, "error": {"code": code, "message": "détail"}},
    ]


EXPECTED: dict[str, type[DeliveryError]] = {
    "NOT_CREDIT": AccountBlockedError,
    "PHONE_NUMBER_REQUIRED": PermanentError,
    "PHONE_NUMBER_SIZE_ERROR": PermanentError,
    "TOKEN_AUDIO_REQUIRED": PermanentError,
    "NOTIFY_URL_INVALID": PermanentError,
    "SENDER_NOT_AUTHORIZED": PermanentError,
    "SENDER_INVALID": PermanentError,
    "AUDIO_FILE_NOT_FOUND": PermanentError,
    "DESTINATION_INVALID": PermanentError,
}


def test_code_table_covers_the_reference() -> None:
    assert set(EXPECTED) <= set(ERROR_CODES)


@pytest.mark.parametrize("status", [200, 400])
@pytest.mark.parametrize("shape", range(4))
@pytest.mark.parametrize(("code", "expected"), sorted(EXPECTED.items()))
def test_error_codes_in_every_body_shape(
    code: str, expected: type[DeliveryError], shape: int, status: int
) -> None:
    _, handler = recorder(httpx.Response(status, json=_shapes(code)[shape]))
    with pytest.raises(DeliveryError) as info:
        make_driver(handler).send(tts(), CTX)
    assert type(info.value) is expected
    assert info.value.provider_code == code
    assert info.value.status_code == status


def test_numeric_code_10_is_a_bad_key() -> None:
    _, handler = recorder(httpx.Response(200, json={"success": False, "code": 10}))
    with pytest.raises(ConfigurationError):
        make_driver(handler).send(tts(), CTX)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(401, text="Unauthorized"), ConfigurationError),
        (httpx.Response(401, json={"success": False, "error": "UNAUTHORIZED"}), ConfigurationError),
        (httpx.Response(402, json={"success": False}), AccountBlockedError),
        (httpx.Response(500, json={"success": False}), TransientError),
        (httpx.Response(503, text="Service Unavailable"), TransientError),
        (httpx.Response(400, json={"success": False, "error": "SOMETHING_NEW"}), PermanentError),
        (httpx.Response(200, json={"success": False, "error": "SOMETHING_NEW"}), PermanentError),
        (httpx.Response(404, json={"success": False}), PermanentError),
    ],
)
def test_http_status_classes(response: httpx.Response, expected: type[DeliveryError]) -> None:
    _, handler = recorder(response)
    with pytest.raises(DeliveryError) as info:
        make_driver(handler).send(tts(), CTX)
    assert type(info.value) is expected
    assert info.value.status_code == response.status_code


def test_429_honours_retry_after() -> None:
    _, handler = recorder(httpx.Response(429, headers={"Retry-After": "8"}, text="Too Many"))
    with pytest.raises(ThrottledError) as info:
        make_driver(handler).send(tts(), CTX)
    assert info.value.retry_after_s == 8.0


def test_429_without_retry_after_waits_a_minute() -> None:
    _, handler = recorder(httpx.Response(429, json={"success": False}))
    with pytest.raises(ThrottledError) as info:
        make_driver(handler).send(tts(), CTX)
    assert info.value.retry_after_s == 60.0


# -- balance (docs/providers/voicepartner.md §3.2: key in the path) --------------------------------


def test_check_balance_puts_the_key_in_the_path() -> None:
    seen, handler = recorder(httpx.Response(200, json=ME))
    balance = make_driver(handler).check_balance()
    assert balance is not None
    assert balance.has_credit is True
    assert balance.credits == 19.0
    assert balance.currency == "€"
    (request,) = seen
    assert request.method == "GET"
    assert request.url.raw_path == b"/prefix/voicepartner/v1/me/voicepartner-test%2Fkey%2B6a2"
    assert request.url.query == b""


@pytest.mark.parametrize("credit", ["0", 0, "-1.5"])
def test_check_balance_without_credit(credit: Any) -> None:
    _, handler = recorder(httpx.Response(200, json={**ME, "credit": credit}))
    balance = make_driver(handler).check_balance()
    assert balance is not None and balance.has_credit is False


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(200, json={**ME, "credit": "lots"}), TransientError),
        (httpx.Response(200, json={"success": True}), TransientError),
        (httpx.Response(200, json={"success": False, "code": 10}), ConfigurationError),
        (httpx.Response(401, text="no"), ConfigurationError),
        (httpx.Response(429, text="5 per minute"), ThrottledError),
    ],
)
def test_check_balance_errors(response: httpx.Response, expected: type[DeliveryError]) -> None:
    _, handler = recorder(response)
    with pytest.raises(DeliveryError) as info:
        make_driver(handler).check_balance()
    assert type(info.value) is expected


# -- hostile answers ----------------------------------------------------------------------------

HUGE = b'{"success":true,"campaignId":"' + b"x" * (2 * 1024 * 1024) + b'"}'


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        pytest.param(
            httpx.Response(502, html="<html><h1>502 Bad Gateway</h1></html>"),
            TransientError,
            id="html-502",
        ),
        pytest.param(
            httpx.Response(200, content=b'{"success":true,"campaignId":"Ff1'),
            UnknownOutcomeError,
            id="truncated-json-200",
        ),
        pytest.param(httpx.Response(200, json=[TTS_SUCCESS]), UnknownOutcomeError, id="array"),
        pytest.param(
            httpx.Response(200, json={"success": "yes", "campaignId": "x"}),
            UnknownOutcomeError,
            id="success-yes",
        ),
        pytest.param(
            httpx.Response(200, json={"success": False, "error": 12.5}),
            PermanentError,
            id="error-float",
        ),
        pytest.param(
            httpx.Response(200, json={"success": False, "error": "x" * 5000}),
            PermanentError,
            id="error-long",
        ),
        pytest.param(httpx.Response(200, content=HUGE), UnknownOutcomeError, id="huge-body"),
    ],
)
def test_hostile_answers_are_classified(
    response: httpx.Response, expected: type[DeliveryError]
) -> None:
    _, handler = recorder(response)
    with pytest.raises(DeliveryError) as info:
        make_driver(handler).send(tts(), CTX)
    assert type(info.value) is expected
    assert len(str(info.value)) < 1000
