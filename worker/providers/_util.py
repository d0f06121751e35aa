"""Small readers for provider answers, shared by every provider module.

Provider answers are untrusted: each reader accepts only the documented shape and returns
``None`` (or ``""``) for anything else, so a hostile answer is classified, never a crash.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from worker.models import Address

__all__ = [
    "address_object",
    "as_float",
    "as_int",
    "json_or_empty",
    "provider_id",
    "short_text",
]


def provider_id(value: Any) -> str | None:
    """A provider id as text: a non-empty string or an integer (never a bool), bounded."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    text = str(value).strip()
    return text[:200] or None


def short_text(value: Any, limit: int = 300) -> str:
    """A string field of an answer, bounded; ``""`` when it is not a string."""
    return value[:limit] if isinstance(value, str) else ""


def as_int(value: Any) -> int | None:
    """An integer or a string of digits (never a bool)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def as_float(value: Any) -> float | None:
    """A number or a numeric string (never a bool); prices and credits come as either."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def address_object(address: Address) -> dict[str, str]:
    """``{"email", "name"}`` with the name only when known (EmailMassivo
    docs/providers/emailmassivo.md §5.2, Mail Partner docs/providers/mailpartner.md §2.2: whether an
    empty name is accepted is not stated)."""
    out = {"email": address.email}
    if address.name:
        out["name"] = address.name
    return out


def json_or_empty(response: httpx.Response) -> dict[str, Any]:
    """The body as a JSON object, or ``{}`` when it is not one (error bodies of unknown shape)."""
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
