"""The metrics contract (per-provider counters), run against every implementation."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from worker.stores.metrics import MemoryMetrics, Metrics, RedisMetrics


@pytest.fixture(params=["memory", "redis"])
def metrics(request: pytest.FixtureRequest) -> Iterator[Metrics]:
    if request.param == "memory":
        yield MemoryMetrics()
    else:
        client: redis.Redis = request.getfixturevalue("redis_client")
        yield RedisMetrics(client)


def test_a_provider_without_counters_reads_empty(metrics: Metrics) -> None:
    assert metrics.read("postal") == {}


def test_counters_add_up_per_provider_and_name(metrics: Metrics) -> None:
    metrics.incr("smspartner", "sent")
    metrics.incr("smspartner", "sent")
    metrics.incr("smspartner", "throttled_ms", 250)
    metrics.incr("smspartner", "failed:recipient_rejected")
    metrics.incr("postal", "sent", 3)
    assert metrics.read("smspartner") == {
        "sent": 2,
        "throttled_ms": 250,
        "failed:recipient_rejected": 1,
    }
    assert metrics.read("postal") == {"sent": 3}


def test_amounts_may_be_zero_or_negative(metrics: Metrics) -> None:
    metrics.incr("postal", "parked", 0)
    metrics.incr("postal", "sent", 5)
    metrics.incr("postal", "sent", -2)
    assert metrics.read("postal") == {"parked": 0, "sent": 3}


def test_a_read_is_a_copy(metrics: Metrics) -> None:
    metrics.incr("postal", "sent")
    metrics.read("postal")["sent"] = 99
    assert metrics.read("postal") == {"sent": 1}


def test_concurrent_increments_are_all_counted(metrics: Metrics) -> None:
    def bump() -> None:
        for _ in range(200):
            metrics.incr("emailmassivo", "sent")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert metrics.read("emailmassivo") == {"sent": 800}
