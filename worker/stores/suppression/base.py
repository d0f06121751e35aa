"""Suppression: recipients that no provider of a channel is asked to send to again.

A hard bounce, a complaint, an unsubscribe or an SMS STOP is remembered per *channel*, not per
provider: the worker fails over between providers, and without one shared list an address that
hard-bounced at Postal is sent to again by EmailMassivo. ``docs/suppression.md`` is the
operator's page.

**Keyed by a hash, never the address.** :class:`RecipientHasher` turns a recipient into its key:
e-mail addresses lower-cased (the whole address: providers treat it case-insensitively), phone
numbers as E.164. With a deployment secret the key is HMAC-SHA256 under it, so a copy of Redis
cannot be checked against a list of known addresses; without one it is SHA-256 (still no plain
address in Redis, but a known address can be tested). The digest is cut to 128 bits (32 hex
characters): collisions stay out of reach (2^64 entries for even odds) at half the memory.
An entry keeps only a masked form (``j***@example.com``) for operators.

**Entries.** Each has a reason (:data:`REASONS`), a source (:data:`SOURCES`), the provider
that reported it, its time and an optional expiry. A later entry replaces an earlier one,
except that a permanent entry is never replaced by an expiring one (a soft bounce does not
shorten a hard bounce).

**Soft bounces** count per recipient within ``SoftBouncePolicy.window_s``; the
``threshold``-th one suppresses the recipient for ``suppress_s``.

:class:`MemorySuppressionStore` is the in-process stub; :class:`RedisSuppressionStore` keeps
one hash per channel. ``tests/stores/test_suppression_contract.py`` runs both.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "CHANNELS",
    "REASONS",
    "SOURCES",
    "Entry",
    "Reason",
    "RecipientHasher",
    "SoftBouncePolicy",
    "Source",
    "SuppressionStore",
    "normalise",
]

Reason = Literal[
    "hard_bounce", "complaint", "unsubscribed", "stop", "invalid", "soft_bounce", "manual"
]
Source = Literal["send", "tracking", "manual", "import"]
REASONS: tuple[Reason, ...] = (
    "hard_bounce",
    "complaint",
    "unsubscribed",
    "stop",
    "invalid",
    "soft_bounce",
    "manual",
)
SOURCES: tuple[Source, ...] = ("send", "tracking", "manual", "import")
CHANNELS = ("email", "sms", "voice")
_KEY_HEX = 32


def normalise(channel: str, recipient: str) -> str:
    """The form a recipient is hashed in: an address lower-cased, a number as E.164
    (spaces, dots and dashes dropped; ``00`` read as ``+``)."""
    value = recipient.strip()
    if channel == "email":
        return value.lower()
    digits = "".join(c for c in value if c.isdigit() or c == "+")
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    return digits


@dataclass(frozen=True, slots=True)
class RecipientHasher:
    """Recipient → key. ``secret``: HMAC-SHA256 under it; ``None``: SHA-256."""

    secret: bytes | None = None

    def key(self, channel: str, recipient: str) -> str:
        data = f"{channel}:{normalise(channel, recipient)}".encode()
        if self.secret:
            digest = hmac.new(self.secret, data, hashlib.sha256).hexdigest()
        else:
            digest = hashlib.sha256(data).hexdigest()
        return digest[:_KEY_HEX]

    @staticmethod
    def is_key(value: str) -> bool:
        return len(value) == _KEY_HEX and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True, slots=True)
class SoftBouncePolicy:
    """``threshold`` soft bounces within ``window_s`` suppress for ``suppress_s``."""

    threshold: int = 3
    window_s: float = 7 * 86400.0
    suppress_s: float = 14 * 86400.0

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError("threshold must be >= 1")
        for name in ("window_s", "suppress_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")


@dataclass(frozen=True, slots=True)
class Entry:
    """One suppressed recipient of one channel."""

    channel: str
    key: str
    """The recipient's hash (:class:`RecipientHasher`)."""
    reason: Reason
    source: Source
    provider: str = ""
    at: float = 0.0
    """When it was suppressed (Unix seconds)."""
    expires_at: float | None = None
    """``None``: until removed."""
    masked: str = ""
    """The recipient masked for operators (``j***@example.com``), never the address."""

    def live(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now

    def encode(self) -> str:
        """The stored value: the expiry first, so the hot path's script reads it alone."""
        expires = "0" if self.expires_at is None else repr(self.expires_at)
        parts = [expires, self.reason, self.source, self.provider, repr(self.at), self.masked]
        return "|".join(p.replace("|", "/") for p in parts)

    @classmethod
    def decode(cls, channel: str, key: str, raw: str) -> Entry:
        expires, reason, source, provider, at, masked = raw.split("|", 5)
        return cls(
            channel=channel,
            key=key,
            reason=_reason(reason),
            source=_source(source),
            provider=provider,
            at=float(at),
            expires_at=None if float(expires) == 0 else float(expires),
            masked=masked,
        )


def _reason(value: str) -> Reason:
    for reason in REASONS:
        if reason == value:
            return reason
    return "manual"


def _source(value: str) -> Source:
    for source in SOURCES:
        if source == value:
            return source
    return "manual"


class SuppressionStore(Protocol):
    policy: SoftBouncePolicy

    def add(self, entry: Entry) -> bool:
        """Suppress; ``False`` when a permanent entry already stands and ``entry`` expires
        (nothing changed)."""
        ...

    def soft_bounce(
        self, channel: str, key: str, *, source: Source, provider: str = "", masked: str = ""
    ) -> Entry | None:
        """Count a soft bounce; the entry when this one reached the policy's threshold."""
        ...

    def check(self, channel: str, keys: Sequence[str]) -> dict[str, Entry]:
        """The live entries among ``keys`` (expired ones are as absent)."""
        ...

    def remove(self, channel: str, key: str) -> bool:
        """Forget the entry and the soft-bounce count; whether an entry was there."""
        ...

    def entries(self, channel: str) -> Iterator[Entry]:
        """Every live entry of ``channel`` (expired ones are dropped as met)."""
        ...

    def count(self, channel: str) -> int:
        """Entries stored (expired ones not yet dropped included)."""
        ...
