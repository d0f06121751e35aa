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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from worker.stores.keys import DEFAULT_NAMESPACE, Keys

__all__ = [
    "DEFAULT_SAFETY_MARGIN_S",
    "Limit",
    "RateLimiter",
    "check_margin",
    "check_seconds",
    "limiter_key",
]

DEFAULT_SAFETY_MARGIN_S = 0.04
"""The one default of the margin (``DELIVERY_LIMITER_SAFETY_MARGIN_S`` reads it too).
bench/rate_limit.py measured the grant-to-arrival spread on a busy 2-core host at up to ~20 ms
(a first request on a fresh connection); 40 ms keeps 96 % of the limit."""


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

    def acquire(self, key: str, limits: Sequence[Limit]) -> float:
        """Atomically take one request from every limit, or none.

        Returns 0.0 when the request was granted and recorded. Otherwise records nothing and
        returns the seconds (> 0) until the earliest moment a retry could succeed: the end of a
        hold, or the moment the oldest blocking grant leaves its window, whichever is later.
        An empty ``limits`` only checks the hold.
        """
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


def check_seconds(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
