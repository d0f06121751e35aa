"""Provider health (pauses and breakers): interface (:mod:`.base`), Redis backend, memory stub."""

from worker.stores.health.base import (
    BreakerConfig,
    BreakerState,
    BreakerStateName,
    Decision,
    HealthStore,
    PauseInfo,
)
from worker.stores.health.memory import MemoryHealthStore
from worker.stores.health.redis import RedisHealthStore

__all__ = [
    "BreakerConfig",
    "BreakerState",
    "BreakerStateName",
    "Decision",
    "HealthStore",
    "MemoryHealthStore",
    "PauseInfo",
    "RedisHealthStore",
]
