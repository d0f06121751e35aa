"""The provider registry and the shared driver: what every provider module declares, how the rest
of the worker reads it, the send algorithm, and the shared status mapping."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import httpx
import pytest

from worker.config import Settings
from worker.errors import (
    AccountBlockedError,
    ConfigurationError,
    DeliveryError,
    PermanentError,
    ThrottledError,
    TransientError,
)
from worker.models import EmailMessage, SmsMessage, VoiceMessage
from worker.providers import (
    DEFAULT_LIMITS,
    DRIVERS,
    PROVIDERS,
    SendContext,
    channel_providers,
    driver_class,
    make_driver,
    parse_message,
)
from worker.runtime import Runtime
from worker.stores.limiter import Limit

from .driver_support import mock_client

CTX = SendContext(delivery_id="d-1", idempotency_key="k-1", tag="dwd1")
BASE = "http://provider.test/prefix"

MESSAGES: dict[str, EmailMessage | SmsMessage | VoiceMessage] = {
    "postal": EmailMessage.model_validate(
        {
            "to": [{"email": "a@example.com"}],
            "from": {"email": "shop@example.org"},
            "subject": "s",
            "text": "t",
        }
    ),
    "emailmassivo": EmailMessage.model_validate(
        {
            "to": [{"email": "a@example.com"}],
            "from": {"email": "shop@example.org"},
            "subject": "s",
            "text": "t",
        }
    ),
    "mailpartner": EmailMessage.model_validate(
        {"to": [{"email": "a@example.com"}], "subject": "s", "html": "<p>t</p>"}
    ),
    "smspartner": SmsMessage.model_validate({"to": ["+33612345678"], "text": "hi"}),
    "voicepartner": VoiceMessage.model_validate(
        {"mode": "tts", "to": ["+33612345678"], "text": "hi"}
    ),
}


# -- the registry --------------------------------------------------------------------------------


def test_registry_lists_every_provider_in_reference_order() -> None:
    assert PROVIDERS == ("postal", "emailmassivo", "mailpartner", "smspartner", "voicepartner")
    assert channel_providers("email") == ("postal", "emailmassivo", "mailpartner")
    assert channel_providers("sms") == ("smspartner",)
    assert channel_providers("voice") == ("voicepartner",)
    for name in PROVIDERS:
        assert driver_class(name).name == name


def test_default_limits_follow_the_provider_reference() -> None:
    assert DEFAULT_LIMITS["emailmassivo"]["send"] == (Limit(10, 1.0),)
    assert DEFAULT_LIMITS["mailpartner"]["send"] == (Limit(2000, 60.0),)
    assert DEFAULT_LIMITS["voicepartner"]["tts"] == (Limit(2000, 3600.0),)
    assert set(DEFAULT_LIMITS["voicepartner"]["campaign"]) == {
        Limit(5, 60.0),
        Limit(2000, 3600.0),
    }
    assert DEFAULT_LIMITS["postal"]["send"] == ()
    assert DEFAULT_LIMITS["smspartner"]["send"] == ()


def test_a_message_picks_its_bucket_from_its_provider() -> None:
    voicemail = VoiceMessage.model_validate(
        {"mode": "voicemail", "to": ["+33612345678"], "audio_token": "tok"}
    )
    assert driver_class("voicepartner").limiter_bucket(MESSAGES["voicepartner"]) == "tts"
    assert driver_class("voicepartner").limiter_bucket(voicemail) == "campaign"
    for name in ("postal", "emailmassivo", "mailpartner", "smspartner"):
        bucket = driver_class(name).limiter_bucket(MESSAGES[name])
        assert bucket == "send" and bucket in DEFAULT_LIMITS[name]


def test_only_sms_partner_tags_a_delivery_for_reconciliation() -> None:
    sms = driver_class("smspartner")
    tag = sms.reconcile_tag(MESSAGES["smspartner"], "0f9e-8d7c-6b5a-4938-2716-aaaa")
    # <= 20 chars, lowercase, no spaces (docs/providers/smspartner.md §1.2.2), unique per delivery
    # (docs/providers/smspartner.md §1.5).
    assert tag == "dw0f9e8d7c6b5a493827"
    tagged = SmsMessage.model_validate({"to": ["+33612345678"], "text": "hi", "tag": "promo"})
    assert sms.reconcile_tag(tagged, "d-1") == "promo"
    for name in ("postal", "emailmassivo", "mailpartner", "voicepartner"):
        assert driver_class(name).reconcile_tag(MESSAGES[name], "d-1") is None


def test_models_do_not_import_providers() -> None:
    """The channel shapes sit below the providers: no import cycle, no provider list there."""
    sources = sorted((Path(__file__).parents[2] / "worker" / "models").glob("*.py"))
    assert sources
    imported = [
        node.module
        for source in sources
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module
    ]
    assert not [m for m in imported if m.startswith("worker.providers")]


# -- config and runtime read the registry --------------------------------------------------------


def test_settings_have_each_providers_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_SMSPARTNER_API_KEY", "k-sms")
    monkeypatch.setenv("DELIVERY_VOICEPARTNER_API_KEY", "k-voice")
    monkeypatch.setenv("DELIVERY_VOICEPARTNER_NOTIFICATION_EMAIL", "ops@example.com")
    monkeypatch.setenv("DELIVERY_EMAILMASSIVO_BASE_URL", "http://em.test")
    settings = Settings()
    assert settings.enabled_providers() == ["smspartner", "voicepartner"]
    assert settings.api_key("voicepartner") == "k-voice"
    assert settings.provider_extras("voicepartner") == {"notification_email": "ops@example.com"}
    assert settings.provider_extras("smspartner") == {}
    assert settings.base_url("emailmassivo") == "http://em.test"
    # Defaults are the drivers' own: one statement each.
    assert settings.base_url("smspartner") == "https://api.smspartner.fr/v1"
    assert settings.base_url("mailpartner") == "https://api.mailpartner.fr/v1"
    assert settings.base_url("voicepartner") == "https://api.voicepartner.fr/v1"
    assert settings.base_url("postal") is None
    for name in PROVIDERS:
        assert settings.base_url(name) in (DRIVERS[name].default_base_url, "http://em.test")
    assert settings.limits("voicepartner", "campaign") == DEFAULT_LIMITS["voicepartner"]["campaign"]


def test_runtime_passes_each_drivers_extra_settings(redis_url: str) -> None:
    settings = Settings(
        redis_url=f"{redis_url}/15",
        voicepartner_api_key="k-voice",
        voicepartner_notification_email="ops@example.com",
        smspartner_api_key="k-sms",
    )
    rt = Runtime(settings, client=mock_client(lambda r: httpx.Response(500)))
    try:
        voice = rt.driver("voicepartner")
        assert getattr(voice, "notification_email", None) == "ops@example.com"
        assert rt.driver("smspartner").name == "smspartner"
    finally:
        rt.close()


# -- parse_message applies the providers' rules ---------------------------------------------------


def test_a_channel_with_one_provider_names_it() -> None:
    assert parse_message("voice", {"mode": "tts", "to": ["+33612345678"], "text": "hi"}).provider
    assert parse_message("sms", {"to": ["+33612345678"], "text": "hi"}).provider == "smspartner"


def test_an_unknown_provider_lists_the_channels_providers() -> None:
    data = {"provider": "nope", "to": ["+33612345678"], "text": "hi"}
    with pytest.raises(ValueError, match="provider: Input should be 'smspartner'"):
        parse_message("sms", data)


# -- Driver.send: check → build → gate → transmit → parse ----------------------------------------


def test_send_calls_the_gate_after_building_and_before_transmitting() -> None:
    events: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        events.append("transmit")
        return httpx.Response(200, json={"success": True, "code": 200, "message_id": 7})

    driver = make_driver("smspartner", mock_client(handler), api_key="k", base_url=BASE)
    outcome = driver.send(MESSAGES["smspartner"], CTX, lambda: events.append("gate"))
    assert events == ["gate", "transmit"]
    assert outcome.provider_message_ids == {"+33612345678": "7"}


def test_what_the_gate_raises_ends_the_send_before_any_byte_leaves() -> None:
    class Later(Exception):
        pass

    def gate() -> None:
        raise Later

    seen: list[httpx.Request] = []
    driver = make_driver(
        "smspartner",
        mock_client(lambda r: seen.append(r) or httpx.Response(200)),
        api_key="k",
        base_url=BASE,
    )
    with pytest.raises(Later):
        driver.send(MESSAGES["smspartner"], CTX, gate)
    assert seen == []


def test_a_message_breaking_the_providers_rules_is_refused_before_the_gate() -> None:
    two = EmailMessage.model_validate(
        {
            **MESSAGES["emailmassivo"].model_dump(by_alias=True),
            "to": [{"email": "a@example.com"}, {"email": "b@example.com"}],
        }
    )
    bad_tag = EmailMessage.model_validate(
        {**MESSAGES["mailpartner"].model_dump(by_alias=True, exclude_none=True), "tag": "ab"}
    )
    gates: list[str] = []
    for provider, message in (("emailmassivo", two), ("mailpartner", bad_tag)):
        driver = make_driver(
            provider, mock_client(lambda r: httpx.Response(500)), api_key="k", base_url=BASE
        )
        with pytest.raises(PermanentError, match=provider):
            driver.send(message, CTX, lambda: gates.append("gate"))
    assert gates == []


# -- the shared status mapping, and each provider's documented quirks ---------------------------

SHARED: dict[int, type[DeliveryError]] = {
    301: ConfigurationError,  # redirects are not followed: the base URL is wrong
    401: ConfigurationError,
    402: AccountBlockedError,
    404: PermanentError,
    408: TransientError,
    418: PermanentError,
    503: TransientError,
}
QUIRKS: dict[str, dict[int, type[DeliveryError]]] = {
    # docs/providers/postal.md §4.1/§4.7: Postal answers 200 for everything; other statuses are a
    # proxy.
    "postal": {
        301: TransientError,
        401: TransientError,
        402: TransientError,
        404: TransientError,
        418: TransientError,
    },
    # docs/providers/emailmassivo.md §5.4: a 404 without a template message is the key or the
    # domain.
    "emailmassivo": {404: ConfigurationError},
}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("status", sorted(SHARED))
def test_status_classification(provider: str, status: int) -> None:
    answer = httpx.Response(status, json={}, headers={"Retry-After": "7"})
    driver = make_driver(
        provider,
        mock_client(lambda r: answer),
        api_key="k",
        base_url=BASE,
    )
    expected = QUIRKS.get(provider, {}).get(status, SHARED[status])
    with pytest.raises(DeliveryError) as info:
        driver.send(MESSAGES[provider], CTX)
    assert type(info.value) is expected, info.value
    assert info.value.status_code == status
    if expected is TransientError:
        assert info.value.retry_after_s == 7.0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_429_waits_retry_after_else_the_providers_default(provider: str) -> None:
    answers = iter(
        [httpx.Response(429, json={}, headers={"Retry-After": "9"}), httpx.Response(429, json={})]
    )
    driver = make_driver(provider, mock_client(lambda r: next(answers)), api_key="k", base_url=BASE)
    waits: list[Any] = []
    for _ in range(2):
        with pytest.raises(ThrottledError) as info:
            driver.send(MESSAGES[provider], CTX)
        waits.append(info.value.retry_after_s)
    # Voice Partner: a minute (docs/providers/voicepartner.md §3.2, [NOT FOUND] Retry-After); the
    # others: 1 s.
    assert waits == [9.0, 60.0 if provider == "voicepartner" else 1.0]
