"""Flow control shared by every worker process: the global rate limiter and provider health.

Standalone on purpose (no Celery, nothing else from the worker): each piece is a small interface
with a Redis implementation (Lua scripts, Redis's clock) and an in-memory stub, and one contract
test suite runs against both.
"""

from worker.flow.health import (
    BreakerConfig,
    BreakerState,
    BreakerStateName,
    Decision,
    HealthStore,
    MemoryHealthStore,
    PauseInfo,
    RedisHealthStore,
)
from worker.flow.limiter import (
    DEFAULT_SAFETY_MARGIN_S,
    Limit,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    limiter_key,
)

__all__ = [
    "DEFAULT_SAFETY_MARGIN_S",
    "BreakerConfig",
    "BreakerState",
    "BreakerStateName",
    "Decision",
    "HealthStore",
    "Limit",
    "MemoryHealthStore",
    "MemoryRateLimiter",
    "PauseInfo",
    "RateLimiter",
    "RedisHealthStore",
    "RedisRateLimiter",
    "limiter_key",
]
