"""Suppression lists, one per channel: interface (:mod:`.base`), Redis backend, memory stub."""

from worker.stores.suppression.base import (
    CHANNELS,
    REASONS,
    SOURCES,
    Entry,
    Reason,
    RecipientHasher,
    SoftBouncePolicy,
    Source,
    SuppressionStore,
    normalise,
)
from worker.stores.suppression.memory import MemorySuppressionStore
from worker.stores.suppression.redis import RedisSuppressionStore

__all__ = [
    "CHANNELS",
    "REASONS",
    "SOURCES",
    "Entry",
    "MemorySuppressionStore",
    "Reason",
    "RecipientHasher",
    "RedisSuppressionStore",
    "SoftBouncePolicy",
    "Source",
    "SuppressionStore",
    "normalise",
]
