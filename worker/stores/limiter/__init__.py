"""The global rate limiter: interface (:mod:`.base`), Redis backend, in-memory stub."""

from worker.stores.limiter.base import (
    DEFAULT_HIGH_SHARE,
    DEFAULT_SAFETY_MARGIN_S,
    PRIORITIES,
    Limit,
    RateLimiter,
    Reservation,
    limiter_key,
)
from worker.stores.limiter.memory import MemoryRateLimiter
from worker.stores.limiter.redis import RedisRateLimiter

__all__ = [
    "DEFAULT_HIGH_SHARE",
    "DEFAULT_SAFETY_MARGIN_S",
    "PRIORITIES",
    "Limit",
    "MemoryRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "Reservation",
    "limiter_key",
]
