"""The in-process health stub: the same pauses and breaker transitions, an injectable clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.stores.health.base import (
    BreakerConfig,
    BreakerState,
    BreakerStateName,
    Decision,
    HealthStore,
    PauseInfo,
)

__all__ = ["MemoryHealthStore"]


@dataclass
class _Breaker:
    open: bool = False
    fails: list[float] = field(default_factory=list)
    failures: int = 0
    opened_at: float = 0.0
    open_s: float = 0.0
    probe_until: float = 0.0


class MemoryHealthStore(HealthStore):
    """The in-process stub: same contract and transitions as Redis, an injectable clock.

    Thread-safe, shared by nothing else: for tests and single-process tools only.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        config: BreakerConfig | None = None,
    ) -> None:
        self._clock = clock
        self.config = config or BreakerConfig()
        self._lock = threading.Lock()
        self._paused: dict[str, PauseInfo] = {}
        self._breakers: dict[str, _Breaker] = {}

    # -- pause --------------------------------------------------------------------------------

    def pause(self, provider: str, reason: str, by: str) -> PauseInfo:
        with self._lock:
            info = self._paused.get(provider)
            if info is None:
                info = PauseInfo(provider=provider, reason=reason, since=self._clock(), by=by)
                self._paused[provider] = info
            return info

    def resume(self, provider: str) -> bool:
        with self._lock:
            return self._paused.pop(provider, None) is not None

    def paused(self, provider: str) -> PauseInfo | None:
        with self._lock:
            return self._paused.get(provider)

    def list_paused(self) -> list[PauseInfo]:
        with self._lock:
            return [self._paused[p] for p in sorted(self._paused)]

    # -- breaker ------------------------------------------------------------------------------

    def _phase(self, b: _Breaker, now: float) -> BreakerStateName:
        if b.open:
            return "half_open" if now >= b.opened_at + b.open_s else "open"
        b.fails = [ts for ts in b.fails if ts > now - self.config.window_s]
        b.failures = len(b.fails)
        return "closed"

    def _snapshot(
        self, provider: str, b: _Breaker, phase: BreakerStateName, now: float, probe: bool
    ) -> BreakerState:
        retry_in = 0.0
        if phase == "open":
            retry_in = b.opened_at + b.open_s - now
        elif phase == "half_open" and b.probe_until > now and not probe:
            retry_in = b.probe_until - now
        return BreakerState(
            provider=provider,
            state=phase,
            failures=b.failures,
            opened_at=None if phase == "closed" else b.opened_at,
            retry_in_s=retry_in,
            open_s=b.open_s if phase != "closed" else 0.0,
        )

    def allow_request(self, provider: str) -> Decision:
        with self._lock:
            now = self._clock()
            b = self._breakers.setdefault(provider, _Breaker())
            phase = self._phase(b, now)
            allowed = probe = False
            if phase == "closed":
                allowed = True
            elif phase == "half_open" and b.probe_until <= now:
                b.probe_until = now + self.config.probe_timeout_s
                allowed = probe = True
            snap = self._snapshot(provider, b, phase, now, probe)
            return Decision(
                allowed=allowed,
                state=phase,
                wait_s=0.0 if allowed else snap.retry_in_s,
                probe=probe,
            )

    def record_failure(self, provider: str) -> BreakerState:
        c = self.config
        with self._lock:
            now = self._clock()
            b = self._breakers.setdefault(provider, _Breaker())
            phase = self._phase(b, now)
            if phase == "closed":
                b.fails = [*b.fails, now][-c.failure_threshold :]
                b.failures = len(b.fails)
                if b.failures >= c.failure_threshold:
                    phase = "open"
                    b.open, b.fails = True, []
                    b.opened_at, b.open_s, b.probe_until = now, c.open_s, 0.0
            elif phase == "half_open":
                # the probe failed: open again, for longer
                phase = "open"
                b.failures += 1
                b.opened_at = now
                b.open_s = min(max(b.open_s, c.open_s) * 2, c.max_open_s)
                b.probe_until = 0.0
            return self._snapshot(provider, b, phase, now, False)

    def record_success(self, provider: str) -> BreakerState:
        with self._lock:
            now = self._clock()
            b = self._breakers.setdefault(provider, _Breaker())
            phase = self._phase(b, now)
            if phase in ("closed", "half_open"):
                b = self._breakers[provider] = _Breaker()
                phase = "closed"
            return self._snapshot(provider, b, phase, now, False)

    def state(self, provider: str) -> BreakerState:
        with self._lock:
            now = self._clock()
            b = self._breakers.get(provider) or _Breaker()
            return self._snapshot(provider, b, self._phase(b, now), now, False)

    def reset(self, provider: str) -> None:
        with self._lock:
            self._breakers.pop(provider, None)
