"""The tracking store: interface (:mod:`.base`), Redis backend, in-memory stub."""

from worker.stores.tracking.base import (
    HISTORY_CAP,
    ORPHAN_TTL_S,
    POLL_STOP_STATES,
    Applied,
    DeliveryStatus,
    RecipientState,
    Tracked,
    TrackingStore,
    Watch,
    notification,
)
from worker.stores.tracking.memory import MemoryTrackingStore
from worker.stores.tracking.redis import OUTBOX_KEY, POLL_KEY, RedisTrackingStore

__all__ = [
    "HISTORY_CAP",
    "ORPHAN_TTL_S",
    "OUTBOX_KEY",
    "POLL_KEY",
    "POLL_STOP_STATES",
    "Applied",
    "DeliveryStatus",
    "MemoryTrackingStore",
    "RecipientState",
    "RedisTrackingStore",
    "Tracked",
    "TrackingStore",
    "Watch",
    "notification",
]
