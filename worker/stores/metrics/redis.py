"""Counters in Redis: ``<ns>:metrics:<provider>``, a hash of counter name → integer (HINCRBY)."""

from __future__ import annotations

import redis

from worker.stores._redis import text
from worker.stores.keys import DEFAULT_KEYS, Keys
from worker.stores.metrics.base import Metrics

__all__ = ["RedisMetrics"]


class RedisMetrics(Metrics):
    def __init__(self, client: redis.Redis, *, keys: Keys = DEFAULT_KEYS) -> None:
        self.redis = client
        self.keys = keys

    def key(self, provider: str) -> str:
        return self.keys.metrics(provider)

    def incr(self, provider: str, name: str, amount: int = 1) -> None:
        self.redis.hincrby(self.key(provider), name, amount)

    def read(self, provider: str) -> dict[str, int]:
        raw = self.redis.hgetall(self.key(provider))
        return {text(k): int(v) for k, v in raw.items()}
