"""The in-process limiter stub: the same sliding log as Redis, on an injectable clock."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from worker.stores.limiter.base import (
    DEFAULT_SAFETY_MARGIN_S,
    Limit,
    RateLimiter,
    check_margin,
    check_seconds,
)

__all__ = ["MemoryRateLimiter"]


class MemoryRateLimiter(RateLimiter):
    """The in-process stub: same contract, same algorithm, an injectable clock.

    Thread-safe (one lock), but shared by nothing else: use it in tests and single-process tools,
    never as the budget of real workers.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        safety_margin_s: float = DEFAULT_SAFETY_MARGIN_S,
    ) -> None:
        self._clock = clock
        self.safety_margin_s = check_margin(safety_margin_s)
        self._lock = threading.Lock()
        self._logs: dict[tuple[str, float], deque[float]] = {}
        self._holds: dict[str, float] = {}

    def now(self) -> float:
        return self._clock()

    def acquire(self, key: str, limits: Sequence[Limit]) -> float:
        with self._lock:
            now = self._clock()
            wait = max(self._holds.get(key, now) - now, 0.0)
            windows: dict[float, deque[float]] = {}
            for limit in limits:
                effective_s = limit.window_s + self.safety_margin_s
                log = self._logs.setdefault((key, limit.window_s), deque())
                horizon = now - effective_s
                while log and log[0] <= horizon:
                    log.popleft()
                windows[limit.window_s] = log
                if len(log) >= limit.count:
                    blocking = log[len(log) - limit.count]
                    wait = max(wait, blocking + effective_s - now, 1e-6)
            if wait > 0:
                return wait
            for log in windows.values():
                log.append(now)
            return 0.0

    def usage(self, key: str, limits: Sequence[Limit]) -> list[int]:
        with self._lock:
            now = self._clock()
            counts = []
            for limit in limits:
                horizon = now - (limit.window_s + self.safety_margin_s)
                log = self._logs.get((key, limit.window_s), ())
                counts.append(sum(1 for granted in log if granted > horizon))
            return counts

    def hold(self, key: str, until_s: float) -> float:
        check_seconds("until_s", until_s)
        with self._lock:
            until_s = max(until_s, self._holds.get(key, until_s))
            self._holds[key] = until_s
            return until_s

    def hold_for(self, key: str, seconds: float) -> float:
        check_seconds("seconds", seconds)
        with self._lock:
            until_s = self._clock() + max(seconds, 0.0)
            until_s = max(until_s, self._holds.get(key, until_s))
            self._holds[key] = until_s
            return until_s
