"""Delivery status tracking: what happened to a message after its provider accepted it.

``events`` is the normalised event model every provider's webhooks, callbacks and status
lookups are translated into. The store of per-recipient states and histories, the receiver
and the poller build on it.
"""

from __future__ import annotations

from worker.tracking.events import (
    ENGAGEMENT_EVENTS,
    EVENT_RANK,
    FINAL_EVENTS,
    DeliveryEvent,
    EventSource,
    EventType,
    advances,
)

__all__ = [
    "ENGAGEMENT_EVENTS",
    "EVENT_RANK",
    "FINAL_EVENTS",
    "DeliveryEvent",
    "EventSource",
    "EventType",
    "advances",
]
