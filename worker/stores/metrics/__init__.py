"""Per-provider counters: interface (:mod:`.base`), Redis backend, in-memory stub."""

from worker.stores.metrics.base import Metrics
from worker.stores.metrics.memory import MemoryMetrics
from worker.stores.metrics.redis import RedisMetrics

__all__ = ["MemoryMetrics", "Metrics", "RedisMetrics"]
