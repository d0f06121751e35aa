"""The in-process counters stub."""

from __future__ import annotations

import threading

from worker.stores.metrics.base import Metrics

__all__ = ["MemoryMetrics"]


class MemoryMetrics(Metrics):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[str, int]] = {}

    def incr(self, provider: str, name: str, amount: int = 1) -> None:
        with self._lock:
            counters = self._counters.setdefault(provider, {})
            counters[name] = counters.get(name, 0) + amount

    def read(self, provider: str) -> dict[str, int]:
        with self._lock:
            return dict(self._counters.get(provider, {}))
