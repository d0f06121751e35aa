"""Provider health in Redis: one Lua script per transition (``pause.lua``, ``breaker.lua``)."""

from __future__ import annotations

import json
import math
from typing import Any

import redis

from worker.stores._redis import load_script, text
from worker.stores.health.base import (
    BreakerConfig,
    BreakerState,
    BreakerStateName,
    Decision,
    HealthStore,
    PauseInfo,
)
from worker.stores.keys import DEFAULT_NAMESPACE, Keys

__all__ = ["RedisHealthStore"]

_US = 1_000_000


class RedisHealthStore(HealthStore):
    """Health in Redis, one Lua script per transition, on Redis's clock.

    Keys:

    - ``<prefix>:health:paused``: hash, provider → JSON ``{reason, by, since_s, since_us}``;
      no expiry (a pause lasts until resumed).
    - ``<prefix>:health:breaker:<provider>``: hash (see the script); absent when closed with no
      recent failure, expiring ``window_s`` after the last failure while closed, kept while open.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        prefix: str = DEFAULT_NAMESPACE,
        *,
        config: BreakerConfig | None = None,
    ) -> None:
        self._redis = redis_client
        self.prefix = prefix
        self.config = config or BreakerConfig()
        self.keys = Keys(prefix)
        self.paused_key = self.keys.health_paused
        self._pause_script = load_script(redis_client, "worker.stores.health", "pause.lua")
        self._breaker_script = load_script(redis_client, "worker.stores.health", "breaker.lua")

    def breaker_key(self, provider: str) -> str:
        return self.keys.health_breaker(provider)

    # -- pause --------------------------------------------------------------------------------

    def pause(self, provider: str, reason: str, by: str) -> PauseInfo:
        raw = self._pause_script(keys=[self.paused_key], args=[provider, reason, by])
        return self.pause_info(provider, raw)

    def resume(self, provider: str) -> bool:
        return bool(self._redis.hdel(self.paused_key, provider))

    def paused(self, provider: str) -> PauseInfo | None:
        raw = self._redis.hget(self.paused_key, provider)
        return None if raw is None else self.pause_info(provider, raw)

    def list_paused(self) -> list[PauseInfo]:
        entries: dict[Any, Any] = self._redis.hgetall(self.paused_key)
        infos = [self.pause_info(text(k), v) for k, v in entries.items()]
        return sorted(infos, key=lambda info: info.provider)

    @staticmethod
    def pause_info(provider: str, raw: Any) -> PauseInfo:
        """A pause as stored (JSON, the ``paused`` hash's value for ``provider``)."""
        data = json.loads(text(raw))
        since = int(data["since_s"]) + int(data["since_us"]) / _US
        return PauseInfo(provider=provider, reason=data["reason"], since=since, by=data["by"])

    # -- breaker ------------------------------------------------------------------------------

    def _breaker(self, op: str, provider: str) -> tuple[BreakerState, bool, bool]:
        c = self.config
        args: list[str | int] = [
            op,
            c.failure_threshold,
            math.ceil(c.window_s * _US),
            math.ceil(c.open_s * _US),
            math.ceil(c.max_open_s * _US),
            math.ceil(c.probe_timeout_s * _US),
        ]
        reply: list[Any] = self._breaker_script(keys=[self.breaker_key(provider)], args=args)
        phase, failures, opened_at, retry_in, open_us, allowed, probe = reply
        name = _state_name(text(phase))
        state = BreakerState(
            provider=provider,
            state=name,
            failures=int(failures),
            opened_at=None if name == "closed" else int(opened_at) / _US,
            retry_in_s=int(retry_in) / _US,
            open_s=int(open_us) / _US if name != "closed" else 0.0,
        )
        return state, bool(allowed), bool(probe)

    def allow_request(self, provider: str) -> Decision:
        state, allowed, probe = self._breaker("allow", provider)
        return Decision(
            allowed=allowed,
            state=state.state,
            wait_s=0.0 if allowed else state.retry_in_s,
            probe=probe,
        )

    def record_success(self, provider: str) -> BreakerState:
        return self._breaker("success", provider)[0]

    def record_failure(self, provider: str) -> BreakerState:
        return self._breaker("failure", provider)[0]

    def state(self, provider: str) -> BreakerState:
        return self._breaker("state", provider)[0]

    def reset(self, provider: str) -> None:
        self._redis.delete(self.breaker_key(provider))


def _state_name(value: str) -> BreakerStateName:
    if value == "open":
        return "open"
    if value == "half_open":
        return "half_open"
    if value == "closed":
        return "closed"
    raise ValueError(f"unknown breaker state {value!r}")
