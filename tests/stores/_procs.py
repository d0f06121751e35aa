"""Process bodies for the multi-process tests (spawned: importable, no pytest fixtures)."""

from __future__ import annotations

import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

import redis

from worker.stores.health import BreakerConfig, RedisHealthStore
from worker.stores.limiter import Limit, RedisRateLimiter


def hammer(
    redis_url: str,
    key: str,
    count: int,
    window_s: float,
    duration_s: float,
    ready: Queue[str],
    start: Event,
    out: Queue[list[float]],
) -> None:
    """Acquire as fast as the limiter allows for ``duration_s``; report the grant times.

    Each grant is stamped with ``time.time()`` right after the limiter answers, the moment the
    request would leave for the provider. All processes share this host's clock.
    """
    client = redis.Redis.from_url(redis_url)
    limiter = RedisRateLimiter(client)
    limits = [Limit(count, window_s)]
    limiter.acquire(key + ":warm-up", limits)  # load the script before the race
    ready.put("ready")
    start.wait(timeout=30)
    grants: list[float] = []
    end = time.monotonic() + duration_s
    while (left := end - time.monotonic()) > 0:
        wait = limiter.acquire(key, limits)
        if wait == 0:
            grants.append(time.time())
        else:
            time.sleep(min(wait, left))
    out.put(grants)
    client.close()


def probe_race(
    redis_url: str,
    provider: str,
    config: BreakerConfig,
    ready: Queue[str],
    start: Event,
    out: Queue[tuple[bool, bool, str]],
) -> None:
    """Ask the breaker once, as close as possible to the other processes."""
    client = redis.Redis.from_url(redis_url)
    store = RedisHealthStore(client, config=config)
    store.state(provider)  # load the script before the race
    ready.put("ready")
    start.wait(timeout=30)
    decision = store.allow_request(provider)
    out.put((decision.allowed, decision.probe, decision.state))
    client.close()
