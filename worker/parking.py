"""Messages parked while their provider is paused (out of credit), kept in Redis.

A parked message is not failed and not retried: it waits, visible to operators, until the
provider is resumed (by ``delivery-worker resume`` or a balance check that finds credit) and is
then re-enqueued under its own delivery id, so the ledger keeps it idempotent.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

__all__ = ["ParkedMessage", "Parking"]

_PREFIX = "dw:parked:"

# Take every parked message of a provider atomically: two resumers never re-enqueue one twice.
_TAKE_ALL = """
local items = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return items
"""


@dataclass(frozen=True)
class ParkedMessage:
    delivery_id: str
    task_name: str
    message: dict[str, Any]
    parked_at: float


class Parking:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._take_all = client.register_script(_TAKE_ALL)

    @staticmethod
    def key(provider: str) -> str:
        return _PREFIX + provider

    def park(self, provider: str, delivery_id: str, task_name: str, message: Any) -> None:
        entry = {"task_name": task_name, "message": message, "parked_at": time.time()}
        self.redis.hset(self.key(provider), delivery_id, json.dumps(entry))

    def count(self, provider: str) -> int:
        return int(self.redis.hlen(self.key(provider)))

    def entries(self, provider: str) -> list[ParkedMessage]:
        raw = self.redis.hgetall(self.key(provider))
        return sorted((_decode(k, v) for k, v in raw.items()), key=lambda item: item.parked_at)

    def take_all(self, provider: str) -> list[ParkedMessage]:
        flat = self._take_all(keys=[self.key(provider)])
        pairs = zip(flat[::2], flat[1::2], strict=True)
        return sorted((_decode(k, v) for k, v in pairs), key=lambda item: item.parked_at)

    def put_back(self, provider: str, items: list[ParkedMessage]) -> None:
        for item in items:
            self.park(provider, item.delivery_id, item.task_name, item.message)


def _decode(key: bytes | str, value: bytes | str) -> ParkedMessage:
    entry = json.loads(value)
    delivery_id = key.decode() if isinstance(key, bytes) else key
    return ParkedMessage(
        delivery_id=delivery_id,
        task_name=str(entry["task_name"]),
        message=entry["message"],
        parked_at=float(entry["parked_at"]),
    )
