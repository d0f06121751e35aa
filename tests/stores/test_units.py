"""What is specific to one implementation or to the values: key layout, expiry, validation."""

from __future__ import annotations

import math
import time
from typing import cast

import pytest
import redis

from worker.stores.health import BreakerConfig, MemoryHealthStore, RedisHealthStore
from worker.stores.limiter import (
    Limit,
    MemoryRateLimiter,
    RedisRateLimiter,
    limiter_key,
)

# Two limits on one key, as Voice Partner's campaign bucket declares them
# (docs/providers/voicepartner.md §3.2).
TWO_LIMITS = (Limit(5, 60.0), Limit(2000, 3600.0))


def _keys(client: redis.Redis) -> list[str]:
    return sorted(k.decode() for k in cast("list[bytes]", client.keys("*")))


def test_limiter_key_names_provider_identity_and_bucket() -> None:
    assert limiter_key("emailmassivo", "203.0.113.7") == "dw:rl:emailmassivo:203.0.113.7:send"
    assert limiter_key("voicepartner", "host-a", "campaign", prefix="staging") == (
        "staging:rl:voicepartner:host-a:campaign"
    )
    with pytest.raises(ValueError, match="identity"):
        limiter_key("emailmassivo", "")


@pytest.mark.parametrize(
    ("count", "window_s"),
    [(0, 1.0), (-1, 1.0), (True, 1.0), (1.5, 1.0), (1, 0.0), (1, -1.0), (1, math.nan)],
)
def test_limit_refuses_nonsense(count: int, window_s: float) -> None:
    with pytest.raises(ValueError):
        Limit(count, window_s)


def test_safety_margin_must_not_be_negative(redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError):
        MemoryRateLimiter(safety_margin_s=-0.01)
    with pytest.raises(ValueError):
        RedisRateLimiter(redis_client, safety_margin_s=-0.01)


def test_redis_limiter_key_layout_and_expiry(redis_client: redis.Redis) -> None:
    limiter = RedisRateLimiter(redis_client, safety_margin_s=0.02)
    key = limiter_key("voicepartner", "host-a", "campaign")
    for _ in range(3):
        last_grant = time.monotonic()
        assert limiter.acquire(key, TWO_LIMITS) == 0.0
    limiter.hold_for(key, 2.5)

    base = "{" + key + "}"
    assert _keys(redis_client) == [
        base + ":3600s",
        base + ":60s",
        base + ":hold",
    ]
    # Logs expire one window (plus margin) after the last grant; the hold with itself.
    # (less the time since the last grant: a loaded host can take tens of milliseconds here)
    since_ms = (time.monotonic() - last_grant) * 1000 + 2
    assert 60_020 - since_ms < redis_client.pttl(base + ":60s") <= 60_021
    assert 3_599_000 < redis_client.pttl(base + ":3600s") <= 3_600_021
    assert 2_000 < redis_client.pttl(base + ":hold") <= 2_500
    # Grants are logged on Redis's clock in whole microseconds, with unique members.
    log = redis_client.zrange(base + ":60s", 0, -1, withscores=True)
    entries = cast("list[tuple[bytes, float]]", log)
    assert len({member for member, _ in entries}) == 3
    sec, usec = redis_client.time()
    now_us = sec * 1_000_000 + usec
    for _, score in entries:
        assert now_us - 5_000_000 < score <= now_us
        assert score == int(score)


def test_redis_log_is_trimmed_to_the_window(redis_client: redis.Redis) -> None:
    limiter = RedisRateLimiter(redis_client)
    key = limiter_key("emailmassivo", "host-a")
    for _ in range(5):
        limiter.acquire(key, [Limit(100, 0.1)])
    time.sleep(0.15)
    limiter.acquire(key, [Limit(100, 0.1)])
    assert redis_client.zcard("{" + key + "}:0.1s") == 1


def test_grants_in_one_instant_are_all_counted(redis_client: redis.Redis) -> None:
    limiter = RedisRateLimiter(redis_client)
    key = limiter_key("emailmassivo", "host-a")
    waits = [limiter.acquire(key, [Limit(1000, 10.0)]) for _ in range(200)]
    assert waits == [0.0] * 200
    assert redis_client.zcard("{" + key + "}:10s") == 200


def test_redis_limiter_refuses_keys_outside_its_prefix(redis_client: redis.Redis) -> None:
    limiter = RedisRateLimiter(redis_client)
    with pytest.raises(ValueError, match="prefix"):
        limiter.acquire("celery", [Limit(1, 1.0)])
    with pytest.raises(ValueError, match="prefix"):
        limiter.hold_for("_kombu.binding.celery", 10)
    assert redis_client.keys("*") == []


def test_redis_limiter_clock_is_redis_time(redis_client: redis.Redis) -> None:
    sec, usec = redis_client.time()
    assert RedisRateLimiter(redis_client).now() == pytest.approx(sec + usec / 1e6, abs=1.0)


def test_redis_health_key_layout(redis_client: redis.Redis) -> None:
    config = BreakerConfig(failure_threshold=3, window_s=10.0)
    store = RedisHealthStore(redis_client, config=config)
    store.pause("smspartner", "code 11", by="w1")
    store.record_failure("postal")
    assert _keys(redis_client) == [
        "dw:health:breaker:postal",
        "dw:health:paused",
    ]
    assert redis_client.ttl("dw:health:paused") == -1  # a pause lasts until resumed
    assert 9_000 < redis_client.pttl("dw:health:breaker:postal") <= 10_001

    store.record_success("postal")  # closed and clean: nothing left behind
    assert redis_client.exists("dw:health:breaker:postal") == 0
    store.record_failure("postal")
    store.record_failure("postal")
    store.record_failure("postal")
    assert redis_client.ttl("dw:health:breaker:postal") == -1  # open stays open until probed
    assert redis_client.hget("dw:health:breaker:postal", "state") == b"open"


def test_redis_stores_work_with_decoded_responses(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url + "/14", decode_responses=True)
    try:
        client.flushdb()
        store = RedisHealthStore(client, prefix="t")
        info = store.pause("smspartner", "code 11 — crédit épuisé", by="w1")
        assert store.list_paused() == [info]
        assert info.reason == "code 11 — crédit épuisé"
        assert store.record_failure("smspartner").failures == 1
        limiter = RedisRateLimiter(client, prefix="t")
        assert limiter.acquire("t:rl:x:y:send", [Limit(1, 1.0)]) == 0.0
        assert limiter.acquire("t:rl:x:y:send", [Limit(1, 1.0)]) > 0
    finally:
        client.flushdb()
        client.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"window_s": 0.0},
        {"open_s": -1.0},
        {"probe_timeout_s": math.inf},
        {"open_s": 60.0, "max_open_s": 30.0},
    ],
)
def test_breaker_config_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerConfig(**kwargs)  # type: ignore[arg-type]


def test_memory_health_defaults_to_unix_time() -> None:
    before = time.time()
    assert MemoryHealthStore().pause("postal", "test", by="t").since >= before
