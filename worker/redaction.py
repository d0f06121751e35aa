"""Redaction of secrets and personal data, shared by logs, results, errors and Flower.

Three layers, applied everywhere text leaves the worker:

* registered secrets (every configured API key) are replaced by ``[secret]`` wherever they occur;
* email addresses are masked to ``j***@example.com`` (the domain helps operators, the local part
  is personal);
* phone numbers (8 to 20 characters of digits, optionally with ``+`` and spaces, or groups of
  at most 4 digits written with ``-``, ``.``, spaces or ``(...)``: ``06-12-34-56-78``,
  ``(555) 123.4567``) keep their first 4 and last 2 digits. Digit runs glued to letters,
  hyphens or a decimal point are left alone, and so are ISO dates (``2026-11-23``) and dotted
  IPv4 addresses, so UUIDs, timestamps and decimals pass through unchanged.

Field names that always hold a secret or a body (``api_key``, ``audio_token``, ``html``,
``raw``, ...) are dropped entirely by :func:`redact_mapping`; a display ``name`` keeps only its
first letter.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

__all__ = [
    "BODY_FIELDS",
    "NAME_FIELDS",
    "SECRET_FIELDS",
    "mask_email",
    "mask_name",
    "mask_phone",
    "redact_mapping",
    "redacted_repr",
    "register_secret",
    "register_url_password",
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
        "raw",  # a whole RFC 2822 message (EmailMessage.raw)
    }
)
NAME_FIELDS = frozenset({"name", "display_name", "from_name", "to_name", "reply_to_name"})
"""Fields that hold a person's name (an address's display name): only the initial is kept."""

# The local part is taken whole (the lookbehind stops a match from starting mid-way, which also
# keeps the scan linear); \w covers internationalised addresses.
_EMAIL_RE = re.compile(r"(?<![\w.%+\-])[\w.%+\-]+@(?:[\w\-]+\.)+[^\W\d_]{2,63}")
# Not glued to letters, digits, "-" or "." on the left, nor to letters, digits, "-" or a decimal
# part on the right: "3fa85f64-5717-..." and "2026-11-23T04:08:27Z" are not phone numbers, but
# "call +33612345678." is.
_PHONE_RE = re.compile(r"(?<![\w.\-])\+?\d[\d ]{6,18}\d(?![\w\-]|[.,]\d)")
# Written phone numbers: the same edges (and not followed by ":", a clock time), starting with a
# digit or a "(area)" group, then digits, spaces, "-", "." and parentheses. A candidate is only
# masked if _is_written_phone says so; otherwise the plain pattern above runs inside it.
_WRITTEN_PHONE_RE = re.compile(
    r"(?<![\w.\-])\+?(?:\(\d{1,4}\)|\d)[\d ().\-]{5,24}\d(?![\w\-:]|[.,]\d)"
)
_DIGIT_GROUP_RE = re.compile(r"\d+")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_IPV4_RE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
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


def _is_written_phone(candidate: str) -> bool:
    """8 to 15 digits in groups of at most 4 (``06-12-34-56-78``), not a date nor an IPv4.

    The group bound keeps decimals (``12345678.90``) and long ids out; plain runs of digits and
    spaces are :data:`_PHONE_RE`'s, which allows longer groups.
    """
    if _DATE_RE.fullmatch(candidate) or _IPV4_RE.fullmatch(candidate):
        return False
    if "--" in candidate or ".." in candidate:
        return False
    groups = _DIGIT_GROUP_RE.findall(candidate)
    digits = sum(len(g) for g in groups)
    return 8 <= digits <= 15 and max(len(g) for g in groups) <= 4


def _mask_written(match: re.Match[str]) -> str:
    candidate = match.group(0)
    if _is_written_phone(candidate):
        return mask_phone(candidate)
    return _PHONE_RE.sub(lambda m: mask_phone(m.group(0)), candidate)


def scrub(text: str) -> str:
    """Hide registered secrets, mask email addresses and phone numbers in free text."""
    pattern = _secret_re
    if pattern is not None:
        text = pattern.sub("[secret]", text)
    text = _EMAIL_RE.sub(lambda m: mask_email(m.group(0)), text)
    return _WRITTEN_PHONE_RE.sub(_mask_written, text)


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
        or squashed.endswith("token")  # audio_token, tracking_token, ...
        or squashed.startswith("token")  # Voice Partner's tokenAudio
    )


def mask_name(name: str) -> str:
    """A display name reduced to its initial: ``Ada Lovelace`` -> ``A***``."""
    stripped = name.strip()
    return f"{stripped[:1]}***" if stripped else name


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
        elif name.lower() in NAME_FIELDS and isinstance(value, str):
            out[name] = mask_name(value)
        else:
            out[name] = _redact_value(value, _depth)
    return out


def register_url_password(url: str | None) -> None:
    """Register the password of each URL in ``url`` (``;``-separated for Sentinel) as a secret.

    ``safe_url`` hides it where a URL is printed whole; this hides it anywhere else it turns up
    (a redis-py error that quotes it, a traceback's repr of a connection's arguments).
    """
    if not url:
        return
    for chunk in url.split(";"):
        try:
            password = urlsplit(chunk.strip()).password
        except ValueError:
            continue
        if password:
            register_secret(password)
            register_secret(unquote(password))


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
