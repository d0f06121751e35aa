"""Per-process resources: one httpx client, the shared stores, drivers built once.

Built lazily on first use and rebuilt after a fork, so a Celery prefork child never shares the
parent's sockets. A worker's stores are the Redis ones (one connection pool); tests and
single-process tools pass in-memory stores instead (:meth:`Runtime.in_memory`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import redis

from worker.config import Settings, get_settings
from worker.errors import ConfigurationError
from worker.http import build_client
from worker.providers import Driver, make_driver
from worker.redis_client import shared_redis
from worker.stores import (
    BreakerConfig,
    RedisHealthStore,
    RedisLedger,
    RedisMetrics,
    SoftBouncePolicy,
    Stores,
    keys_for,
)
from worker.stores.hotpath import ComposedHotPath, HotPath, RedisHotPath
from worker.stores.ledger import DeadLetters, Records, RunLocks, Schedule, TagIndex
from worker.stores.suppression import RecipientHasher, RedisSuppressionStore
from worker.stores.tracking import MemoryTrackingStore, RedisTrackingStore, TrackingStore

__all__ = ["Runtime", "breaker_config", "get_runtime", "reset_runtime", "suppression_policy"]


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        client: httpx.Client | None = None,
        stores: Stores | None = None,
        tracking: TrackingStore | None = None,
    ) -> None:
        """``stores`` defaults to the Redis stores at ``settings.shared_redis_url``, and
        ``tracking`` to the Redis tracking store beside them (in memory with given stores)."""
        self.settings = settings
        self.keys = keys_for(settings)
        """The shared-state key families under this worker's namespace."""
        self.client = client or build_client(
            connect_timeout_s=settings.http_connect_timeout_s,
            read_timeout_s=settings.http_read_timeout_s,
            total_timeout_s=settings.http_deadline_s,
            local_address=settings.local_address,
        )
        self.redis: redis.Redis | None = None
        if stores is None:
            self.redis = shared_redis(settings, health_check_interval=30)
            stores = Stores.on_redis(
                self.redis,
                breaker=breaker_config(settings),
                safety_margin_s=settings.limiter_safety_margin_s,
                suppression=suppression_policy(settings),
                keys=keys_for(settings),
                high_share=settings.limiter_high_share,
            )
        self.stores = stores
        if tracking is None:
            tracking = (
                RedisTrackingStore(self.redis, keys=keys_for(settings))
                if self.redis is not None
                else MemoryTrackingStore()
            )
        self.tracking = tracking
        self.event_publisher: Callable[[str, dict[str, Any], str, str], None] | None = None
        """Publishes the application's delivery events (``worker.tracking.service``); ``None``:
        the current Celery app. Tests and tools inject their own."""
        self.ledger = stores.ledger
        """Every role of the ledger (the stores' own wiring, tools); features use a role below."""
        self.records: Records = stores.ledger
        """Delivery records: create, read, typed transitions and marks, the sweeper's view."""
        self.run_locks: RunLocks = stores.ledger
        """A delivery's send lock (cancel's; a run's own go through the hot path)."""
        self.schedule: Schedule = stores.ledger
        """``scheduled`` deliveries by due time."""
        self.dead_letters: DeadLetters = stores.ledger
        """Poison and refused messages set aside."""
        self.tag_index: TagIndex = stores.ledger
        """Caller-chosen provider tags (SMS Partner reconciliation)."""
        self.limiter = stores.limiter
        self.health = stores.health
        self.parking = stores.parking
        self.metrics = stores.metrics
        self.suppression = stores.suppression
        self.hasher = RecipientHasher(settings.suppression_key)
        """Recipient → suppression key (HMAC-SHA256 under the deployment's secret)."""
        self.hotpath: HotPath = _hotpath(self.redis, stores, tracking)
        """A run's first and last shared-state steps, one round trip each on Redis."""
        self._drivers: dict[str, Driver[Any]] = {}
        self._lock = threading.Lock()

    @classmethod
    def in_memory(
        cls,
        settings: Settings,
        *,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Runtime:
        """A runtime on fresh in-memory stores (no Redis): one process, tests, tools."""
        stores = Stores.in_memory(
            clock=clock,
            breaker=breaker_config(settings),
            safety_margin_s=settings.limiter_safety_margin_s,
            suppression=suppression_policy(settings),
            high_share=settings.limiter_high_share,
        )
        return cls(settings, client=client, stores=stores, tracking=MemoryTrackingStore(clock))

    def driver(self, provider: str) -> Driver[Any]:
        with self._lock:
            found = self._drivers.get(provider)
            if found is None:
                if provider not in self.settings.enabled_providers():
                    raise ConfigurationError(
                        f"provider {provider} is not configured on this worker "
                        f"(set DELIVERY_{provider.upper()}_API_KEY)",
                        provider=provider,
                    )
                found = make_driver(
                    provider,
                    self.client,
                    api_key=self.settings.api_key(provider) or "",
                    base_url=self.settings.base_url(provider),
                    **self.settings.provider_extras(provider),
                )
                self._drivers[provider] = found
            return found

    def ping(self) -> None:
        """Reach the shared Redis (worker start-up check); in-memory stores need nothing."""
        if self.redis is not None:
            self.redis.ping()

    def close(self) -> None:
        self.client.close()
        if self.redis is not None:
            self.redis.close()


def _hotpath(client: redis.Redis | None, stores: Stores, tracking: TrackingStore) -> HotPath:
    """The one-script hot path when every store it spans is on ``client``; else the stores'
    own calls (in-memory stores, a mix)."""
    on_redis = (
        isinstance(stores.ledger, RedisLedger)
        and stores.ledger.redis is client
        and isinstance(stores.health, RedisHealthStore)
        and isinstance(stores.metrics, RedisMetrics)
        and isinstance(tracking, RedisTrackingStore)
    )
    if client is not None and on_redis:
        assert isinstance(stores.health, RedisHealthStore)
        assert isinstance(stores.metrics, RedisMetrics)
        assert isinstance(tracking, RedisTrackingStore)
        supp = stores.suppression
        return RedisHotPath(
            client,
            health=stores.health,
            metrics=stores.metrics,
            tracking=tracking,
            suppression=supp if isinstance(supp, RedisSuppressionStore) else None,
        )
    return ComposedHotPath(
        stores.ledger, stores.health, stores.metrics, tracking, stores.suppression
    )


def suppression_policy(settings: Settings) -> SoftBouncePolicy:
    return SoftBouncePolicy(
        threshold=settings.suppression_soft_threshold,
        window_s=settings.suppression_soft_window_s,
        suppress_s=settings.suppression_soft_suppress_s,
    )


def breaker_config(settings: Settings) -> BreakerConfig:
    return BreakerConfig(
        failure_threshold=settings.breaker_failure_threshold,
        window_s=settings.breaker_window_s,
        open_s=settings.breaker_open_s,
        max_open_s=settings.breaker_max_open_s,
    )


_runtime: Runtime | None = None
_runtime_pid: int | None = None
_guard = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime, _runtime_pid
    with _guard:
        if _runtime is None or _runtime_pid != os.getpid():
            _runtime = Runtime(get_settings())
            _runtime_pid = os.getpid()
        return _runtime


def reset_runtime() -> None:
    """Forget this process's resources (after fork, or in tests)."""
    global _runtime, _runtime_pid
    with _guard:
        _runtime = None
        _runtime_pid = None


def _after_fork_in_child() -> None:
    # No lock here: another thread of the parent may have held it at fork time.
    global _runtime, _runtime_pid, _guard
    _guard = threading.Lock()
    _runtime = None
    _runtime_pid = None


os.register_at_fork(after_in_child=_after_fork_in_child)
