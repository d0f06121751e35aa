"""Provider health shared by every worker: payment pauses and circuit breakers.

Failover and breaker state kept per process forgets itself and flaps (symfony/symfony#50162,
#52551), so all of it lives in Redis under ``dw:health:`` and every worker reads the same state.
:class:`MemoryHealthStore` is the in-process stub with the same contract.

**Pause** (delivery semantic 4). Out of credit (HTTP 402, code 11, ``NOT_CREDIT``) is a visible,
resumable state of the *provider*, not a failure of a message: :meth:`HealthStore.pause` marks it
for every worker until an operator (or a balance check) calls :meth:`HealthStore.resume`. The
first pause wins: later pauses by other workers keep its ``since``, ``reason`` and ``by``.

**Circuit breaker** (delivery semantic 5), one per provider::

            failure_threshold consecutive failures within window_s
    CLOSED ───────────────────────────────────────────────────────▶ OPEN
      ▲                                                            │  open_s elapses
      │ probe succeeds                                             ▼
      └──────────────────────────────────────────────────────── HALF_OPEN
                       probe fails: OPEN again, open_s doubled up to max_open_s

- closed: every request is allowed; a success clears the failure streak.
- open: every request is refused with the time left (``Decision.wait_s``).
- half-open: exactly one request across all workers is allowed as the probe
  (``Decision.probe``); the others are refused until the probe reports, or until its lease
  (``probe_timeout_s``) runs out, so a probe whose worker died does not wedge the breaker.
- Results of requests that started before the breaker opened (stragglers) are ignored while it
  is open: they say nothing about the provider *now*.

Record only failures that say the provider is unhealthy (5xx, 503, timeouts, connection errors),
never a 4xx caused by the message.

Timing uses Redis's clock (``TIME`` inside Lua) in :class:`RedisHealthStore`, so host clock skew
does not matter, and an injectable clock in :class:`MemoryHealthStore`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "BreakerConfig",
    "BreakerState",
    "BreakerStateName",
    "Decision",
    "HealthStore",
    "PauseInfo",
]

BreakerStateName = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Breaker tuning, in seconds. ``max_open_s == open_s`` disables the doubling."""

    failure_threshold: int = 5
    window_s: float = 60.0
    open_s: float = 30.0
    max_open_s: float = 300.0
    probe_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        for name in ("window_s", "open_s", "max_open_s", "probe_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.max_open_s < self.open_s:
            raise ValueError("max_open_s must be >= open_s")


@dataclass(frozen=True, slots=True)
class PauseInfo:
    """Why and since when (Unix seconds) a provider is paused, and who paused it."""

    provider: str
    reason: str
    since: float
    by: str


@dataclass(frozen=True, slots=True)
class BreakerState:
    """A breaker as operators see it.

    ``failures``: the current streak of consecutive failures (when open: the streak that
    opened it, plus failed probes). ``opened_at``: when it last opened, on the store's clock
    (Unix seconds for Redis), ``None`` when closed. ``retry_in_s``: seconds until a request may
    go through (0 when closed, or half-open with the probe slot free). ``open_s``: the current
    open period (doubles on each failed probe).
    """

    provider: str
    state: BreakerStateName
    failures: int
    opened_at: float | None
    retry_in_s: float
    open_s: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of :meth:`HealthStore.allow_request`.

    ``probe`` is true for the one request allowed while half-open: its outcome decides the
    breaker, so report it with :meth:`HealthStore.record_success` / ``record_failure``.
    """

    allowed: bool
    state: BreakerStateName
    wait_s: float = 0.0
    probe: bool = False


class HealthStore(Protocol):
    """Pauses and breakers of every provider, shared by all workers."""

    def pause(self, provider: str, reason: str, by: str) -> PauseInfo:
        """Pause ``provider`` for every worker; returns the pause in force (the first one wins)."""
        ...

    def resume(self, provider: str) -> bool:
        """Lift the pause; returns whether the provider was paused."""
        ...

    def paused(self, provider: str) -> PauseInfo | None: ...

    def list_paused(self) -> list[PauseInfo]:
        """Every paused provider, sorted by name."""
        ...

    def allow_request(self, provider: str) -> Decision: ...

    def record_success(self, provider: str) -> BreakerState: ...

    def record_failure(self, provider: str) -> BreakerState: ...

    def state(self, provider: str) -> BreakerState: ...

    def reset(self, provider: str) -> None:
        """Close the breaker by hand (operator action), forgetting its history."""
        ...
