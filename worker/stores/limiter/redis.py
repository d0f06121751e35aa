"""The shared limiter in Redis: one Lua script per decision (``acquire.lua``, ``hold.lua``)."""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from typing import Any

import redis

from worker.stores._redis import load_script
from worker.stores.keys import DEFAULT_NAMESPACE
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

__all__ = ["RedisRateLimiter"]

_US = 1_000_000


class RedisRateLimiter(RateLimiter):
    """The shared limiter: one Lua script per decision, on Redis's clock.

    Keys used for a limiter key ``K`` (braces make them one Redis Cluster hash slot, so the
    script may touch them all):

    - ``{K}:<window>s`` (``{K}:1s``, ``{K}:3600s``): sorted set, the log of grants and
      reservations for limits with that window (member ``<h|n><slot us>-<random>``, ``h`` for a
      ``high`` request; score = slot time in Unix microseconds, in the future for a
      reservation), trimmed on every call and expiring one window after the last slot;
    - ``{K}:hold``: string, the end of the current hold in Unix microseconds, expiring with it;
    - ``{K}:high``: string, the latest slot reserved by a ``high`` request (Unix microseconds),
      expiring with it: while it lies ahead, ``normal``/``bulk`` do not borrow the share.

    Keys must live under ``prefix`` (as built by :func:`limiter_key`), so a wrong argument can
    never make the limiter trim or expire someone else's data in a shared Redis. Redis errors
    (``redis.RedisError``) propagate to the caller.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        prefix: str = DEFAULT_NAMESPACE,
        *,
        safety_margin_s: float = DEFAULT_SAFETY_MARGIN_S,
        high_share: float = DEFAULT_HIGH_SHARE,
    ) -> None:
        self._redis = redis_client
        self.prefix = prefix
        self.safety_margin_s = check_margin(safety_margin_s)
        self.high_share = check_share(high_share)
        self._acquire = load_script(redis_client, "worker.stores.limiter", "acquire.lua")
        self._hold = load_script(redis_client, "worker.stores.limiter", "hold.lua")

    def _base(self, key: str) -> str:
        if not key.startswith(self.prefix + ":"):
            raise ValueError(f"limiter key {key!r} is outside the prefix {self.prefix!r}")
        return "{" + key + "}"

    def now(self) -> float:
        sec, usec = self._redis.time()
        return sec + usec / _US

    def reserve(
        self,
        key: str,
        limits: Sequence[Limit],
        *,
        priority: str = "normal",
        max_wait_s: float = 0.0,
        release_at_s: float | None = None,
    ) -> Reservation:
        high = check_priority(priority)
        check_seconds("max_wait_s", max_wait_s)
        base = self._base(key)
        keys = [base + ":hold", base + ":high"]
        if not limits and self._redis.exists(keys[0]) == 0:
            # No rate limit: only a hold can make the request wait, and a hold's key expires
            # with it (hold.lua), so its absence answers without the script and Redis's clock
            # (one command instead of three). A hold present is weighed by the script.
            return Reservation(0.0, reserved=True)
        args: list[str | int] = [
            secrets.token_hex(8),
            len(limits),
            1 if high else 0,
            math.floor(max(max_wait_s, 0.0) * _US),
            math.floor(borrow_s(limits, self.safety_margin_s) * _US),
            SCAN_MAX_COUNT,
        ]
        for limit in limits:
            keys.append(f"{base}:{limit.window_s:g}s")
            args += [
                limit.count,
                math.ceil((limit.window_s + self.safety_margin_s) * _US),
                reserved_share(limit, self.high_share),
            ]
        if release_at_s is not None:
            args.append(round(release_at_s * _US))
        reserved, wait_us, at_us = self._acquire(keys=keys, args=args)
        return Reservation(int(wait_us) / _US, reserved=bool(int(reserved)), at_s=int(at_us) / _US)

    def hold_left(self, key: str) -> float:
        hold_key = self._base(key) + ":hold"
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(hold_key)
        pipe.time()
        until, (sec, usec) = pipe.execute()
        if until is None:
            return 0.0
        return max(int(until) - (int(sec) * _US + int(usec)), 0) / _US

    def usage(self, key: str, limits: Sequence[Limit]) -> list[int]:
        base = self._base(key)
        sec, usec = self._redis.time()
        now_us = int(sec) * _US + int(usec)
        pipe = self._redis.pipeline(transaction=False)
        for limit in limits:
            horizon = now_us - math.ceil((limit.window_s + self.safety_margin_s) * _US)
            # acquire.lua trims scores <= now - window, so a grant counts while its score is
            # above the horizon.
            pipe.zcount(f"{base}:{limit.window_s:g}s", f"({horizon}", "+inf")
        return [int(n) for n in pipe.execute()]

    def hold(self, key: str, until_s: float) -> float:
        check_seconds("until_s", until_s)
        return self._run_hold(key, "at", math.ceil(until_s * _US))

    def hold_for(self, key: str, seconds: float) -> float:
        check_seconds("seconds", seconds)
        return self._run_hold(key, "for", math.ceil(max(seconds, 0.0) * _US))

    def _run_hold(self, key: str, mode: str, value_us: int) -> float:
        result: Any = self._hold(keys=[self._base(key) + ":hold"], args=[mode, value_us])
        return int(result) / _US
