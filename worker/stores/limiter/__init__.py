"""The global rate limiter: interface (:mod:`.base`), Redis backend, in-memory stub."""

from worker.stores.limiter.base import (
    DEFAULT_SAFETY_MARGIN_S,
    Limit,
    RateLimiter,
    limiter_key,
)
from worker.stores.limiter.memory import MemoryRateLimiter
from worker.stores.limiter.redis import RedisRateLimiter

__all__ = [
    "DEFAULT_SAFETY_MARGIN_S",
    "Limit",
    "MemoryRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "limiter_key",
]
