"""Quiet hours per channel: a message is not sent outside its channel's window.

``DELIVERY_QUIET_HOURS`` (JSON, optional) maps a channel to its window, for example::

    {"sms": {"window": "08:00-20:00", "tz": "recipient", "closed_days": ["sun"]},
     "voice": {"window": "09:00-19:00", "tz": "Europe/Paris"}}

* ``window``: ``HH:MM-HH:MM``, the opening time before the closing time (same day);
* ``tz``: an IANA zone (the sender's), or ``recipient``: each phone number's country zone
  (``phonenumbers``; a country with several zones counts all of them, the message waits until
  the window is open in every one; a number without a known zone, and email, use ``fallback_tz``,
  default ``Europe/Paris``);
* ``closed_days``: days with no window at all (``mon`` … ``sun``).

A message that would leave outside the window (now, or at its ``send_at``) gets the next
opening as its time: it is held like any scheduled message (``worker.delivery.pipeline``), and
expires if that is past its deadline. This also keeps marketing SMS inside SMS Partner's legal
window (08:00-20:00 Paris time, not on Sundays: docs/providers/smspartner.md §1.2.2, §1.3 codes
22/23) instead of waiting for the provider's refusal; a public holiday still comes back as code 23,
and that message is then held on the schedule until the next slot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezone

from worker.models import Message, SmsMessage, VoiceMessage

__all__ = ["QuietHours", "next_open", "parse_quiet_hours", "quiet_due"]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class QuietHours:
    opens: time
    closes: time
    tz: str
    """An IANA zone, or ``recipient``."""
    closed_days: frozenset[int]
    fallback_tz: str = "Europe/Paris"

    def zones(self, message: Message) -> list[ZoneInfo]:
        if self.tz != "recipient":
            return [ZoneInfo(self.tz)]
        numbers = list(message.to) if isinstance(message, (SmsMessage, VoiceMessage)) else []
        names: set[str] = set()
        for number in numbers:
            try:
                found = phone_timezone.time_zones_for_number(phonenumbers.parse(number, None))
            except phonenumbers.NumberParseException:
                found = ()
            names.update(z for z in found if z != "Etc/Unknown")
        if not names:
            names = {self.fallback_tz}
        return [ZoneInfo(n) for n in sorted(names)]

    def open_at(self, ts: float, zone: ZoneInfo) -> float:
        """The earliest time at or after ``ts`` when the window is open in ``zone``."""
        local = datetime.fromtimestamp(ts, zone)
        day = local.date()
        for _ in range(8):
            if day.weekday() not in self.closed_days:
                start = datetime.combine(day, self.opens, tzinfo=zone)
                end = datetime.combine(day, self.closes, tzinfo=zone)
                if local < end:
                    return max(ts, start.timestamp())
            day += timedelta(days=1)
            local = datetime.combine(day, time.min, tzinfo=zone)
        raise ValueError("quiet hours: every day is closed")


def next_open(hours: QuietHours, message: Message, ts: float) -> float:
    """The earliest time at or after ``ts`` when the window is open for every recipient."""
    zones = hours.zones(message)
    at = ts
    for _ in range(len(zones) * 8 + 1):
        moved = [hours.open_at(at, z) for z in zones]
        latest = max(moved)
        if latest == at:
            return at
        at = latest
    return at


def quiet_due(quiet_hours: str, message: Message, ts: float) -> float | None:
    """The next opening when ``ts`` is outside the message's channel window, else ``None``."""
    hours = parse_quiet_hours(quiet_hours).get(message.channel)
    if hours is None:
        return None
    due = next_open(hours, message, ts)
    return due if due > ts else None


@lru_cache(maxsize=8)
def parse_quiet_hours(raw: str) -> dict[str, QuietHours]:
    """``DELIVERY_QUIET_HOURS`` → channel → :class:`QuietHours`; ``ValueError`` naming the
    problem for anything else."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise ValueError("DELIVERY_QUIET_HOURS is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("DELIVERY_QUIET_HOURS must map a channel to its window")
    out: dict[str, QuietHours] = {}
    for channel, spec in data.items():
        if channel not in ("email", "sms", "voice") or not isinstance(spec, dict):
            raise ValueError(f"DELIVERY_QUIET_HOURS: {channel!r} is not email, sms or voice")
        out[channel] = _parse_one(channel, spec)
    return out


def _parse_one(channel: str, spec: dict[str, object]) -> QuietHours:
    window = spec.get("window")
    try:
        opens_text, closes_text = str(window).split("-")
        opens, closes = time.fromisoformat(opens_text), time.fromisoformat(closes_text)
    except ValueError:
        raise ValueError(f"DELIVERY_QUIET_HOURS.{channel}.window: use HH:MM-HH:MM") from None
    if not opens < closes:
        raise ValueError(f"DELIVERY_QUIET_HOURS.{channel}.window: opens after it closes")
    tz = str(spec.get("tz", "recipient"))
    fallback = str(spec.get("fallback_tz", "Europe/Paris"))
    for name in {tz, fallback} - {"recipient"}:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"DELIVERY_QUIET_HOURS.{channel}: unknown time zone {name!r}"
            ) from None
    days = spec.get("closed_days", [])
    if not isinstance(days, list) or any(d not in _DAYS for d in days):
        raise ValueError(f"DELIVERY_QUIET_HOURS.{channel}.closed_days: use mon … sun")
    if len(set(days)) == 7:
        raise ValueError(f"DELIVERY_QUIET_HOURS.{channel}.closed_days: every day is closed")
    return QuietHours(
        opens=opens,
        closes=closes,
        tz=tz,
        closed_days=frozenset(_DAYS.index(str(d)) for d in days),
        fallback_tz=fallback,
    )
