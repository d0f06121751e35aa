"""The delivery ledger: its roles and interface (:mod:`.base`), Redis backend, in-memory stub.

The roles: :class:`Records`, :class:`RunLocks`, :class:`Schedule`, :class:`DeadLetters`,
:class:`TagIndex`; :class:`Ledger` is all of them."""

from worker.stores.ledger.base import (
    FINAL_STATES,
    GAVE_UP,
    NOT_BEFORE,
    OUTCOME_UNKNOWN,
    STATE_RANK,
    DeadLetters,
    DeliveryRecord,
    Ledger,
    Records,
    RunLocks,
    Schedule,
    TagIndex,
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
    "DeadLetters",
    "DeliveryRecord",
    "Ledger",
    "MemoryLedger",
    "Records",
    "RedisLedger",
    "RunLocks",
    "Schedule",
    "TagIndex",
]
