"""What a provider's status lookup takes and gives: targets in, normalised events out.

A driver that declares ``status_lookup = True`` implements :meth:`Driver.lookup_status` for
one group of :class:`LookupTarget` (one provider request, or two for Postal's details);
:meth:`Driver.lookup_groups` says how targets are batched (SMS Partner: up to 500 per
``/multi-status``, docs/providers/smspartner.md §1.2.8; Mail Partner: one ``/bulk-status`` per send,
docs/providers/mailpartner.md §2.2; Postal: one message per request, docs/providers/postal.md §4.4).
A lookup answer is read defensively: a request-level problem is a classified
:class:`~worker.errors.DeliveryError`; an item that cannot be read becomes an ``unknown`` event or
is skipped, never an exception.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.redaction import mask_email, mask_phone, scrub
from worker.tracking.events import DeliveryEvent, EventType

__all__ = ["LookupTarget", "lookup_event", "mask_recipient"]

MAX_STATUS_CHARS = 100
MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class LookupTarget:
    """One recipient of one sent delivery, as the poller asks about it."""

    delivery_id: str
    recipient: str
    """Masked (the key of the send result)."""
    provider_message_id: str
    lookup: str | None = None
    """What the lookup needs beyond the id (SMS Partner: the full number); never logged."""


def mask_recipient(recipient: str) -> str:
    """The masked form the send result uses for a recipient (``worker.delivery.results``)."""
    return mask_email(recipient) if "@" in recipient else mask_phone(recipient)


def lookup_event(
    provider: str,
    target: LookupTarget,
    kind: EventType,
    *,
    status: Any,
    occurred_at: float | None,
    reason: str | None = None,
) -> DeliveryEvent:
    """A ``poll`` event for ``target``. Its id is a digest of what the provider said (the id,
    recipient, status and date), so asking again and hearing the same thing is a duplicate."""
    occurred_at = _sane_time(occurred_at)
    word = status if isinstance(status, str) else type(status).__name__
    word = scrub(word)[:MAX_STATUS_CHARS]
    when = occurred_at if occurred_at is not None else time.time()
    basis = "|".join(
        [
            provider,
            target.provider_message_id,
            target.recipient,
            kind.value,
            word,
            repr(occurred_at),
        ]
    )
    digest = hashlib.sha256(basis.encode("utf-8", "replace")).hexdigest()[:32]
    raw: dict[str, Any] = {"status": word}
    if occurred_at is not None:
        raw["date"] = occurred_at
    return DeliveryEvent(
        event_id=f"poll:{digest}",
        type=kind,
        provider=provider,
        provider_message_id=target.provider_message_id[:200],
        delivery_id=target.delivery_id,
        recipient=target.recipient,
        occurred_at=when,
        reason=scrub(reason)[:MAX_REASON_CHARS] if reason else None,
        source="poll",
        raw=raw,
    )


def _sane_time(value: float | None) -> float | None:
    """A provider's time only when it is a plausible Unix time (1970 to 5138)."""
    if value is None or not math.isfinite(value) or not 0 < value < 1e11:
        return None
    return value


def status_type(table: Mapping[str, EventType], status: Any) -> EventType:
    """The event type of a provider's status word (case-insensitive); ``unknown`` otherwise."""
    if not isinstance(status, str):
        return EventType.UNKNOWN
    return table.get(status.strip().lower(), EventType.UNKNOWN)
