"""The envelope shared by SMS Partner and Mail Partner (same platform;
docs/providers/smspartner.md §1.1, docs/providers/mailpartner.md §2).

Every answer is JSON ``{"success": bool, "code": int, ...}``; ``apiKey`` comes in the JSON body
for POST and in the query string for GET. HTTP status policy (the docs give only one fact: the
validation fixture is served with HTTP 400, docs/providers/smspartner.md §1.2.2) - [INFERRED]:
- code 9 (validation, with the ``error`` list of ``{elementId, message}``) and code 90
  (malformed JSON): HTTP 400;
- code 429 (over the per-IP limit): HTTP 429;
- every other answer, refusals included (1, 10, 11, 14, 500, ...): HTTP 200.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from delivery_sandbox.providers.base import Provider
from delivery_sandbox.wire import Reply, Request, json_reply

__all__ = [
    "PROVIDER_TZ",
    "Invalid",
    "PartnerProvider",
    "Schedule",
    "check_schedule",
    "check_tag",
    "element",
    "provider_now",
]

TAG_RE = re.compile(r"^[a-z0-9_-]+$")


@dataclass(frozen=True)
class Invalid:
    """One entry of a code-9 ``error`` list."""

    field: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"elementId": element(self.field), "message": self.message}


# [INFERRED] The provider docs give the schedule fields (docs/providers/smspartner.md §1.2.2,
# docs/providers/mailpartner.md §2.2) without a time zone; the platform is French and the same
# company's Voice Partner API names Europe/Paris in its dates (docs/providers/voicepartner.md §3.2,
# audio files' created_at). The sandbox reads them in Paris time, as the worker sends them.
PROVIDER_TZ = ZoneInfo("Europe/Paris")


def element(field: str) -> str:
    """Symfony form paths as in the Go client's fixture: ``children[message].data``."""
    return f"children[{field}].data"


@dataclass(frozen=True)
class Schedule:
    when: datetime

    def as_text(self) -> str:
        return self.when.strftime("%Y-%m-%d %H:%M:00")


class PartnerProvider(Provider):
    price_eur: float = 0.0

    @abc.abstractmethod
    def routes(self) -> dict[tuple[str, str], Any]:
        """``(method, route) -> handler(request, params)``."""

    def handle(self, request: Request) -> Reply:
        handler = self.routes().get((request.method, request.route.rstrip("/")))
        if handler is None:
            return self.fail(404, "Not found", http_status=404)
        if request.method == "GET":
            params: dict[str, Any] = {k: v[0] for k, v in request.query.items()}
        else:
            try:
                parsed = request.json()
            except (ValueError, UnicodeDecodeError):
                return self.fail(90, "JSON malformé", http_status=400)
            if parsed is None:
                parsed = {}
            if not isinstance(parsed, dict):
                return self.fail(90, "JSON malformé", http_status=400)
            params = parsed
        key = params.get("apiKey")
        if key is None or key == "":
            return self.fail(1, "Clé API requise")
        if not self.env.accounts.key_is_valid(self.name, key):
            return self.fail(10, "Clé API incorrecte")
        fields = {k: v for k, v in params.items() if k != "apiKey"}
        reply: Reply = handler(request, fields)
        return reply

    def throttled(self, request: Request, retry_after: str) -> Reply:
        reply = self.fail(429, "Trop de requêtes", http_status=429)
        reply.headers["Retry-After"] = retry_after
        return reply

    def fault_reply(self, status: int) -> Reply:
        reply = json_reply(status, {"success": False, "code": status}, outcome="fault")
        return reply

    def ok(self, payload: dict[str, Any], outcome: str = "ok") -> Reply:
        return json_reply(200, {"success": True, "code": 200, **payload}, outcome)

    def fail(self, code: int, message: str, *, http_status: int = 200) -> Reply:
        payload = {"success": False, "code": code, "message": message}
        return json_reply(http_status, payload, outcome="refused")

    def invalid(self, problems: Sequence[Invalid]) -> Reply:
        payload = {"success": False, "code": 9, "error": [p.as_json() for p in problems]}
        return json_reply(400, payload, outcome="refused")

    def credits_text(self) -> str:
        """The ``balance`` field of ``/me``: money, as a string
        (docs/providers/smspartner.md §1.2.1)."""
        return f"{self.env.accounts.balance(self.name) * self.price_eur:.3f}"


def check_tag(value: Any, *, min_chars: int) -> list[Invalid]:
    """Tags are lowercase, without spaces, at most 20 characters
    (docs/providers/smspartner.md §1.2.2, docs/providers/mailpartner.md §2.2)."""
    if value is None or value == "":
        return []
    if not isinstance(value, str):
        return [Invalid("tag", "Le tag doit être une chaîne de caractères")]
    if not min_chars <= len(value) <= 20:
        return [Invalid("tag", f"Le tag doit contenir entre {min_chars} et 20 caractères")]
    if not TAG_RE.match(value):
        return [Invalid("tag", "Le tag doit être en minuscules, sans espaces")]
    return []


def provider_now() -> datetime:
    """The platform's wall clock: Paris time (PROVIDER_TZ)."""
    return datetime.now(PROVIDER_TZ)


def check_schedule(fields: dict[str, Any], now: datetime) -> tuple[list[Invalid], Schedule | None]:
    """``scheduledDeliveryDate`` (dd/mm/YYYY) + ``time`` (0-24) + ``minute`` (0-55, step 5),
    read in Paris time (PROVIDER_TZ); ``now`` is aware."""
    date_text = fields.get("scheduledDeliveryDate")
    if date_text is None or date_text == "":
        return [], None
    problems: list[Invalid] = []
    day = None
    try:
        day = datetime.strptime(str(date_text), "%d/%m/%Y")
    except ValueError:
        problems.append(Invalid("scheduledDeliveryDate", "La date n'est pas valide"))
    hour = _int_or_none(fields.get("time"))
    minute = _int_or_none(fields.get("minute"))
    if fields.get("time") in (None, ""):
        problems.append(Invalid("time", "L'heure est requise"))
    elif hour is None or not 0 <= hour <= 24:
        problems.append(Invalid("time", "L'heure doit être comprise entre 0 et 24"))
    if fields.get("minute") in (None, ""):
        problems.append(Invalid("minute", "La minute est requise"))
    elif minute is None or not 0 <= minute <= 55 or minute % 5:
        problems.append(Invalid("minute", "La minute doit être un multiple de 5 entre 0 et 55"))
    if problems or day is None or hour is None or minute is None:
        return problems, None
    when = day.replace(hour=min(hour, 23), minute=minute, tzinfo=PROVIDER_TZ)
    if hour == 24:
        when = when.replace(hour=23, minute=59)
    if when < now:
        text = f"{date_text} à {hour}:{minute:02d}"
        return [
            Invalid("scheduledDeliveryDate", f"La date ({text}) est anterieure a la date actuelle.")
        ], None
    return [], Schedule(when)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None
