"""Voice Partner: ``POST /tts/send``, ``POST /campaign/send``, ``GET /me/{apiKey}`` (§3).

The docs give the string error codes (§3.3) but not the error body or HTTP statuses. Sandbox
choices ([INFERRED] / [NOT FOUND] in providers.md):
- errors are ``{"success": false, "error": "<CODE>"}`` (the Ruby gem reads ``error``), HTTP 400;
- a missing or unknown ``apiKey`` is HTTP 401 ``INVALID_API_KEY`` (the cancel endpoint documents
  401 "unauthorized"); a body that is not a JSON object is HTTP 400 ``INVALID_JSON``;
- over a limit (per IP: campaign 5/min, tts and campaign 2000/h each, /me 5/min) is HTTP 429
  ``TOO_MANY_REQUESTS`` with ``Retry-After``;
- codes the docs do not name: ``TEXT_REQUIRED`` (tts without ``text`` or ``tokenAudio``),
  ``LANG_REQUIRED`` (tts ``text`` without ``lang``), ``EMAIL_FOR_NOTIFICATION_REQUIRED``,
  ``SCHEDULED_DATE_INVALID``;
- checks run in the documented code order and answer the first failure only; an audio token
  starting with ``missing`` is ``AUDIO_FILE_NOT_FOUND``;
- one credit per number; ``cost`` is 0.10 EUR per number for TTS and 0.15 for voicemail (the
  doc examples); ``/me`` reports the credits left as the ``credit`` string.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

from delivery_sandbox.providers.base import EMAIL_RE, Provider
from delivery_sandbox.providers.smspartner import normalize_number
from delivery_sandbox.ratelimit import Window
from delivery_sandbox.wire import AcceptedMessage, Reply, Request, json_reply

__all__ = ["VoicePartnerProvider"]

MAX_NUMBERS = 500
PRICE_EUR = {"tts": 0.10, "campaign": 0.15}
ID_ALPHABET = string.ascii_letters + string.digits


class VoicePartnerProvider(Provider):
    name = "voicepartner"

    def reset(self) -> None:
        """Nothing to forget: campaigns are only kept in the recorder."""

    def windows(self, request: Request) -> Sequence[Window]:
        limits = self.env.config.limits
        route = request.route.rstrip("/")
        if route == "/tts/send":
            return (Window("tts-1h", limits.voicepartner_per_hour, 3600.0),)
        if route == "/campaign/send":
            return (
                Window("campaign-1m", limits.voicepartner_campaign_per_min, 60.0),
                Window("campaign-1h", limits.voicepartner_per_hour, 3600.0),
            )
        if route.startswith("/me/"):
            return (Window("me-1m", limits.voicepartner_me_per_min, 60.0),)
        return ()

    def throttled(self, request: Request, retry_after: str) -> Reply:
        return _error("TOO_MANY_REQUESTS", 429, headers={"Retry-After": retry_after})

    def fault_reply(self, status: int) -> Reply:
        # Same platform as SMS/Mail Partner: the injected status with {"success", "code"}.
        return json_reply(status, {"success": False, "code": status}, outcome="fault")

    def public_route(self, route: str) -> str:
        # The key travels in the path for GET (§3.1); it must not reach the records.
        return "/me/{apiKey}" if route.startswith("/me/") else route

    def handle(self, request: Request) -> Reply:
        route = request.route.rstrip("/")
        if request.method == "GET" and route.startswith("/me/"):
            return self._me(route.removeprefix("/me/"))
        if request.method != "POST" or route not in ("/tts/send", "/campaign/send"):
            return _error("NOT_FOUND", 404)
        try:
            body = request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return _error("INVALID_JSON", 400)
        if not self.env.accounts.key_is_valid(self.name, body.get("apiKey")):
            return _error("INVALID_API_KEY", 401)
        fields = {k: v for k, v in body.items() if k != "apiKey"}
        mode = "tts" if route == "/tts/send" else "campaign"
        numbers: list[str] = []
        problem = _check(fields, mode, numbers)
        if problem is not None:
            return _error(problem, 400)
        if not self.env.accounts.try_charge(self.name, len(numbers)):
            return _error("NOT_CREDIT", 400)
        campaign_id = "".join(secrets.choice(ID_ALPHABET) for _ in range(10))
        payload: dict[str, Any] = {
            "success": True,
            "campaignId": campaign_id,
            "cost": round(len(numbers) * PRICE_EUR[mode], 3),
            "currency": "EUR",
            "nbSms": len(numbers),
        }
        if mode == "tts" and isinstance(fields.get("lang"), str):
            payload["lang"] = fields["lang"]
        if fields.get("scheduledDate"):
            payload["scheduledDate"] = fields["scheduledDate"]
        reply = json_reply(200, payload, outcome="accepted")
        reply.message_id = campaign_id
        reply.message = AcceptedMessage(
            message_id=campaign_id,
            recipients=numbers,
            fields=fields,
            units=len(numbers),
            extra={"mode": mode},
        )
        return reply

    def _me(self, key: str) -> Reply:
        if not self.env.accounts.key_is_valid(self.name, key):
            return _error("INVALID_API_KEY", 401)
        balance = self.env.accounts.balance(self.name)
        payload = {
            "success": True,
            "credit": str(balance),
            "currency": "€",
            "details": {"voice": {"message": balance}},
        }
        return json_reply(200, payload)


def _check(fields: dict[str, Any], mode: str, numbers: list[str]) -> str | None:
    """The first failing check, in the order of the documented code list (§3.3)."""
    raw = fields.get("phoneNumbers")
    if raw is None or raw == "" or raw == []:
        return "PHONE_NUMBER_REQUIRED"
    parts = [p.strip() for p in raw.split(",") if p.strip()] if isinstance(raw, str) else None
    if parts is not None and len(parts) > MAX_NUMBERS:
        return "PHONE_NUMBER_SIZE_ERROR"
    token = fields.get("tokenAudio")
    if mode == "campaign":
        if not isinstance(token, str) or not token:
            return "TOKEN_AUDIO_REQUIRED"
        email = fields.get("emailForNotification")
        if not isinstance(email, str) or not EMAIL_RE.match(email):
            return "EMAIL_FOR_NOTIFICATION_REQUIRED"
    else:
        text = fields.get("text")
        has_token = isinstance(token, str) and token != ""
        if not has_token and not (isinstance(text, str) and text.strip()):
            return "TEXT_REQUIRED"
        if not has_token and not (isinstance(fields.get("lang"), str) and fields["lang"]):
            return "LANG_REQUIRED"
    notify = fields.get("notifyUrl")
    if notify not in (None, "") and not _is_url(notify):
        return "NOTIFY_URL_INVALID"
    sender = fields.get("sender")
    if mode == "campaign" and sender not in (None, "") and normalize_number(str(sender)) is None:
        return "SENDER_INVALID"
    if isinstance(token, str) and token.lower().startswith("missing"):
        return "AUDIO_FILE_NOT_FOUND"
    if parts is None or not parts:
        return "DESTINATION_INVALID"
    for part in parts:
        number = normalize_number(part)
        if number is None:
            return "DESTINATION_INVALID"
        numbers.append(number)
    scheduled = fields.get("scheduledDate")
    if scheduled not in (None, "") and not _is_date(scheduled):
        return "SCHEDULED_DATE_INVALID"
    numbers[:] = list(dict.fromkeys(numbers))
    return None


def _is_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parsed = urlparse(value)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


def _is_date(value: Any) -> bool:
    """``YYYY-mm-dd H:m:00`` (§3.2)."""
    if not isinstance(value, str) or not re.fullmatch(
        r"\d{4}-\d{2}-\d{2} \d{1,2}:\d{1,2}:\d{2}", value
    ):
        return False
    try:
        datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return False
    return True


def _error(code: str, status: int, *, headers: dict[str, str] | None = None) -> Reply:
    return json_reply(status, {"success": False, "error": code}, outcome="refused", headers=headers)
