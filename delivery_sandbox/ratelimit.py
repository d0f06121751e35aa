"""Sliding-window request limits keyed by (provider, bucket, client IP).

Providers limit per source IP (providers.md §6: EmailMassivo 10 requests/s, Mail Partner
2000/min, Voice Partner 2000/h and 5/min for campaigns). A window holds the times of *admitted*
requests only: a request refused with 429 is not counted, so a client that keeps knocking while
throttled is let in again as soon as the oldest admitted request leaves the window.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["SlidingWindowLimiter", "Window", "retry_after_header"]


@dataclass(frozen=True)
class Window:
    bucket: str  # unique per window, e.g. "campaign-1m"; requests in a bucket share it
    limit: int  # requests admitted per window; 0 or less disables the window
    window_s: float


class SlidingWindowLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._hits: dict[tuple[str, str, str], deque[float]] = {}

    def admit(self, provider: str, client_ip: str, windows: Sequence[Window]) -> float | None:
        """Admit and count the request in every window, or return seconds until one frees up.

        All windows are checked before any is charged, so a request refused by the hourly window
        does not eat into the per-minute one.
        """
        now = self._clock()
        active = [w for w in windows if w.limit > 0]
        with self._lock:
            waits: list[float] = []
            for w in active:
                hits = self._prune((provider, w.bucket, client_ip), now, w.window_s)
                if len(hits) >= w.limit:
                    waits.append(hits[len(hits) - w.limit] + w.window_s - now)
            if waits:
                return max(0.0, max(waits))
            for w in active:
                self._hits[(provider, w.bucket, client_ip)].append(now)
            return None

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()

    def _prune(self, key: tuple[str, str, str], now: float, window_s: float) -> deque[float]:
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - window_s:
            hits.popleft()
        return hits


def retry_after_header(wait_s: float) -> str:
    """Whole seconds, rounded up, at least 1 (RFC 9110 ``Retry-After`` takes integers)."""
    return str(max(1, math.ceil(wait_s)))
