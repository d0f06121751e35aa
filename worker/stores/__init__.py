"""Shared state behind small interfaces: ledger, parking, provider health, limiter, metrics.

Each store is a package with its interface (``base``, a ``typing.Protocol``), a Redis backend
(``redis``, Lua scripts as ``.lua`` files beside it) shared by every worker, and an in-memory
stub (``memory``, an injectable clock where time matters) for tests and single-process tools.
One contract test suite per store runs against both (``tests/stores``).

Standalone on purpose: nothing here imports settings, Celery or the rest of the worker.
:class:`Stores` bundles one of each; ``worker.runtime`` builds it from the settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from worker.stores.balances import (
    Balances,
    MemoryBalances,
    RecordedBalance,
    RedisBalances,
)
from worker.stores.health import (
    BreakerConfig,
    BreakerState,
    BreakerStateName,
    Decision,
    HealthStore,
    MemoryHealthStore,
    PauseInfo,
    RedisHealthStore,
)
from worker.stores.keys import Keys, keys_for
from worker.stores.ledger import (
    FINAL_STATES,
    STATE_RANK,
    DeadLetters,
    DeliveryRecord,
    Ledger,
    MemoryLedger,
    Records,
    RedisLedger,
    RunLocks,
    Schedule,
    TagIndex,
)
from worker.stores.limiter import (
    DEFAULT_HIGH_SHARE,
    DEFAULT_SAFETY_MARGIN_S,
    Limit,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    limiter_key,
)
from worker.stores.metrics import MemoryMetrics, Metrics, RedisMetrics
from worker.stores.parking import MemoryParking, ParkedMessage, Parking, RedisParking
from worker.stores.suppression import (
    MemorySuppressionStore,
    RedisSuppressionStore,
    SoftBouncePolicy,
    SuppressionStore,
)

__all__ = [
    "DEFAULT_HIGH_SHARE",
    "DEFAULT_SAFETY_MARGIN_S",
    "FINAL_STATES",
    "STATE_RANK",
    "Balances",
    "BreakerConfig",
    "BreakerState",
    "BreakerStateName",
    "DeadLetters",
    "Decision",
    "DeliveryRecord",
    "HealthStore",
    "Keys",
    "Ledger",
    "Limit",
    "MemoryBalances",
    "MemoryHealthStore",
    "MemoryLedger",
    "MemoryMetrics",
    "MemoryParking",
    "MemoryRateLimiter",
    "MemorySuppressionStore",
    "Metrics",
    "ParkedMessage",
    "Parking",
    "PauseInfo",
    "RateLimiter",
    "RecordedBalance",
    "Records",
    "RedisBalances",
    "RedisHealthStore",
    "RedisLedger",
    "RedisMetrics",
    "RedisParking",
    "RedisRateLimiter",
    "RedisSuppressionStore",
    "RunLocks",
    "Schedule",
    "SoftBouncePolicy",
    "Stores",
    "SuppressionStore",
    "TagIndex",
    "keys_for",
    "limiter_key",
]


@dataclass(frozen=True)
class Stores:
    """One of each store, as the delivery service and the operator tools use them."""

    ledger: Ledger
    parking: Parking
    health: HealthStore
    limiter: RateLimiter
    metrics: Metrics
    balances: Balances = field(default_factory=MemoryBalances)
    """Last ``/me`` readings (added after the others: a default keeps hand-built bundles
    valid)."""
    suppression: SuppressionStore = field(default_factory=MemorySuppressionStore)
    """Suppressed recipients per channel (``worker.suppression``)."""

    @classmethod
    def on_redis(
        cls,
        client: redis.Redis,
        *,
        breaker: BreakerConfig | None = None,
        safety_margin_s: float = DEFAULT_SAFETY_MARGIN_S,
        suppression: SoftBouncePolicy | None = None,
        keys: Keys | None = None,
        high_share: float = DEFAULT_HIGH_SHARE,
    ) -> Stores:
        """The shared stores of every worker, on one Redis connection pool, under one
        namespace (``keys``, the default ``dw`` without)."""
        keys = keys or Keys()
        ns = keys.namespace
        return cls(
            ledger=RedisLedger(client, keys=keys),
            parking=RedisParking(client, keys=keys),
            health=RedisHealthStore(client, ns, config=breaker),
            limiter=RedisRateLimiter(
                client, ns, safety_margin_s=safety_margin_s, high_share=high_share
            ),
            metrics=RedisMetrics(client, keys=keys),
            balances=RedisBalances(client, keys=keys),
            suppression=RedisSuppressionStore(client, ns, policy=suppression),
        )

    @classmethod
    def in_memory(
        cls,
        *,
        clock: Callable[[], float] = time.time,
        breaker: BreakerConfig | None = None,
        safety_margin_s: float = DEFAULT_SAFETY_MARGIN_S,
        suppression: SoftBouncePolicy | None = None,
        high_share: float = DEFAULT_HIGH_SHARE,
    ) -> Stores:
        """In-process stubs sharing one clock (Unix seconds): for tests and one-process tools."""
        return cls(
            ledger=MemoryLedger(clock),
            parking=MemoryParking(clock),
            health=MemoryHealthStore(clock, config=breaker),
            limiter=MemoryRateLimiter(
                clock, safety_margin_s=safety_margin_s, high_share=high_share
            ),
            metrics=MemoryMetrics(),
            balances=MemoryBalances(),
            suppression=MemorySuppressionStore(clock, policy=suppression),
        )
