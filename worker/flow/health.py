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

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import redis

__all__ = [
    "BreakerConfig",
    "BreakerState",
    "BreakerStateName",
    "Decision",
    "HealthStore",
    "MemoryHealthStore",
    "PauseInfo",
    "RedisHealthStore",
]

BreakerStateName = Literal["closed", "open", "half_open"]
_US = 1_000_000


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


# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------

# KEYS[1] the pauses hash; ARGV provider, reason, by. Returns the JSON of the pause in force.
_PAUSE_LUA = """
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then
  return existing
end
local t = redis.call('TIME')
local value = cjson.encode({reason = ARGV[2], by = ARGV[3],
                            since_s = tonumber(t[1]), since_us = tonumber(t[2])})
redis.call('HSET', KEYS[1], ARGV[1], value)
return value
"""

# The whole breaker in one script, so every transition is atomic across workers.
#
# KEYS[1]  the provider's breaker hash, fields:
#            state        'open' (absent: closed; half-open is "open and open period over")
#            fails        closed: space-separated times (us) of the current failure streak
#            failures     open: length of the streak that opened it, plus failed probes
#            opened_at    open: when it (re)opened (us)
#            open_us      open: the current open period (us)
#            probe_until  half-open: end of the lease of the probe in flight (us), 0 if none
# ARGV     op ('allow' | 'success' | 'failure' | 'state'), failure_threshold, window_us,
#          open_us, max_open_us, probe_us
# Returns  {state, failures, opened_at_us, retry_in_us, open_us, allowed, probe}
_BREAKER_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local key = KEYS[1]
local op = ARGV[1]
local threshold = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local base_open = tonumber(ARGV[4])
local max_open = tonumber(ARGV[5])
local probe_lease = tonumber(ARGV[6])

local h = redis.call('HMGET', key, 'state', 'fails', 'failures', 'opened_at', 'open_us',
                     'probe_until')
local phase = 'closed'
local fails = {}
local failures = tonumber(h[3] or '0') or 0
local opened_at = tonumber(h[4] or '0') or 0
local open_us = tonumber(h[5] or '0') or 0
local probe_until = tonumber(h[6] or '0') or 0
if h[1] == 'open' then
  if now >= opened_at + open_us then phase = 'half_open' else phase = 'open' end
else
  for ts in string.gmatch(h[2] or '', '%d+') do
    local v = tonumber(ts)
    if v > now - window then table.insert(fails, v) end
  end
  failures = #fails
end

local function fmt(v) return string.format('%d', v) end
local function save_open()
  redis.call('DEL', key)
  redis.call('HSET', key, 'state', 'open', 'failures', failures, 'opened_at', fmt(opened_at),
             'open_us', fmt(open_us), 'probe_until', fmt(probe_until))
end
local function close()
  redis.call('DEL', key)
  phase = 'closed'
  fails = {}
  failures = 0
  opened_at = 0
  open_us = 0
  probe_until = 0
end

local allowed = 0
local probe = 0
if op == 'allow' then
  if phase == 'closed' then
    allowed = 1
  elseif phase == 'half_open' and probe_until <= now then
    probe_until = now + probe_lease
    redis.call('HSET', key, 'probe_until', fmt(probe_until))
    allowed = 1
    probe = 1
  end
elseif op == 'failure' then
  if phase == 'closed' then
    table.insert(fails, now)
    while #fails > threshold do table.remove(fails, 1) end
    failures = #fails
    if failures >= threshold then
      phase = 'open'
      opened_at = now
      open_us = base_open
      probe_until = 0
      save_open()
    else
      local parts = {}
      for i, v in ipairs(fails) do parts[i] = fmt(v) end
      redis.call('HSET', key, 'fails', table.concat(parts, ' '))
      redis.call('PEXPIRE', key, math.ceil(window / 1000) + 1)
    end
  elseif phase == 'half_open' then
    -- the probe failed: open again, for longer
    phase = 'open'
    failures = failures + 1
    opened_at = now
    open_us = math.min(math.max(open_us, base_open) * 2, math.max(max_open, base_open))
    probe_until = 0
    save_open()
  end
elseif op == 'success' then
  if phase == 'closed' then
    if #fails > 0 then close() end
  elseif phase == 'half_open' then
    close()
  end
end

local retry_in = 0
if phase == 'open' then
  retry_in = opened_at + open_us - now
elseif phase == 'half_open' and probe_until > now and probe == 0 then
  retry_in = probe_until - now
end
return {phase, failures, fmt(opened_at), fmt(retry_in), fmt(open_us), allowed, probe}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
        prefix: str = "dw",
        *,
        config: BreakerConfig | None = None,
    ) -> None:
        self._redis = redis_client
        self.prefix = prefix
        self.config = config or BreakerConfig()
        self._paused_key = f"{prefix}:health:paused"
        self._pause_script = redis_client.register_script(_PAUSE_LUA)
        self._breaker_script = redis_client.register_script(_BREAKER_LUA)

    def breaker_key(self, provider: str) -> str:
        return f"{self.prefix}:health:breaker:{provider}"

    # -- pause --------------------------------------------------------------------------------

    def pause(self, provider: str, reason: str, by: str) -> PauseInfo:
        raw = self._pause_script(keys=[self._paused_key], args=[provider, reason, by])
        return self._pause_info(provider, raw)

    def resume(self, provider: str) -> bool:
        return bool(self._redis.hdel(self._paused_key, provider))

    def paused(self, provider: str) -> PauseInfo | None:
        raw = self._redis.hget(self._paused_key, provider)
        return None if raw is None else self._pause_info(provider, raw)

    def list_paused(self) -> list[PauseInfo]:
        entries: dict[Any, Any] = self._redis.hgetall(self._paused_key)
        infos = [self._pause_info(_text(k), v) for k, v in entries.items()]
        return sorted(infos, key=lambda info: info.provider)

    @staticmethod
    def _pause_info(provider: str, raw: Any) -> PauseInfo:
        data = json.loads(_text(raw))
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
        name = _state_name(_text(phase))
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


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


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
