"""Balances in Redis: ``dw:balances``, a hash of provider → JSON reading (HSET, HGETALL)."""

from __future__ import annotations

import redis

from worker.stores._redis import text
from worker.stores.balances.base import Balances, RecordedBalance

__all__ = ["RedisBalances"]

KEY = "dw:balances"


class RedisBalances(Balances):
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def record(self, balance: RecordedBalance) -> None:
        self.redis.hset(KEY, balance.provider, balance.encode())

    def read_all(self) -> dict[str, RecordedBalance]:
        found: dict[str, RecordedBalance] = {}
        for raw_provider, raw in self.redis.hgetall(KEY).items():
            provider = text(raw_provider)
            item = RecordedBalance.decode(provider, text(raw))
            if item is not None:
                found[provider] = item
        return found
