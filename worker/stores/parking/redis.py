"""Parking in Redis: ``<ns>:parked:<provider>``, a hash of delivery id → JSON entry
(``{task_name, message, parked_at}``), no expiry (a parked message waits for the resume)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from worker.stores._redis import load_script, text
from worker.stores.keys import DEFAULT_KEYS, Keys
from worker.stores.parking.base import ParkedMessage, Parking, decode_entry, encode_entry

__all__ = ["RedisParking"]


class RedisParking(Parking):
    def __init__(
        self,
        client: redis.Redis,
        *,
        clock: Callable[[], float] = time.time,
        keys: Keys = DEFAULT_KEYS,
    ) -> None:
        self.redis = client
        self.keys = keys
        self._clock = clock
        self._take_all = load_script(client, "worker.stores.parking", "take_all.lua")

    def key(self, provider: str) -> str:
        return self.keys.parked(provider)

    def park(self, provider: str, delivery_id: str, task_name: str, message: Any) -> None:
        entry = encode_entry(task_name, message, self._clock())
        self.redis.hset(self.key(provider), delivery_id, entry)

    def count(self, provider: str) -> int:
        return int(self.redis.hlen(self.key(provider)))

    def entries(self, provider: str) -> list[ParkedMessage]:
        raw = self.redis.hgetall(self.key(provider))
        items = (decode_entry(text(k), v) for k, v in raw.items())
        return sorted(items, key=lambda item: item.parked_at)

    def take_all(self, provider: str) -> list[ParkedMessage]:
        flat = self._take_all(keys=[self.key(provider)])
        pairs = zip(flat[::2], flat[1::2], strict=True)
        return sorted((decode_entry(text(k), v) for k, v in pairs), key=lambda i: i.parked_at)

    def put_back(self, provider: str, items: list[ParkedMessage]) -> None:
        for item in items:
            self.park(provider, item.delivery_id, item.task_name, item.message)
