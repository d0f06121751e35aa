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
    PRIORITIES,
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

    @property
    def small(self) -> bool:
        return self.limit.count <= SCAN_MAX_COUNT

    @property
    def gap(self) -> float:
        """The spacing of future slots: one slot interval."""
        return self.effective_s / self.limit.count

    @property
    def share_run(self) -> int:
        """``normal``/``bulk`` take at most ``share_run - 1`` of any ``share_run`` intervals."""
        return max(2, self.limit.count // self.share) if self.share else 0

    @property
    def share_window(self) -> float:
        return self.gap * self.share_run


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
        release_at_s: float | None = None,
    ) -> Reservation:
        if priority not in PRIORITIES or not math.isfinite(max_wait_s):
            check_priority(priority)
            check_seconds("max_wait_s", max_wait_s)
        high = priority == "high"
        with self._lock:
            now = self._clock()
            t0 = max(now, self._holds.get(key, now))
            if not limits:  # only a hold can make the request wait
                wait = t0 - now
                if wait > max_wait_s:
                    return Reservation(wait, reserved=False, at_s=t0)
                return Reservation(wait, reserved=True, at_s=t0)
            if release_at_s is not None:
                # The caller's own slot, given up unused: out of every log first.
                for (log_key, _), entries in self._logs.items():
                    if log_key == key:
                        entries[:] = [e for e in entries if e[0] != release_at_s]
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
            last = t0  # after every reservation: always admissible
            for log in logs:
                last = max(last, _after_all(log))
            # The first moment every window has room (a retry may borrow the share then).
            free_at = t0
            for log in logs:
                if len(log.entries) >= log.limit.count:
                    blocking = log.entries[len(log.entries) - log.limit.count][0]
                    free_at = max(free_at, blocking + log.effective_s)
            if last > now:
                for log in logs:
                    if log.small and log.entries:
                        last = max(last, log.entries[-1][0] + log.gap)
            chosen = last
            candidates = {t0}
            for log in logs:
                if log.small:
                    for at, _ in log.entries:
                        candidates |= {at + log.effective_s, at + log.gap}
                        if log.share:
                            candidates.add(at + log.share_window)
            borrow = borrow_s(limits, self.safety_margin_s)
            for at in sorted(c for c in candidates if t0 <= c < last):
                if at - now > max_wait_s:
                    break
                borrowing = not high and not high_waiting and at - now <= borrow + 1e-9
                if all(_fits(log, at, now, borrowing=borrowing) for log in logs):
                    chosen = at
                    break
            wait = chosen - now
            if wait > max_wait_s:
                # A retry asks at the first moment the windows free (then maybe at once).
                if now < free_at < chosen:
                    wait = free_at - now
                wait = max(wait, 1e-6)
                return Reservation(wait, reserved=False, at_s=now + wait)
            for log in logs:
                bisect.insort(log.entries, (chosen, high))
            if high:
                self._high[key] = max(chosen, self._high.get(key, chosen))
            return Reservation(max(wait, 0.0), reserved=True, at_s=chosen)

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
    """The earliest slot after every entry of ``log`` that its windows (and share) admit."""
    entries, count = log.entries, log.limit.count
    at = entries[-1][0] if entries else -math.inf
    if len(entries) >= count:
        at = max(at, entries[len(entries) - count][0] + log.effective_s)
    if log.share:
        own = [t for t, high in entries if not high]
        cap = log.share_run - 1
        if len(own) >= cap:
            at = max(at, own[len(own) - cap] + log.share_window)
    return at


def _peak(entries: list[tuple[float, bool]], at: float, window_s: float) -> int:
    """The most ``entries`` in one window ``(x - window_s, x]`` that holds ``at``.

    Those windows end at x in [at, at + window_s); their count peaks where an entry enters:
    at x = at or at x = an entry's time."""
    ends = [at] + [t for t, _ in entries if at <= t < at + window_s]
    # 1 ns of tolerance: slots one interval apart meet window ends exactly, and float sums of
    # intervals must not count a slot that has just left (Redis works in whole microseconds).
    return max(sum(1 for t, _ in entries if x - window_s + 1e-9 < t <= x + 1e-9) for x in ends)


def _fits(log: _Log, at: float, now: float, *, borrowing: bool) -> bool:
    """Does a new slot at ``at`` keep ``log``'s limit (its windows, the spacing of slots while
    a line waits, the share a ``normal``/``bulk`` slot leaves free)?"""
    w, count, entries = log.effective_s, log.limit.count, log.entries
    if not log.small:
        if entries and at >= _after_all(log):
            return True
        near = sum(1 for t, _ in entries if at - w < t < at + w)
        return near + 1 <= count
    # Paced while a line waits (a slot in the future, or reservations ahead): every slot keeps
    # one interval from every other, so waiters wake one at a time. An idle key still grants a
    # burst of ``count`` at once.
    paced = at > now or (entries and entries[-1][0] > now)
    if paced and any(abs(t - at) < log.gap - 1e-9 for t, _ in entries):
        return False
    if _peak(entries, at, w) + 1 > count:
        return False
    if log.share and not borrowing:
        own = [e for e in entries if not e[1]]
        if _peak(own, at, log.share_window) + 1 > log.share_run - 1:
            return False
    return True
