"""Redaction of secrets and personal data, shared by logs, results, errors and Flower.

Three layers, applied everywhere text leaves the worker:

* registered secrets (every configured API key) are replaced by ``[secret]`` wherever they occur;
* email addresses are masked to ``j***@example.com`` (the domain helps operators, the local part
  is personal);
* phone numbers (runs of 8+ digits, optionally with ``+``) keep their first 4 and last 2 digits.

Field names that always hold a secret or a body (``api_key``, ``html``, ``text``, ...) are
dropped entirely by :func:`redact_mapping`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BODY_FIELDS",
    "SECRET_FIELDS",
    "mask_email",
    "mask_phone",
    "redact_mapping",
    "register_secret",
    "scrub",
]

SECRET_FIELDS = frozenset(
    {
        "api_key",
        "apikey",
        "x-api-key",
        "x-server-api-key",
        "authorization",
        "password",
        "secret",
        "token",
    }
)
BODY_FIELDS = frozenset(
    {
        "html",
        "text",
        "preview_text",
        "subject",
        "attachments",
        "content",
        "data",
        "message",
        "params",
        "headers",
        "htmlcontent",
        "plain_body",
        "html_body",
    }
)

_EMAIL_RE = re.compile(r"([A-Za-z0-9._%+\-]{1,64})@([A-Za-z0-9.\-]{1,255}\.[A-Za-z]{2,63})")
_PHONE_RE = re.compile(r"(?<![\w.])\+?\d[\d ]{6,18}\d(?![\w.])")

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secret_re: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Remember a secret so :func:`scrub` hides it wherever it appears."""
    global _secret_re
    if not value or len(value) < 4:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets.add(value)
        alternatives = sorted(_secrets, key=len, reverse=True)
        _secret_re = re.compile("|".join(re.escape(s) for s in alternatives))


def mask_email(address: str) -> str:
    local, _, domain = address.partition("@")
    if not domain:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_phone(number: str) -> str:
    digits = re.sub(r"\D", "", number)
    if len(digits) < 6:
        return "***"
    prefix = "+" if number.strip().startswith("+") else ""
    return f"{prefix}{digits[:4]}{'*' * (len(digits) - 6)}{digits[-2:]}"


def scrub(text: str) -> str:
    """Hide registered secrets, mask email addresses and phone numbers in free text."""
    pattern = _secret_re
    if pattern is not None:
        text = pattern.sub("[secret]", text)
    text = _EMAIL_RE.sub(lambda m: mask_email(m.group(0)), text)
    return _PHONE_RE.sub(lambda m: mask_phone(m.group(0)), text)


def _redact_value(value: Any, depth: int) -> Any:
    if depth > 6:
        return "[…]"
    if isinstance(value, str):
        return scrub(value[:2000])
    if isinstance(value, Mapping):
        return redact_mapping(value, _depth=depth + 1)
    if isinstance(value, (list, tuple)):
        items = [_redact_value(v, depth + 1) for v in list(value)[:50]]
        if len(value) > 50:
            items.append(f"[… {len(value) - 50} more]")
        return items
    return value


def redact_mapping(data: Mapping[Any, Any], *, _depth: int = 0) -> dict[str, Any]:
    """A copy of ``data`` safe to log or show: secrets and bodies dropped, addresses masked."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key)
        lowered = name.lower()
        if lowered in SECRET_FIELDS or "api_key" in lowered or "apikey" in lowered:
            out[name] = "[secret]"
        elif lowered in BODY_FIELDS:
            out[name] = "[redacted]" if value not in (None, "", [], {}) else value
        else:
            out[name] = _redact_value(value, _depth)
    return out
