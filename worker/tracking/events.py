"""One event model for every provider's delivery news (webhook, callback hint, status lookup).

A provider module translates what its provider says into :class:`DeliveryEvent` values; the
tracking store applies them per recipient, forward only (:func:`advances`), and keeps every
event in the delivery's history. Recipients are stored and shown masked
(``worker.redaction``), as in the send result; ``raw`` keeps the provider's event for
operators with keys, secrets and message bodies removed.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ENGAGEMENT_EVENTS",
    "EVENT_RANK",
    "FINAL_EVENTS",
    "DeliveryEvent",
    "EventSource",
    "EventType",
    "advances",
]


class EventType(StrEnum):
    QUEUED = "queued"
    """Accepted by the provider, not yet handed on (Postal pending, SMS "Waiting")."""
    SENT = "sent"
    """Handed on by the provider (to the carrier or the next mail server), not yet confirmed."""
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    """A temporary failure; the provider tries again (Postal MessageDelayed / SoftFail)."""
    HELD = "held"
    """Kept back by the provider until an operator releases it (Postal MessageHeld)."""
    BOUNCED = "bounced"
    FAILED = "failed"
    REJECTED = "rejected"
    """Refused by the provider after acceptance (STOP list, invalid number, policy)."""
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"
    OPENED = "opened"
    CLICKED = "clicked"
    UNKNOWN = "unknown"
    """A status we could not read; kept in the history, never changes the state."""


EVENT_RANK: dict[EventType, int] = {
    EventType.QUEUED: 0,
    # A delivery starts at "sent" (the provider accepted it, worker.tracking.service); a hold or
    # a temporary failure is news after that (Postal holds accepted messages,
    # docs/providers/postal.md §4.5), so they outrank it. A "sent" after them changes nothing;
    # "delivered" still follows them.
    EventType.SENT: 1,
    EventType.DEFERRED: 2,
    EventType.HELD: 2,
    EventType.DELIVERED: 3,
    # A bounce may follow a delivery to the next hop (an asynchronous bounce), so the failures
    # outrank "delivered".
    EventType.BOUNCED: 4,
    EventType.FAILED: 4,
    EventType.REJECTED: 4,
    # Engagement follows a delivery; it is reported to the application and kept in the
    # history, and it moves the state only from delivered (or sent).
    EventType.OPENED: 5,
    EventType.CLICKED: 6,
    EventType.COMPLAINED: 7,
    EventType.UNSUBSCRIBED: 7,
}
FINAL_EVENTS = frozenset({EventType.BOUNCED, EventType.FAILED, EventType.REJECTED})
ENGAGEMENT_EVENTS = frozenset(
    {EventType.OPENED, EventType.CLICKED, EventType.COMPLAINED, EventType.UNSUBSCRIBED}
)

EventSource = Literal["webhook", "callback", "poll", "send"]


def advances(current: EventType | None, new: EventType) -> bool:
    """Whether a recipient in state ``current`` moves to ``new`` (forward only).

    A late "sent" never overwrites "delivered"; a failure may follow a delivery; engagement
    follows only a delivery (or a send); ``unknown`` never moves anything.
    """
    if new is EventType.UNKNOWN:
        return False
    if current is None or current is EventType.UNKNOWN:
        return True
    if new in ENGAGEMENT_EVENTS:
        return current not in FINAL_EVENTS and EVENT_RANK[new] > EVENT_RANK[current]
    if current in ENGAGEMENT_EVENTS:
        return False
    return EVENT_RANK[new] > EVENT_RANK[current]


class DeliveryEvent(BaseModel):
    """One thing a provider said about one recipient of one delivery."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(min_length=1, max_length=200)
    """Deduplication key: the provider's event id (Postal's envelope ``uuid``) or a digest of
    (provider, provider message id, recipient, type, timestamp) when it has none."""
    type: EventType
    provider: str
    provider_message_id: str = Field(max_length=200)
    delivery_id: str | None = None
    """Known when the event was found by our own lookup; a webhook event names only the
    provider's message id and is matched to its delivery by the store."""
    recipient: str | None = None
    """Masked (``j***@example.com``, ``+3360****89``), as the send result keys recipients."""
    occurred_at: float
    """When the provider says it happened (Unix seconds); the receive time if it says nothing."""
    reason: str | None = Field(default=None, max_length=1000)
    source: EventSource
    raw: dict[str, Any] = Field(default_factory=dict)
    """The provider's event as received, minus keys, secrets and message bodies."""
