"""Per-process resources: one httpx client, one Redis connection pool, drivers built once.

Built lazily on first use and rebuilt after a fork, so a Celery prefork child never shares the
parent's sockets.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import httpx
import redis

from worker.config import Settings, get_settings
from worker.errors import ConfigurationError
from worker.flow import BreakerConfig, RedisHealthStore, RedisRateLimiter
from worker.http import build_client
from worker.ledger import Ledger
from worker.parking import Parking
from worker.providers import Driver, make_driver

__all__ = ["Runtime", "get_runtime", "reset_runtime"]


class Runtime:
    def __init__(self, settings: Settings, *, client: httpx.Client | None = None) -> None:
        self.settings = settings
        self.client = client or build_client(
            connect_timeout_s=settings.http_connect_timeout_s,
            read_timeout_s=settings.http_read_timeout_s,
            local_address=settings.local_address,
        )
        self.redis = redis.Redis.from_url(settings.shared_redis_url, health_check_interval=30)
        self.ledger = Ledger(self.redis)
        self.limiter = RedisRateLimiter(
            self.redis, safety_margin_s=settings.limiter_safety_margin_s
        )
        self.health = RedisHealthStore(
            self.redis,
            config=BreakerConfig(
                failure_threshold=settings.breaker_failure_threshold,
                window_s=settings.breaker_window_s,
                open_s=settings.breaker_open_s,
                max_open_s=settings.breaker_max_open_s,
            ),
        )
        self.parking = Parking(self.redis)
        self._drivers: dict[str, Driver[Any]] = {}
        self._lock = threading.Lock()

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

    def metric(self, provider: str, name: str, amount: int = 1) -> None:
        """Per-provider counters shared by every worker (``delivery-worker providers``)."""
        self.redis.hincrby(f"dw:metrics:{provider}", name, amount)

    def close(self) -> None:
        self.client.close()
        self.redis.close()


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
