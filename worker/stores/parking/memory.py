"""The in-process parking stub: entries kept as JSON, as Redis keeps them; an injectable clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from worker.stores.parking.base import ParkedMessage, Parking, decode_entry, encode_entry

__all__ = ["MemoryParking"]


class MemoryParking(Parking):
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._parked: dict[str, dict[str, str]] = {}

    def park(self, provider: str, delivery_id: str, task_name: str, message: Any) -> None:
        entry = encode_entry(task_name, message, self._clock())
        with self._lock:
            self._parked.setdefault(provider, {})[delivery_id] = entry

    def count(self, provider: str) -> int:
        with self._lock:
            return len(self._parked.get(provider, {}))

    def entries(self, provider: str) -> list[ParkedMessage]:
        with self._lock:
            raw = dict(self._parked.get(provider, {}))
        return sorted((decode_entry(k, v) for k, v in raw.items()), key=lambda i: i.parked_at)

    def take_all(self, provider: str) -> list[ParkedMessage]:
        with self._lock:
            raw = self._parked.pop(provider, {})
        return sorted((decode_entry(k, v) for k, v in raw.items()), key=lambda i: i.parked_at)

    def put_back(self, provider: str, items: list[ParkedMessage]) -> None:
        for item in items:
            self.park(provider, item.delivery_id, item.task_name, item.message)
