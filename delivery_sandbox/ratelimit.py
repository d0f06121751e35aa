"""Sliding-window request limits keyed by (provider, bucket, client IP).

Providers limit per source IP (docs/providers/index.md §6: EmailMassivo 10 requests/s, Mail Partner
2000/min, Voice Partner 2000/h and 5/min for campaigns). A window holds the times of **every
attempt**, admitted or not: the throttler counts a request first and checks afterwards, as
a provider's edge throttler does. A request refused with 429 therefore counts too, so a client
that keeps knocking while throttled stays throttled until it slows below the limit; and the
server counts requests answered by an injected fault (:meth:`SlidingWindowLimiter.count`).
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
        """Count the attempt in every window, then admit it (``None``) or return the seconds
        until a new attempt would be admitted.

        An attempt is admitted when no window holds more than its limit counting this attempt.
        A refused attempt stays counted in every window, the hourly as well as the per-minute.
        """
        now = self._clock()
        active = [w for w in windows if w.limit > 0]
        with self._lock:
            waits: list[float] = []
            for w in active:
                hits = self._prune((provider, w.bucket, client_ip), now, w.window_s)
                hits.append(now)
                if len(hits) > w.limit:
                    # A new attempt is admitted once at most limit - 1 of the counted ones are
                    # still in the window: when the limit-th most recent one leaves it.
                    waits.append(hits[len(hits) - w.limit] + w.window_s - now)
            return max(0.0, max(waits)) if waits else None

    def count(self, provider: str, client_ip: str, windows: Sequence[Window]) -> None:
        """Count an attempt that is answered otherwise (an injected fault)."""
        self.admit(provider, client_ip, windows)

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
