"""Voice Partner: ``POST /tts/send``, ``POST /campaign/send``, ``GET /me/{apiKey}``,
``DELETE /campaign/cancel/{apiKey}/{campaignId}`` (docs/providers/voicepartner.md §3).

``apiKey`` travels in the JSON body for POST and in the URL path for GET/DELETE
(docs/providers/voicepartner.md §3.1).

The docs give the string error codes (docs/providers/voicepartner.md §3.3) but not the error body or
HTTP statuses. Sandbox choices ([INFERRED] / [NOT FOUND] in docs/providers/voicepartner.md):
- errors are ``{"success": false, "error": "<CODE>"}`` (the Ruby gem reads ``error``), HTTP 400;
- a missing or unknown ``apiKey`` is HTTP 401 ``INVALID_API_KEY`` (the cancel endpoint documents
  401 "unauthorized"); a body that is not a JSON object is HTTP 400 ``INVALID_JSON``;
- over a limit (per IP: campaign 5/min, tts and campaign 2000/h each, /me 5/min) is HTTP 429
  ``TOO_MANY_REQUESTS`` with ``Retry-After``;
- codes the docs do not name: ``TEXT_REQUIRED`` (tts without ``text`` or ``tokenAudio``),
  ``LANG_REQUIRED`` (tts ``text`` without ``lang``), ``EMAIL_FOR_NOTIFICATION_REQUIRED``,
  ``SCHEDULED_DATE_INVALID``;
- checks run in the documented code order and answer the first failure only, except that a
  ``sender`` that is not a phone number is ``SENDER_INVALID`` before it can be
  ``SENDER_NOT_AUTHORIZED``; an audio token starting with ``missing`` is
  ``AUDIO_FILE_NOT_FOUND``;
- a voicemail ``sender`` must be one of the account's validated callback numbers ("validated
  beforehand on my.voicepartner.fr", docs/providers/voicepartner.md §3.2), else
  ``SENDER_NOT_AUTHORIZED`` (docs/providers/voicepartner.md §3.3); the list is
  ``SandboxConfig.voicepartner_senders`` / ``--voicepartner-sender`` / ``/_admin/settings``;
- cancel (docs/providers/voicepartner.md §3.2) answers ``{"success", "campaignId", "assignedCredit",
  "currency"}`` for a campaign whose ``scheduledDate`` is still ahead, and refunds its credits; the
  documented HTTP codes: 401 unknown key, 404 unknown campaign, 400 a campaign that is not
  scheduled, already due or already cancelled (error bodies as above: ``CAMPAIGN_NOT_FOUND``,
  ``CAMPAIGN_NOT_CANCELLABLE``, names [INFERRED]);
- one credit per number; ``cost`` is 0.10 EUR per number for TTS and 0.15 for voicemail (the
  doc examples); ``/me`` reports the credits left as the ``credit`` string.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

from delivery_sandbox.providers.base import EMAIL_RE, Env, Provider
from delivery_sandbox.providers.partner import PROVIDER_TZ
from delivery_sandbox.providers.smspartner import normalize_number
from delivery_sandbox.ratelimit import Window
from delivery_sandbox.wire import AcceptedMessage, Reply, Request, json_reply

__all__ = ["VoicePartnerProvider"]

MAX_NUMBERS = 500
CANCEL_PREFIX = "/campaign/cancel/"
PRICE_EUR = {"tts": 0.10, "campaign": 0.15}
ID_ALPHABET = string.ascii_letters + string.digits


class VoicePartnerProvider(Provider):
    name = "voicepartner"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self._campaigns: dict[str, dict[str, Any]] = {}
        self._senders: set[str] = set()
        self._load_settings()

    def _load_settings(self) -> None:
        senders = (normalize_number(s) for s in self.env.config.voicepartner_senders)
        self._senders = {s for s in senders if s is not None}

    def reset(self) -> None:
        """Forget campaigns; restore the configured validated senders."""
        with self.lock:
            self._campaigns.clear()
            self._load_settings()

    def settings(self) -> dict[str, Any]:
        with self.lock:
            return {"senders": sorted(self._senders)}

    def configure(self, changes: dict[str, Any]) -> None:
        """``{"senders": ["+33123456789", ...]}`` replaces the validated callback numbers."""
        if set(changes) - {"senders"}:
            raise ValueError("voicepartner settings: only 'senders'")
        raw = changes.get("senders", sorted(self._senders))
        if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
            raise ValueError("voicepartner senders must be a list of phone numbers")
        numbers = [normalize_number(n) for n in raw]
        if any(n is None for n in numbers):
            raise ValueError("voicepartner senders must be valid phone numbers")
        with self.lock:
            self._senders = {n for n in numbers if n is not None}

    def sender_allowed(self, number: str) -> bool:
        with self.lock:
            return number in self._senders

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
        # The key travels in the path for GET/DELETE (docs/providers/voicepartner.md §3.1); it must
        # not reach the records.
        if route.startswith("/me/"):
            return "/me/{apiKey}"
        if route.startswith(CANCEL_PREFIX):
            campaign = route.removeprefix(CANCEL_PREFIX).partition("/")[2]
            return CANCEL_PREFIX + "{apiKey}/" + campaign
        return route

    def handle(self, request: Request) -> Reply:
        route = request.route.rstrip("/")
        if request.method == "GET" and route.startswith("/me/"):
            return self._me(route.removeprefix("/me/"))
        if request.method == "DELETE" and route.startswith(CANCEL_PREFIX):
            key, _, campaign_id = route.removeprefix(CANCEL_PREFIX).partition("/")
            return self._cancel(key, campaign_id)
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
        problem = _check(fields, mode, numbers, self.sender_allowed)
        if problem is not None:
            return _error(problem, 400)
        if not self.env.accounts.try_charge(self.name, len(numbers)):
            return _error("NOT_CREDIT", 400)
        campaign_id = "".join(secrets.choice(ID_ALPHABET) for _ in range(10))
        scheduled = fields.get("scheduledDate")
        due = (
            # [INFERRED] Paris time, as the Partner platform (delivery_sandbox.providers.partner).
            datetime.strptime(scheduled, "%Y-%m-%d %H:%M:%S")
            .replace(tzinfo=PROVIDER_TZ)
            .timestamp()
            if isinstance(scheduled, str) and scheduled
            else self.env.now()
        )
        with self.lock:
            self._campaigns[campaign_id] = {
                "due": due,
                "units": len(numbers),
                "cost": round(len(numbers) * PRICE_EUR[mode], 3),
                "cancelled": False,
            }
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
        # Voice Partner documents no status lookup and no notifyUrl payload
        # (docs/providers/voicepartner.md §3.3): the timeline only feeds the callback senders
        # ([INFERRED] words: Waiting → Delivered).
        record = {
            "provider": self.name,
            "message_id": campaign_id,
            "fields": fields,
            "recipients": numbers,
        }
        for number in numbers:
            self.env.timeline.accept(
                self.name,
                campaign_id,
                number,
                [
                    (due, "Waiting", None),
                    (due + self.env.config.sms_delivery_delay_s, "Delivered", None),
                ],
                record,
            )
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

    def _cancel(self, key: str, campaign_id: str) -> Reply:
        """``DELETE /campaign/cancel/{apiKey}/{campaignId}`` (docs/providers/voicepartner.md §3.2):
        200, 400, 401, 404."""
        if not self.env.accounts.key_is_valid(self.name, key):
            return _error("INVALID_API_KEY", 401)
        with self.lock:
            campaign = self._campaigns.get(campaign_id)
            if campaign is None:
                return _error("CAMPAIGN_NOT_FOUND", 404)
            if campaign["cancelled"] or campaign["due"] <= self.env.now():
                return _error("CAMPAIGN_NOT_CANCELLABLE", 400)
            campaign["cancelled"] = True
            # Nothing more happens to it: no delivery, no push saying it was delivered.
            self.env.timeline.cancel(self.name, campaign_id)
            self.env.accounts.refund(self.name, campaign["units"])
        payload = {
            "success": True,
            "campaignId": campaign_id,
            "assignedCredit": f"{campaign['cost']:g}",
            "currency": "EUR",
        }
        return json_reply(200, payload)


def _check(
    fields: dict[str, Any],
    mode: str,
    numbers: list[str],
    sender_allowed: Callable[[str], bool],
) -> str | None:
    """The first failing check, in the order of the documented code list
    (docs/providers/voicepartner.md §3.3)."""
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
    if mode == "campaign" and sender not in (None, ""):
        sender_number = normalize_number(str(sender))
        if sender_number is None:
            return "SENDER_INVALID"
        if not sender_allowed(sender_number):
            # docs/providers/voicepartner.md §3.2: validated beforehand on the account
            return "SENDER_NOT_AUTHORIZED"
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
    """``YYYY-mm-dd H:m:00`` (docs/providers/voicepartner.md §3.2): whole minutes, the seconds
    are ``00``."""
    if not isinstance(value, str) or not re.fullmatch(
        r"\d{4}-\d{2}-\d{2} \d{1,2}:\d{1,2}:00", value
    ):
        return False
    try:
        datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return False
    return True


def _error(code: str, status: int, *, headers: dict[str, str] | None = None) -> Reply:
    return json_reply(status, {"success": False, "error": code}, outcome="refused", headers=headers)
