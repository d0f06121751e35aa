"""A global rate limiter shared by every worker process (delivery semantic 2).

Provider limits are per source IP, so every process that sends from one egress identity must draw
from one budget. Celery's own ``rate_limit`` is per worker instance and cannot do this
(celery/celery#5732). The budget lives in Redis and is checked and spent atomically by one Lua
script; :class:`MemoryRateLimiter` is the in-process stub with the same contract, for tests and
single-process tools.

Algorithm: a sliding log. Each granted request is recorded with its time; a request is admitted
only if, for every :class:`Limit`, fewer than ``count`` grants lie in the last
``window_s + safety_margin_s`` seconds. Unlike a fixed window (which admits ``2 * count`` across a
window boundary) or a token bucket (which refills continuously and admits bursts the provider may
count in one window), a sliding log guarantees that *no* interval of that length ever holds more
than ``count`` grants, while a steady sender still gets ``window_s / (window_s + safety_margin_s)``
of the limit (96 % for 10 requests/s with the default margin).

``safety_margin_s`` (default :data:`DEFAULT_SAFETY_MARGIN_S`) widens every window a little.
The provider counts requests when they *arrive*, not when we granted them; two grants exactly
``window_s`` apart can arrive less than ``window_s`` apart if the first was delayed more than
the second (scheduling, connection set-up, network jitter). As long as that jitter stays under
the margin, the provider never sees more than ``count`` requests in any window.
Raise it for distant providers or busy hosts.

Time comes from Redis (``TIME``) in :class:`RedisRateLimiter`, so workers on hosts with skewed
clocks still agree, and from an injectable clock in :class:`MemoryRateLimiter`.

Provider feedback (a 429, a ``Retry-After``) is applied with :meth:`RateLimiter.hold_for` /
:meth:`RateLimiter.hold`: every acquire on that key is refused until the hold ends, in every
process. Holds only ever extend.

Waiting is not an error: :meth:`RateLimiter.acquire` returns the time to wait, and callers
reschedule without spending an error retry (delivery semantic 3).

**A waiting line per key.** :meth:`RateLimiter.reserve` grants either "now" or a *future* slot,
recorded in the log at its own time: the caller sleeps until exactly that instant and sends
without asking again. Waiters therefore never wake together for one free slot (with many pool
processes the old ask-sleep-ask loop woke them all at once, and the losers of that race asked
again while the winners' requests were still on their way). A slot further ahead than the
caller's ``max_wait_s`` is not reserved at all: the caller reschedules its task, holding nothing
(a slot held by a task sitting in the broker could not be kept on time; giving one back would
cost a second round trip and still leave a hole nobody else had planned for). A reservation that
is never used (its process was killed while sleeping) simply passes: the slot counts as spent for
its window, nothing is sent twice, and the task is redelivered; a slot its process woke too late
for is given up as it reserves again (``release_at_s``) and leaves the log. While reservations
wait, every slot keeps one interval (``(window + margin) / count``) from every other, so waiters
wake one at a time; an idle key still grants a burst of ``count`` at once.

**Priorities** (``high`` | ``normal`` | ``bulk``). A ``high`` request takes the earliest slot that
keeps every window within its count, even one *before* slots already reserved by others: it
overtakes everything waiting for the same budget. So that such a slot exists, ``normal`` and
``bulk`` reservations in the future leave ``floor(count * high_share)`` slots of every window
free, spread one in every ``count // free`` intervals (the reserved share,
``DELIVERY_LIMITER_HIGH_SHARE``, at most half a window); they *borrow* those slots when the
slot is within one slot interval of now and no ``high`` reservation is pending, so a sender with
no urgent work still gets the whole limit. The exact check of a slot between reservations scans
the log around it; it runs for limits of at most :data:`SCAN_MAX_COUNT` requests per window (the
short limits that pace a provider). A limit with a larger count admits a slot between
reservations only when fewer than ``count`` requests lie within one window on either side of it,
else only after its last reservation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from worker.stores.keys import DEFAULT_NAMESPACE, Keys

__all__ = [
    "DEFAULT_HIGH_SHARE",
    "DEFAULT_SAFETY_MARGIN_S",
    "PRIORITIES",
    "SCAN_MAX_COUNT",
    "Limit",
    "RateLimiter",
    "Reservation",
    "borrow_s",
    "check_margin",
    "check_priority",
    "check_seconds",
    "check_share",
    "limiter_key",
    "reserved_share",
]

DEFAULT_SAFETY_MARGIN_S = 0.04
"""The one default of the margin (``DELIVERY_LIMITER_SAFETY_MARGIN_S`` reads it too).
bench/rate_limit.py measured the grant-to-arrival spread on a busy 2-core host at up to ~20 ms
(a first request on a fresh connection); 40 ms keeps 96 % of the limit."""


DEFAULT_HIGH_SHARE = 0.2
"""The share of every window kept free for ``high`` requests (``DELIVERY_LIMITER_HIGH_SHARE``):
2 of EmailMassivo's 10 slots per second."""

PRIORITIES = ("high", "normal", "bulk")
"""The priorities a request may ask with; only ``high`` differs inside the limiter."""

SCAN_MAX_COUNT = 32
"""Limits up to this count per window get the exact check of a slot between reservations."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """The answer of :meth:`RateLimiter.reserve`.

    ``reserved``: a slot ``wait_s`` seconds from now (0.0: now) is recorded for the caller, who
    sleeps that long and sends without asking again. Not reserved: nothing was recorded and
    ``wait_s`` (> 0) is the time until a retry could have a slot: the first moment every window
    has room, else the slot the caller would have had; it reschedules.
    """

    wait_s: float
    reserved: bool
    at_s: float = 0.0
    """The slot's instant on :meth:`RateLimiter.now`'s clock (when not reserved: the moment to
    ask again): differences between slots are exact where waits measured at different
    moments are not. 0.0 when no limit and no hold applied (answered without the clock)."""


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``count`` requests in any ``window_s`` seconds."""

    count: int
    window_s: float

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"Limit.count must be a positive int, got {self.count!r}")
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(f"Limit.window_s must be a positive number, got {self.window_s!r}")

    def __str__(self) -> str:
        return f"{self.count}/{self.window_s:g}s"


def limiter_key(
    provider: str, identity: str, bucket: str = "send", *, prefix: str = DEFAULT_NAMESPACE
) -> str:
    """The limiter key of one provider budget, e.g. ``dw:rl:emailmassivo:203.0.113.7:send``.

    ``identity`` is the egress identity (source IP or host name): workers that share it share
    the budget, workers on other IPs get their own.
    """
    return Keys(prefix).limiter(provider, identity, bucket)


class RateLimiter(Protocol):
    """A shared budget of requests per key. Times are seconds on the limiter's clock."""

    def now(self) -> float:
        """The limiter's clock: Unix time from Redis for Redis, the injected clock for memory."""
        ...

    def reserve(
        self,
        key: str,
        limits: Sequence[Limit],
        *,
        priority: str = "normal",
        max_wait_s: float = 0.0,
        release_at_s: float | None = None,
    ) -> Reservation:
        """Atomically reserve one request from every limit at the earliest slot, or none.

        ``release_at_s``: the ``at_s`` of the caller's own earlier reservation that it woke too
        late for and gives up unused; it is removed first (nothing was sent for it), so it
        leaves no hole in the budget.

        The slot is the earliest instant, not before a hold ends, that keeps every window of
        every limit within its count (for ``normal``/``bulk`` in the future: within its count
        less the reserved share, unless borrowed). Reserved when it lies at most ``max_wait_s``
        ahead; else nothing is recorded. An empty ``limits`` only weighs the hold. Raises
        ``ValueError`` for an unknown ``priority``.
        """
        ...

    def acquire(self, key: str, limits: Sequence[Limit], *, priority: str = "normal") -> float:
        """Atomically take one request from every limit *now*, or none.

        Returns 0.0 when the request was granted and recorded. Otherwise records nothing and
        returns the seconds (> 0) until the slot it would have had: the end of a hold, or the
        moment the blocking grant leaves its window, whichever is later (when others hold
        reservations, after theirs). An empty ``limits`` only checks the hold.
        """
        found = self.reserve(key, limits, priority=priority, max_wait_s=0.0)
        return 0.0 if found.reserved else found.wait_s

    def hold_left(self, key: str) -> float:
        """Seconds until the hold on ``key`` ends (0.0: none). A caller that slept until its
        reserved slot checks it: a provider's 429 that came meanwhile holds its request too."""
        ...

    def usage(self, key: str, limits: Sequence[Limit]) -> list[int]:
        """Grants counted now against each of ``limits`` (same order), recording nothing.

        Read-only, for operators (the metrics exporter, ``delivery-worker top``): a grant counts
        while it is inside its effective window (the window plus the safety margin), exactly as
        :meth:`acquire` counts it.
        """
        ...

    def hold(self, key: str, until_s: float) -> float:
        """Refuse every acquire on ``key`` until ``until_s`` (an instant on :meth:`now`'s clock).

        Holds only extend: an earlier ``until_s`` than the current hold changes nothing.
        Returns the effective end of the hold.
        """
        ...

    def hold_for(self, key: str, seconds: float) -> float:
        """Like :meth:`hold`, ``seconds`` from now (a ``Retry-After: 30``, a 429 back-off)."""
        ...


def check_margin(safety_margin_s: float) -> float:
    if not (math.isfinite(safety_margin_s) and safety_margin_s >= 0):
        raise ValueError(f"safety_margin_s must be >= 0, got {safety_margin_s!r}")
    return float(safety_margin_s)


def check_share(high_share: float) -> float:
    if not (math.isfinite(high_share) and 0 <= high_share <= 1):
        raise ValueError(f"high_share must be within 0..1, got {high_share!r}")
    return float(high_share)


def check_priority(priority: str) -> bool:
    """True for ``high``; ``ValueError`` naming the field for anything not in PRIORITIES."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    return priority == "high"


def reserved_share(limit: Limit, high_share: float) -> int:
    """Slots of ``limit``'s window that ``normal``/``bulk`` leave free in the future."""
    return min(math.floor(limit.count * high_share + 1e-9), limit.count - 1)


def borrow_s(limits: Sequence[Limit], safety_margin_s: float) -> float:
    """How close to now a ``normal``/``bulk`` slot may borrow the share: one slot interval
    (window plus margin, over count) of the tightest limit."""
    return min(((lim.window_s + safety_margin_s) / lim.count for lim in limits), default=0.0)


def check_seconds(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
