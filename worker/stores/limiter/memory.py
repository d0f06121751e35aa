"""The in-process limiter stub: the same waiting line as Redis, on an injectable clock."""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from worker.stores.limiter.base import (
    DEFAULT_HIGH_SHARE,
    DEFAULT_SAFETY_MARGIN_S,
    SCAN_MAX_COUNT,
    Limit,
    RateLimiter,
    Reservation,
    borrow_s,
    check_margin,
    check_priority,
    check_seconds,
    check_share,
    reserved_share,
)

__all__ = ["MemoryRateLimiter"]


@dataclass
class _Log:
    limit: Limit
    effective_s: float
    share: int
    """Slots left free for ``high`` by a ``normal``/``bulk`` future slot (0 for ``high``)."""
    entries: list[tuple[float, bool]]
    """(slot time, is high), sorted by time."""


class MemoryRateLimiter(RateLimiter):
    """The in-process stub: same contract, same algorithm (``acquire.lua``), an injectable clock.

    Thread-safe (one lock), but shared by nothing else: use it in tests and single-process tools,
    never as the budget of real workers.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        safety_margin_s: float = DEFAULT_SAFETY_MARGIN_S,
        high_share: float = DEFAULT_HIGH_SHARE,
    ) -> None:
        self._clock = clock
        self.safety_margin_s = check_margin(safety_margin_s)
        self.high_share = check_share(high_share)
        self._lock = threading.Lock()
        self._logs: dict[tuple[str, float], list[tuple[float, bool]]] = {}
        self._holds: dict[str, float] = {}
        self._high: dict[str, float] = {}

    def now(self) -> float:
        return self._clock()

    def reserve(
        self,
        key: str,
        limits: Sequence[Limit],
        *,
        priority: str = "normal",
        max_wait_s: float = 0.0,
    ) -> Reservation:
        high = check_priority(priority)
        check_seconds("max_wait_s", max_wait_s)
        with self._lock:
            now = self._clock()
            t0 = max(now, self._holds.get(key, now))
            high_waiting = self._high.get(key, -math.inf) > now
            logs: list[_Log] = []
            for limit in limits:
                effective_s = limit.window_s + self.safety_margin_s
                entries = self._logs.setdefault((key, limit.window_s), [])
                del entries[: bisect.bisect_right(entries, (now - effective_s, True))]
                share = (
                    0
                    if high or limit.count > SCAN_MAX_COUNT
                    else reserved_share(limit, self.high_share)
                )
                logs.append(_Log(limit, effective_s, share, entries))
            last = t0  # the slot after every reservation: always admissible
            for log in logs:
                last = max(last, _after_all(log))
            chosen = last
            candidates = {t0} | {
                at + log.effective_s
                for log in logs
                if log.limit.count <= SCAN_MAX_COUNT
                for at, _ in log.entries
            }
            for at in sorted(c for c in candidates if t0 <= c < last):
                if at - now > max_wait_s:
                    break
                borrowing = not high and not high_waiting and at - now <= borrow_s(limits) + 1e-9
                if all(_fits(log, at, borrowing) for log in logs):
                    chosen = at
                    break
            wait = chosen - now
            if wait > max_wait_s:
                return Reservation(max(wait, 1e-6), reserved=False)
            for log in logs:
                bisect.insort(log.entries, (chosen, high))
            if high:
                self._high[key] = max(chosen, self._high.get(key, chosen))
            return Reservation(max(wait, 0.0), reserved=True)

    def usage(self, key: str, limits: Sequence[Limit]) -> list[int]:
        with self._lock:
            now = self._clock()
            counts = []
            for limit in limits:
                horizon = now - (limit.window_s + self.safety_margin_s)
                log = self._logs.get((key, limit.window_s), ())
                counts.append(sum(1 for granted, _ in log if granted > horizon))
            return counts

    def hold_left(self, key: str) -> float:
        with self._lock:
            return max(self._holds.get(key, 0.0) - self._clock(), 0.0)

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


def _after_all(log: _Log) -> float:
    """The earliest slot after every entry of ``log`` that its limit (and share) admits."""
    entries, count = log.entries, log.limit.count
    at = entries[-1][0] if entries else -math.inf
    if len(entries) >= count:
        at = max(at, entries[len(entries) - count][0] + log.effective_s)
    if log.share:
        own = [t for t, high in entries if not high]
        cap = count - log.share
        if len(own) >= cap:
            at = max(at, own[len(own) - cap] + log.effective_s)
    return at


def _fits(log: _Log, at: float, borrowing: bool) -> bool:
    """Does a new slot at ``at`` keep every window of ``log`` that holds it within its count?"""
    w, count, entries = log.effective_s, log.limit.count, log.entries
    if count > SCAN_MAX_COUNT:
        if entries and at >= _after_all(log):
            return True
        near = sum(1 for t, _ in entries if at - w < t < at + w)
        return near + 1 <= count
    cap = count - log.share if log.share and not borrowing else count + 1
    # The windows (x - w, x] holding ``at`` end at x in [at, at + w); their count peaks where
    # an entry enters: at x = at or at x = an entry's time.
    for x in [at] + [t for t, _ in entries if at <= t < at + w]:
        inside = [high for t, high in entries if x - w < t <= x]
        if len(inside) + 1 > count:
            return False
        if inside.count(False) + 1 > cap:
            return False
    return True
