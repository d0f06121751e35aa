"""Callback hint URLs (SMS Partner urlDlr docs/providers/smspartner.md §1.4, Voice Partner notifyUrl
docs/providers/voicepartner.md §3.3) and their settings."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from delivery_sandbox.webhooks import PostalSigner
from worker.config import Settings
from worker.delivery import Done, process
from worker.models import SmsMessage, VoiceMessage
from worker.providers.base import SendContext
from worker.providers.smspartner import SmsPartnerDriver
from worker.providers.voicepartner import VoicePartnerDriver
from worker.redaction import scrub
from worker.runtime import Runtime
from worker.tracking.callbacks import callback_token, callback_url, verify_token

from .driver_support import mock_client, recorder

SECRET = "k" * 32
ISSUED = 1_764_230_000.0
URL = callback_url("https://hooks.example.com/", SECRET, "smspartner", "dlv-1", issued_at=ISSUED)
SMS_OK = {"success": True, "code": 200, "message_id": 307, "nb_sms": 1, "cost": 0.038}
VOICE_OK = {"success": True, "campaignId": "Ff1tbu0lax", "cost": 0.1, "currency": "EUR"}


def test_the_url_names_the_delivery_and_carries_its_token() -> None:
    token = callback_token(SECRET, "smspartner", "dlv-1", issued_at=ISSUED)
    assert f"https://hooks.example.com/hooks/smspartner/dlv-1/{token}" == URL
    issued, _, mac = token.partition(".")
    assert int(issued, 16) == int(ISSUED) and len(mac) == 43  # 32 bytes, base64url, unpadded
    now = ISSUED + 60
    assert verify_token(SECRET, "smspartner", "dlv-1", token, now=now)
    assert not verify_token(SECRET, "smspartner", "dlv-2", token, now=now)
    assert not verify_token(SECRET, "voicepartner", "dlv-1", token, now=now)
    assert not verify_token("j" * 32, "smspartner", "dlv-1", token, now=now)
    assert not verify_token(SECRET, "smspartner", "dlv-1", token + "é", now=now)


def test_a_token_expires_after_the_tracking_horizon() -> None:
    token = callback_token(SECRET, "smspartner", "dlv-1", issued_at=ISSUED)
    horizon = 48 * 3600
    assert verify_token(SECRET, "smspartner", "dlv-1", token, now=ISSUED + horizon)
    assert not verify_token(SECRET, "smspartner", "dlv-1", token, now=ISSUED + horizon + 1)
    assert verify_token(SECRET, "smspartner", "dlv-1", token, now=ISSUED + 10, max_age_s=60)
    assert not verify_token(SECRET, "smspartner", "dlv-1", token, now=ISSUED + 61, max_age_s=60)
    # Issued far in the future (a forged or broken clock): refused too.
    assert not verify_token(SECRET, "smspartner", "dlv-1", token, now=ISSUED - 3600)


def test_the_issued_at_is_signed_and_old_style_tokens_are_refused() -> None:
    token = callback_token(SECRET, "smspartner", "dlv-1", issued_at=ISSUED)
    _, _, mac = token.partition(".")
    # Moving the date forward to revive an expired URL breaks the MAC.
    revived = f"{int(ISSUED) + 100 * 3600:x}.{mac}"
    assert not verify_token(SECRET, "smspartner", "dlv-1", revived, now=ISSUED + 100 * 3600)
    # A token without an issued-at (as made before they expired) never verifies.
    assert not verify_token(SECRET, "smspartner", "dlv-1", mac, now=ISSUED)
    assert not verify_token(SECRET, "smspartner", "dlv-1", f".{mac}", now=ISSUED)
    assert not verify_token(SECRET, "smspartner", "dlv-1", f"zz.{mac}", now=ISSUED)


@pytest.mark.parametrize(
    ("public", "secret", "provider", "delivery"),
    [
        (None, SECRET, "smspartner", "d"),
        ("https://h.example", None, "smspartner", "d"),
        ("https://h.example", SECRET, "postal", "d"),  # Postal signs its own webhooks
        ("https://h.example", SECRET, "smspartner", "../../x"),
    ],
)
def test_no_url_without_the_settings_or_for_other_providers(
    public: str | None, secret: str | None, provider: str, delivery: str
) -> None:
    assert callback_url(public, secret, provider, delivery) is None


def test_the_url_is_not_in_the_context_repr() -> None:
    ctx = SendContext(delivery_id="dlv-1", idempotency_key="k", callback_url=URL)
    assert URL is not None and URL not in repr(ctx)


def _sms(ctx: SendContext) -> dict[str, Any]:
    seen, handler = recorder(httpx.Response(200, json=SMS_OK))
    driver = SmsPartnerDriver(mock_client(handler), api_key="key-sms", base_url="http://s/v1")
    driver.send(SmsMessage.model_validate({"to": ["+33612345678"], "text": "hi"}), ctx)
    body: dict[str, Any] = json.loads(seen[0].content)
    return body


def test_sms_partner_gets_url_dlr_only_when_configured() -> None:
    with_url = SendContext(delivery_id="dlv-1", idempotency_key="k", callback_url=URL)
    assert _sms(with_url)["urlDlr"] == URL
    assert "urlDlr" not in _sms(SendContext(delivery_id="dlv-1", idempotency_key="k"))


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"mode": "tts", "text": "Bonjour"}, "tts/send"),
        (
            {"mode": "voicemail", "audio_token": "abc", "notification_email": "o@example.com"},
            "campaign/send",
        ),
    ],
)
def test_voice_partner_gets_notify_url_only_when_configured(
    data: dict[str, Any], path: str
) -> None:
    message = VoiceMessage.model_validate({"to": ["+33612345678"], **data})
    for url in (URL, None):
        seen, handler = recorder(httpx.Response(200, json=VOICE_OK))
        driver = VoicePartnerDriver(mock_client(handler), api_key="key-v", base_url="http://v/v1")
        driver.send(
            message, SendContext(delivery_id="dlv-1", idempotency_key="k", callback_url=url)
        )
        assert str(seen[0].url).endswith(path)
        assert json.loads(seen[0].content).get("notifyUrl") == url


def test_settings_register_the_secret_and_check_the_url() -> None:
    secret = "tracking-secret-" + "x" * 20
    Settings(tracking_public_url="https://hooks.example.com", tracking_secret=secret)
    assert secret not in scrub(f"token key {secret}")
    Settings(tracking_public_url="http://127.0.0.1:8030", tracking_secret=secret)
    for bad in ("http://hooks.example.com", "ftp://x", "hooks.example.com"):
        with pytest.raises(ValidationError):
            Settings(tracking_public_url=bad, tracking_secret=secret)
    with pytest.raises(ValidationError, match="DELIVERY_TRACKING_SECRET"):
        Settings(tracking_public_url="https://hooks.example.com")
    with pytest.raises(ValidationError, match="32"):
        Settings(tracking_secret="short")
    # Unset variables in docker-compose arrive empty: tracking is off, not an error.
    empty = Settings(tracking_secret="", tracking_public_url="", postal_webhook_public_key="")
    assert not empty.tracking_secret and not empty.tracking_public_url


def test_settings_check_the_postal_key_and_the_dedupe_window() -> None:
    key = PostalSigner().public_key
    assert Settings(postal_webhook_public_key=key).postal_webhook_public_key == key
    with pytest.raises(ValidationError, match="Postal public key"):
        Settings(postal_webhook_public_key="nope")
    with pytest.raises(ValidationError, match="tracking_dedupe_ttl_s"):
        Settings(postal_webhook_max_age_s=7200, tracking_dedupe_ttl_s=3600)


def _pipeline_send(**settings: Any) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """One SMS through the real pipeline (in-memory stores, mock provider): the body sent,
    and the log events."""
    seen, handler = recorder(httpx.Response(200, json=SMS_OK))
    config = Settings(
        smspartner_api_key="sms-secret-key",
        smspartner_base_url="http://provider.test/smspartner/v1",
        **settings,
    )
    rt = Runtime.in_memory(config, client=mock_client(handler))
    try:
        with capture_logs() as logs:
            outcome = process(
                "sms",
                {"provider": "smspartner", "to": ["+33612345678"], "text": "Hello"},
                delivery_id="dlv-77",
                task_name="tasks.send_sms",
                rt=rt,
            )
        assert isinstance(outcome, Done) and outcome.result.status == "sent"
    finally:
        rt.close()
    body: dict[str, Any] = json.loads(seen[0].content)
    return body, [(str(e.get("event")), e) for e in logs]


def test_the_pipeline_gives_the_provider_this_deliverys_callback_url() -> None:
    secret = "pipeline-secret-" + "z" * 20
    body, logs = _pipeline_send(
        tracking_public_url="https://hooks.example.com", tracking_secret=secret
    )
    expected = callback_url("https://hooks.example.com", secret, "smspartner", "dlv-77")
    assert expected is not None and body["urlDlr"] == expected
    token = expected.rsplit("/", 1)[-1]
    assert any(name == "delivery.sent" for name, _ in logs)
    assert token not in json.dumps(logs, default=str)  # the token is never logged
    plain, _ = _pipeline_send()
    assert "urlDlr" not in plain
