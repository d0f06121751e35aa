"""The delivery ledger: interface (:mod:`.base`), Redis backend, in-memory stub."""

from worker.stores.ledger.base import (
    FINAL_STATES,
    GAVE_UP,
    NOT_BEFORE,
    OUTCOME_UNKNOWN,
    STATE_RANK,
    DeliveryRecord,
    Ledger,
)
from worker.stores.ledger.memory import MemoryLedger
from worker.stores.ledger.redis import ACTIVE_KEY, DEAD_KEY, RedisLedger

__all__ = [
    "ACTIVE_KEY",
    "DEAD_KEY",
    "FINAL_STATES",
    "GAVE_UP",
    "NOT_BEFORE",
    "OUTCOME_UNKNOWN",
    "STATE_RANK",
    "DeliveryRecord",
    "Ledger",
    "MemoryLedger",
    "RedisLedger",
]
