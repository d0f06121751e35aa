"""The in-process balances stub."""

from __future__ import annotations

import threading

from worker.stores.balances.base import Balances, RecordedBalance

__all__ = ["MemoryBalances"]


class MemoryBalances(Balances):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, RecordedBalance] = {}

    def record(self, balance: RecordedBalance) -> None:
        with self._lock:
            self._items[balance.provider] = balance

    def read_all(self) -> dict[str, RecordedBalance]:
        with self._lock:
            return dict(self._items)
