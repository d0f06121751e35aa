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
of the limit (98 % for 10 requests/s with the default margin).

``safety_margin_s`` (default 0.02 s) widens every window a little. The provider counts requests
when they *arrive*, not when we granted them; two grants exactly ``window_s`` apart can arrive less
than ``window_s`` apart if the first was delayed more than the second (scheduling, connection
set-up, network jitter). As long as that jitter stays under the margin, the provider never sees
more than ``count`` requests in any window. Raise it for distant providers or busy hosts.

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
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis

__all__ = [
    "DEFAULT_SAFETY_MARGIN_S",
    "Limit",
    "MemoryRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "limiter_key",
]

DEFAULT_SAFETY_MARGIN_S = 0.02
_US = 1_000_000


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


def limiter_key(provider: str, identity: str, bucket: str = "send", *, prefix: str = "dw") -> str:
    """The limiter key of one provider budget, e.g. ``dw:rl:emailmassivo:203.0.113.7:send``.

    ``identity`` is the egress identity (source IP or host name): workers that share it share
    the budget, workers on other IPs get their own.
    """
    for name, value in (("provider", provider), ("identity", identity), ("bucket", bucket)):
        if not value:
            raise ValueError(f"limiter_key: {name} must not be empty")
    return f"{prefix}:rl:{provider}:{identity}:{bucket}"


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

    def hold(self, key: str, until_s: float) -> float:
        """Refuse every acquire on ``key`` until ``until_s`` (an instant on :meth:`now`'s clock).

        Holds only extend: an earlier ``until_s`` than the current hold changes nothing.
        Returns the effective end of the hold.
        """
        ...

    def hold_for(self, key: str, seconds: float) -> float:
        """Like :meth:`hold`, ``seconds`` from now (a ``Retry-After: 30``, a 429 back-off)."""
        ...


def _check_margin(safety_margin_s: float) -> float:
    if not (math.isfinite(safety_margin_s) and safety_margin_s >= 0):
        raise ValueError(f"safety_margin_s must be >= 0, got {safety_margin_s!r}")
    return float(safety_margin_s)


def _check_seconds(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


# One script does the whole decision: hold check, trim, count and wait for every limit, then the
# record. Being a script, it runs atomically in Redis: no two workers can both see room for the
# last slot.
#
# KEYS[1]      the hold key (value: end of the hold, Unix microseconds)
# KEYS[1 + i]  the sorted set (log) of limit i: member = unique id, score = grant time (us)
# ARGV[1]      a per-call unique suffix for the member
# ARGV[2]      n, the number of limits
# ARGV[1 + 2i] count of limit i;  ARGV[2 + 2i] its effective window (window + margin), in us
#
# Returns 0 when granted, else the wait in microseconds (>= 1).
# Limits with the same window share one log (the key is derived from the window); recording the
# same member twice in it is idempotent, so it still counts each request once.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = 0
local hold_until = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if hold_until > now then
  wait = hold_until - now
end
local n = tonumber(ARGV[2])
for i = 1, n do
  local log = KEYS[1 + i]
  local count = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', log, '-inf', string.format('%d', now - window))
  local used = redis.call('ZCARD', log)
  if used >= count then
    -- the grant whose expiry brings the log back under count
    local blocking = redis.call('ZRANGE', log, used - count, used - count, 'WITHSCORES')
    local w = tonumber(blocking[2]) + window - now
    if w < 1 then w = 1 end
    if w > wait then wait = w end
  end
end
if wait > 0 then
  return wait
end
local score = string.format('%d', now)
local member = score .. '-' .. ARGV[1]
for i = 1, n do
  local log = KEYS[1 + i]
  local window = tonumber(ARGV[2 + 2 * i])
  redis.call('ZADD', log, score, member)
  redis.call('PEXPIRE', log, math.ceil(window / 1000) + 1)
end
return 0
"""

# KEYS[1] the hold key; ARGV[1] 'at' (ARGV[2] = Unix us) or 'for' (ARGV[2] = us from now).
# Returns the effective end of the hold (us).
_HOLD_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_us
if ARGV[1] == 'at' then
  until_us = tonumber(ARGV[2])
else
  until_us = now + tonumber(ARGV[2])
end
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if current > until_us then
  until_us = current
end
if until_us > now then
  local ttl_ms = math.ceil((until_us - now) / 1000)
  redis.call('SET', KEYS[1], string.format('%d', until_us), 'PX', ttl_ms)
end
return until_us
"""


class RedisRateLimiter(RateLimiter):
    """The shared limiter: one Lua script per decision, on Redis's clock.

    Keys used for a limiter key ``K`` (braces make them one Redis Cluster hash slot, so the
    script may touch them all):

    - ``{K}:<window>s`` (``{K}:1s``, ``{K}:3600s``): sorted set, the log of grants for limits
      with that window
      (member ``<grant us>-<random>``, score = grant time in Unix microseconds), trimmed on
      every call and expiring one window after the last grant;
    - ``{K}:hold``: string, the end of the current hold in Unix microseconds, expiring with it.

    Keys must live under ``prefix`` (as built by :func:`limiter_key`), so a wrong argument can
    never make the limiter trim or expire someone else's data in a shared Redis. Redis errors
    (``redis.RedisError``) propagate to the caller.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        prefix: str = "dw",
        *,
        safety_margin_s: float = DEFAULT_SAFETY_MARGIN_S,
    ) -> None:
        self._redis = redis_client
        self.prefix = prefix
        self.safety_margin_s = _check_margin(safety_margin_s)
        self._acquire = redis_client.register_script(_ACQUIRE_LUA)
        self._hold = redis_client.register_script(_HOLD_LUA)

    def _base(self, key: str) -> str:
        if not key.startswith(self.prefix + ":"):
            raise ValueError(f"limiter key {key!r} is outside the prefix {self.prefix!r}")
        return "{" + key + "}"

    def now(self) -> float:
        sec, usec = self._redis.time()
        return sec + usec / _US

    def acquire(self, key: str, limits: Sequence[Limit]) -> float:
        base = self._base(key)
        keys = [base + ":hold"]
        args: list[str | int] = [secrets.token_hex(8), len(limits)]
        for limit in limits:
            keys.append(f"{base}:{limit.window_s:g}s")
            args += [limit.count, math.ceil((limit.window_s + self.safety_margin_s) * _US)]
        wait_us = int(self._acquire(keys=keys, args=args))
        return wait_us / _US

    def hold(self, key: str, until_s: float) -> float:
        _check_seconds("until_s", until_s)
        return self._run_hold(key, "at", math.ceil(until_s * _US))

    def hold_for(self, key: str, seconds: float) -> float:
        _check_seconds("seconds", seconds)
        return self._run_hold(key, "for", math.ceil(max(seconds, 0.0) * _US))

    def _run_hold(self, key: str, mode: str, value_us: int) -> float:
        result: Any = self._hold(keys=[self._base(key) + ":hold"], args=[mode, value_us])
        return int(result) / _US


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
        self.safety_margin_s = _check_margin(safety_margin_s)
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

    def hold(self, key: str, until_s: float) -> float:
        _check_seconds("until_s", until_s)
        with self._lock:
            until_s = max(until_s, self._holds.get(key, until_s))
            self._holds[key] = until_s
            return until_s

    def hold_for(self, key: str, seconds: float) -> float:
        _check_seconds("seconds", seconds)
        with self._lock:
            until_s = self._clock() + max(seconds, 0.0)
            until_s = max(until_s, self._holds.get(key, until_s))
            self._holds[key] = until_s
            return until_s
