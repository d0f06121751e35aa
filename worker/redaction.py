"""Redaction of secrets and personal data, shared by logs, results, errors and Flower.

Three layers, applied everywhere text leaves the worker:

* registered secrets (every configured API key) are replaced by ``[secret]`` wherever they occur;
* email addresses are masked to ``j***@example.com`` (the domain helps operators, the local part
  is personal);
* phone numbers (runs of 8+ digits, optionally with ``+`` and spaces) keep their first 4 and
  last 2 digits. Digit runs glued to letters, hyphens or a decimal point are left alone, so
  UUIDs, ISO timestamps and decimals pass through unchanged.

Field names that always hold a secret or a body (``api_key``, ``html``, ``text``, ...) are
dropped entirely by :func:`redact_mapping`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = [
    "BODY_FIELDS",
    "SECRET_FIELDS",
    "mask_email",
    "mask_phone",
    "redact_mapping",
    "redacted_repr",
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

# The local part is taken whole (the lookbehind stops a match from starting mid-way, which also
# keeps the scan linear); \w covers internationalised addresses.
_EMAIL_RE = re.compile(r"(?<![\w.%+\-])[\w.%+\-]+@(?:[\w\-]+\.)+[^\W\d_]{2,63}")
# Not glued to letters, digits, "-" or "." on the left, nor to letters, digits, "-" or a decimal
# part on the right: "3fa85f64-5717-..." and "2026-11-23T04:08:27Z" are not phone numbers, but
# "call +33612345678." is.
_PHONE_RE = re.compile(r"(?<![\w.\-])\+?\d[\d ]{6,18}\d(?![\w\-]|[.,]\d)")
_MAX_STRING = 2000
_MAX_ITEMS = 50
_MAX_DEPTH = 6

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secret_re: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Remember a secret so :func:`scrub` hides it wherever it appears."""
    global _secret_re
    if not value or len(value) < 4:
        return
    # Also the URL-encoded forms: Partner APIs take the key in GET query strings
    # (docs/providers/smspartner.md §1.1), and a logged URL carries it percent-encoded.
    forms = {value, quote(value, safe=""), quote_plus(value)}
    with _secrets_lock:
        if forms <= _secrets:
            return
        _secrets.update(forms)
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
    if depth > _MAX_DEPTH:
        return "[…]"
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        # Scrub first, then cut: cutting first could split a secret or an address and leave
        # its head unrecognised in the output.
        return scrub(value)[:_MAX_STRING]
    if isinstance(value, Mapping):
        return redact_mapping(value, _depth=depth + 1)
    if isinstance(value, (list, tuple, set, frozenset)):
        head = value[:_MAX_ITEMS] if isinstance(value, (list, tuple)) else list(value)[:_MAX_ITEMS]
        items = [_redact_value(v, depth + 1) for v in head]
        if len(value) > _MAX_ITEMS:
            items.append(f"[… {len(value) - _MAX_ITEMS} more]")
        return items
    return value


def _is_secret_field(name: str) -> bool:
    lowered = name.lower()
    squashed = lowered.replace("-", "").replace("_", "")
    return (
        lowered in SECRET_FIELDS
        or "apikey" in squashed
        or "secret" in squashed
        or "password" in squashed
        or "authorization" in squashed
    )


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, bytes, list, tuple, dict)) and not value)


def redact_mapping(data: Mapping[Any, Any], *, _depth: int = 0) -> dict[str, Any]:
    """A copy of ``data`` safe to log or show: secrets and bodies dropped, addresses masked."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key)
        if _is_secret_field(name):
            out[name] = "[secret]"
        elif name.lower() in BODY_FIELDS:
            out[name] = value if _is_empty(value) else "[redacted]"
        else:
            out[name] = _redact_value(value, _depth)
    return out


def safe_url(url: str) -> str:
    """A URL fit to print: any password in its user-info is replaced (``redis://:***@host``)."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def redacted_repr(channel: str, message: dict[str, Any]) -> str:
    """What Flower shows for a message: its shape, never bodies or full addresses."""
    provider = message.get("provider")
    if provider is not None and not (isinstance(provider, str) and len(provider) <= 40):
        provider = "[invalid]"  # a by-name producer may put anything here
    summary: dict[str, Any] = {"provider": provider}
    to = message.get("to")
    if isinstance(to, list):
        masked = []
        for item in to[:5]:
            if isinstance(item, dict) and isinstance(item.get("email"), str):
                masked.append(mask_email(item["email"]))
            elif isinstance(item, str):
                masked.append(mask_phone(item) if "@" not in item else mask_email(item))
        summary["to"] = masked + ([f"+{len(to) - 5} more"] if len(to) > 5 else [])
    if channel == "voice":
        mode = message.get("mode")
        valid = mode is None or (isinstance(mode, str) and len(mode) <= 20)
        summary["mode"] = mode if valid else "[invalid]"
    for flag in ("html", "text", "template", "raw", "attachments"):
        if message.get(flag):
            summary[flag] = "[redacted]"
    return f"({json.dumps(summary, ensure_ascii=False)},)"
