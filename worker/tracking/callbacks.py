"""Per-delivery callback URLs for providers whose status push is only a hint.

SMS Partner's ``urlDlr`` (docs/providers/smspartner.md §1.4) and Voice Partner's ``notifyUrl``
(docs/providers/voicepartner.md §3.3) post a payload nobody documents, so the receiver trusts
nothing in it: the URL itself says which delivery it is about, and carries a token only this
deployment can make, ``HMAC-SHA256(secret, provider + "\\n" + delivery_id)`` (base64url, unpadded).
The receiver recomputes it and compares in constant time, then asks the worker to look the status
up.

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

__all__ = [
    "HINT_PROVIDERS",
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


def callback_token(secret: str, provider: str, delivery_id: str) -> str:
    mac = hmac.new(
        secret.encode("utf-8"), f"{provider}\n{delivery_id}".encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def verify_token(secret: str, provider: str, delivery_id: str, token: str) -> bool:
    """Constant-time check of a callback URL's token."""
    expected = callback_token(secret, provider, delivery_id)
    return hmac.compare_digest(expected.encode("ascii"), token.encode("utf-8", "replace"))


def callback_url(
    public_url: str | None, secret: str | None, provider: str, delivery_id: str
) -> str | None:
    """The URL to give ``provider`` for this delivery, or None when tracking hints are off
    (no public receiver URL or no secret configured, or a provider without hints)."""
    if not public_url or not secret or provider not in HINT_PROVIDERS:
        return None
    if not valid_delivery_id(delivery_id):
        return None
    token = callback_token(secret, provider, delivery_id)
    return f"{public_url.rstrip('/')}/hooks/{provider}/{delivery_id}/{token}"
