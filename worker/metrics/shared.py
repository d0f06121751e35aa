"""Gauges read from the shared Redis state at scrape time (nothing on the delivery path).

Pauses, breakers, parked messages, dead letters, queue depth and age, limiter usage and the
last balance readings already live in Redis for every worker; the exporter reads them when
Prometheus scrapes. Every exporter reads the same figures, so sum counters across exporters but
take ``max`` of these gauges (the dashboard and the alert rules do).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker.config import Settings
from worker.lanes import Lanes, parse_weights
from worker.metrics.record import currency_label, tenant_label
from worker.models import PRIORITIES
from worker.providers import DRIVERS, PROVIDERS
from worker.redis_memory import memory_usage
from worker.stores import Limit, Stores, limiter_key
from worker.stores.keys import keys_for

__all__ = ["BREAKER_STATES", "SharedStateCollector", "queue_names"]

BREAKER_STATES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
"""``delivery_breaker_state``: 0 closed, 1 half-open (a probe may go), 2 open."""

# kombu's Redis transport keeps a queue's prioritised messages in sibling lists named
# queue + "\x06\x16" + step (default steps 0, 3, 6, 9; step 0 is the queue itself).
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


def queue_names(queue: str) -> list[str]:
    return [queue, *(f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS)]


def _is_pacing(limit: Limit) -> bool:
    # Settings.limits adds Limit(1, window/count - margin) to pace short windows: an internal
    # spacing, not a provider limit; its usage is always 0 or 1 and would look saturated.
    return limit.count == 1 and limit.window_s < 1.0


class SharedStateCollector(Collector):
    def __init__(
        self,
        stores: Stores,
        client: redis.Redis,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stores = stores
        self.redis = client
        self.settings = settings
        self.clock = clock

    def collect(self) -> Iterable[Any]:
        up = GaugeMetricFamily(
            "delivery_shared_state_up",
            "1 when the exporter could read the shared Redis state for this scrape, else 0.",
        )
        try:
            families = list(self._families())
        except (redis.RedisError, OSError):
            up.add_metric([], 0.0)
            return [up]
        up.add_metric([], 1.0)
        return [*families, up]

    def _families(self) -> Iterator[GaugeMetricFamily]:
        stores = self.stores
        paused = GaugeMetricFamily(
            "delivery_provider_paused",
            "1 while the provider is paused for every worker (out of credit, or by an operator).",
            labels=["provider"],
        )
        breaker = GaugeMetricFamily(
            "delivery_breaker_state",
            "The provider's shared circuit breaker: 0 closed, 1 half-open, 2 open.",
            labels=["provider"],
        )
        parked = GaugeMetricFamily(
            "delivery_parked_messages",
            "Messages parked until the provider is resumed.",
            labels=["provider"],
        )
        for provider in PROVIDERS:
            paused.add_metric([provider], 1.0 if stores.health.paused(provider) else 0.0)
            state = stores.health.state(provider).state
            breaker.add_metric([provider], BREAKER_STATES[state])
            parked.add_metric([provider], float(stores.parking.count(provider)))
        yield paused
        yield breaker
        yield parked

        dead = GaugeMetricFamily(
            "delivery_dead_letters", "Dead letters waiting for `delivery-worker dead replay`."
        )
        dead.add_metric([], float(len(stores.ledger.dead_letters())))
        yield dead

        yield from self._queues()
        yield from self._lanes()
        yield self._limiter_usage()
        yield from self._balances()
        yield from self._redis_memory()

    def _redis_memory(self) -> Iterator[GaugeMetricFamily]:
        """How close the shared Redis is to ``maxmemory`` (worker.redis_memory): a
        ``noeviction`` Redis refuses writes there, so the alert fires before."""
        usage = memory_usage(self.redis)
        headroom = GaugeMetricFamily(
            "delivery_redis_memory_headroom_bytes",
            "Bytes the shared Redis may still use before maxmemory (+Inf: no maxmemory set).",
        )
        headroom.add_metric([], usage.headroom_bytes)
        ratio = GaugeMetricFamily(
            "delivery_redis_memory_used_ratio",
            "used_memory / maxmemory of the shared Redis (0 when no maxmemory is set).",
        )
        ratio.add_metric([], usage.used_bytes / usage.max_bytes if usage.max_bytes > 0 else 0.0)
        yield headroom
        yield ratio

    def _queues(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "delivery_queue_depth",
            "Messages ready in the broker queue (all priorities), not yet taken by a worker.",
            labels=["queue"],
        )
        age = GaugeMetricFamily(
            "delivery_queue_oldest_age_seconds",
            "Age of the oldest ready message in the queue: seconds since its delivery's ledger "
            "record last changed (its enqueue, for a new message); 0 when the queue is empty.",
            labels=["queue"],
        )
        now = self.clock()
        for queue in self.settings.queues:
            pipe = self.redis.pipeline(transaction=False)
            for name in queue_names(queue):
                pipe.llen(name)
            pipe.lindex(queue, -1)  # LPUSH in, BRPOP out: the oldest is at the tail
            *lengths, oldest = pipe.execute()
            depth.add_metric([queue], float(sum(int(n) for n in lengths)))
            age.add_metric([queue], self._age(oldest, now))
        yield depth
        yield age

    def _lanes(self) -> Iterator[GaugeMetricFamily]:
        """Waiting work in the lanes (worker.lanes) per priority and tenant; a tenant the
        operator did not name in ``DELIVERY_TENANT_WEIGHTS`` counts under ``other``."""
        depth = GaugeMetricFamily(
            "delivery_lane_depth",
            "Deliveries waiting in their lane (worker.lanes), by priority and tenant.",
            labels=["priority", "tenant"],
        )
        oldest = GaugeMetricFamily(
            "delivery_lane_oldest_wait_seconds",
            "How long the oldest delivery of the lane has waited (0 when empty).",
            labels=["priority", "tenant"],
        )
        named = parse_weights(self.settings.tenant_weights)
        depths: dict[tuple[str, str], int] = {(p, "default"): 0 for p in PRIORITIES}
        ages: dict[tuple[str, str], float] = {(p, "default"): 0.0 for p in PRIORITIES}
        lanes = Lanes(self.redis, keys_for(self.settings))
        for lane in lanes.depths(self.clock()):
            key = (lane.priority, tenant_label(lane.tenant, named))
            depths[key] = depths.get(key, 0) + lane.depth
            ages[key] = max(ages.get(key, 0.0), lane.oldest_age_s)
        for key in sorted(depths):
            depth.add_metric(list(key), float(depths[key]))
            oldest.add_metric(list(key), ages[key])
        yield depth
        yield oldest

    def _age(self, raw: bytes | None, now: float) -> float:
        if raw is None:
            return 0.0
        try:
            task_id = json.loads(raw)["headers"]["id"]
        except (ValueError, KeyError, TypeError):
            return 0.0
        record = self.stores.ledger.get(str(task_id))
        if record is None:
            return 0.0
        since = record.created_at if record.state == "queued" else record.updated_at
        return max(now - since, 0.0) if since > 0 else 0.0

    def _limiter_usage(self) -> GaugeMetricFamily:
        usage = GaugeMetricFamily(
            "delivery_limiter_usage_ratio",
            "Grants in the current window of each global limit divided by the limit "
            "(limit: bucket:count/window, for this exporter's egress identity).",
            labels=["provider", "limit"],
        )
        identity = self.settings.egress_identity
        for provider in PROVIDERS:
            buckets = set(DRIVERS[provider].rate_limits) | set(
                self.settings.rate_limits.get(provider, {})
            )
            for bucket in sorted(buckets):
                limits = [x for x in self.settings.limits(provider, bucket) if not _is_pacing(x)]
                if not limits:
                    continue
                key = limiter_key(provider, identity, bucket, prefix=self.settings.redis_namespace)
                for limit, used in zip(limits, self.stores.limiter.usage(key, limits), strict=True):
                    usage.add_metric([provider, f"{bucket}:{limit}"], used / limit.count)
        return usage

    def _balances(self) -> Iterator[GaugeMetricFamily]:
        balance = GaugeMetricFamily(
            "delivery_credit_balance",
            "The provider's balance at its last check on beat (unit: credits or money).",
            labels=["provider", "unit", "currency"],
        )
        checked = GaugeMetricFamily(
            "delivery_credit_balance_checked_timestamp_seconds",
            "When the provider's balance was last read (Unix seconds).",
            labels=["provider"],
        )
        for provider, item in sorted(self.stores.balances.read_all().items()):
            balance.add_metric([provider, item.unit, currency_label(item.currency)], item.amount)
            checked.add_metric([provider], item.checked_at)
        yield balance
        yield checked
