"""Balances in Redis: ``<ns>:balances``, a hash of provider → JSON reading (HSET, HGETALL)."""

from __future__ import annotations

import redis

from worker.stores._redis import text
from worker.stores.balances.base import Balances, RecordedBalance
from worker.stores.keys import DEFAULT_KEYS, Keys

__all__ = ["RedisBalances"]

KEY = DEFAULT_KEYS.balances
"""The default namespace's key (tools, tests); a store uses its own ``keys``."""


class RedisBalances(Balances):
    def __init__(self, client: redis.Redis, *, keys: Keys = DEFAULT_KEYS) -> None:
        self.redis = client
        self.key = keys.balances

    def record(self, balance: RecordedBalance) -> None:
        self.redis.hset(self.key, balance.provider, balance.encode())

    def read_all(self) -> dict[str, RecordedBalance]:
        found: dict[str, RecordedBalance] = {}
        for raw_provider, raw in self.redis.hgetall(self.key).items():
            provider = text(raw_provider)
            item = RecordedBalance.decode(provider, text(raw))
            if item is not None:
                found[provider] = item
        return found
