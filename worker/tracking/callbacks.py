"""Per-delivery callback URLs for providers whose status push is only a hint.

SMS Partner's ``urlDlr`` (docs/providers/smspartner.md §1.4) and Voice Partner's ``notifyUrl``
(docs/providers/voicepartner.md §3.3) post a payload nobody documents, so the receiver trusts
nothing in it: the URL itself says which delivery it is about, and carries a token only this
deployment can make: ``<issued_at>.<mac>``, the send's Unix time in hex and
``HMAC-SHA256(secret, provider + "\\n" + delivery_id + "\\n" + issued_at)`` (base64url,
unpadded). The receiver recomputes it, compares in constant time and accepts it only within a
bounded window after ``issued_at`` (the tracking horizon, 48 h by default: a report can take that
long, docs/providers/smspartner.md §1.4), so a captured URL cannot be replayed for ever; then
it asks the worker to look the status up.

The token is in the URL path (``/hooks/<provider>/<delivery_id>/<token>``), so whatever query
string a provider appends cannot disturb it. The URL goes to the provider in the send request;
it is never logged (``SendContext.callback_url`` is left out of its repr, and the receiver logs
the route, not the path).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

__all__ = [
    "HINT_PROVIDERS",
    "MAX_AGE_S",
    "callback_token",
    "callback_url",
    "valid_delivery_id",
    "verify_token",
]

HINT_PROVIDERS = frozenset({"smspartner", "voicepartner"})
"""Providers whose callback the receiver takes as a hint (their payloads are [NOT FOUND])."""

_DELIVERY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def valid_delivery_id(delivery_id: str) -> bool:
    """Delivery ids as the producer makes them (UUIDs) or a caller's (bounded, URL-safe)."""
    return _DELIVERY_ID.fullmatch(delivery_id) is not None


MAX_AGE_S = 48 * 3600.0
"""How long a token is accepted after it was issued, unless the receiver says otherwise."""

FUTURE_SKEW_S = 300.0
"""A token issued this far ahead of the receiver's clock is still accepted (clocks differ)."""


def callback_token(
    secret: str, provider: str, delivery_id: str, *, issued_at: float | None = None
) -> str:
    """The token for this delivery, issued at ``issued_at`` (Unix seconds; default now)."""
    issued = f"{int(time.time() if issued_at is None else issued_at):x}"
    return f"{issued}.{_mac(secret, provider, delivery_id, issued)}"


def _mac(secret: str, provider: str, delivery_id: str, issued: str) -> str:
    mac = hmac.new(
        secret.encode("utf-8"), f"{provider}\n{delivery_id}\n{issued}".encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def verify_token(
    secret: str,
    provider: str,
    delivery_id: str,
    token: str,
    *,
    now: float | None = None,
    max_age_s: float = MAX_AGE_S,
) -> bool:
    """Constant-time check of a callback URL's token, and of its age (at most ``max_age_s``)."""
    issued, dot, mac = token.partition(".")
    if not dot or not _ISSUED.fullmatch(issued):
        return False
    expected = _mac(secret, provider, delivery_id, issued)
    if not hmac.compare_digest(expected.encode("ascii"), mac.encode("utf-8", "replace")):
        return False
    age_s = (time.time() if now is None else now) - int(issued, 16)
    return -FUTURE_SKEW_S <= age_s <= max_age_s


_ISSUED = re.compile(r"[0-9a-f]{1,12}")


def callback_url(
    public_url: str | None,
    secret: str | None,
    provider: str,
    delivery_id: str,
    *,
    issued_at: float | None = None,
) -> str | None:
    """The URL to give ``provider`` for this delivery, or None when tracking hints are off
    (no public receiver URL or no secret configured, or a provider without hints)."""
    if not public_url or not secret or provider not in HINT_PROVIDERS:
        return None
    if not valid_delivery_id(delivery_id):
        return None
    token = callback_token(secret, provider, delivery_id, issued_at=issued_at)
    return f"{public_url.rstrip('/')}/hooks/{provider}/{delivery_id}/{token}"
