"""Redis must never evict the worker's keys: the eviction-policy check and the memory headroom.

Ledger records, idempotency keys and locks carry TTLs. Under ``maxmemory`` with a
``volatile-*`` policy Redis evicts exactly those keys first (``allkeys-*`` evicts any key):
a lost idempotency key sends a message twice, a lost lock lets two workers send it, a lost
ledger record forgets a delivery. So the worker (at start) and ``delivery-worker check-config``
read ``CONFIG GET maxmemory-policy`` and refuse anything but ``noeviction``, unless the operator
opts in with ``DELIVERY_ALLOW_EVICTION=true`` (then a loud warning). A managed Redis may
disable ``CONFIG``: that is a warning, not a refusal (its policy is the provider's console's).

The headroom (``maxmemory - used_memory``) is what the metrics exporter reports, so an alert
fires before a ``noeviction`` Redis starts refusing writes. docs/threat-model-receiver.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from worker.errors import ConfigurationError

__all__ = ["EvictionCheck", "MemoryUsage", "check_eviction_policy", "memory_usage"]

SAFE_POLICY = "noeviction"


@dataclass(frozen=True)
class EvictionCheck:
    """What the check found: ``policy`` (None when CONFIG is refused) and a warning to log."""

    policy: str | None
    warning: str | None = None


def check_eviction_policy(client: redis.Redis, *, allow_eviction: bool) -> EvictionCheck:
    """Raise :class:`ConfigurationError` unless Redis's ``maxmemory-policy`` is ``noeviction``.

    ``allow_eviction`` turns the refusal into a warning. A Redis that refuses ``CONFIG``
    (managed services rename or disable it) gives a warning too.
    """
    try:
        reply = client.config_get("maxmemory-policy")
    except redis.ResponseError as exc:
        return EvictionCheck(
            None,
            "could not read Redis's maxmemory-policy (CONFIG GET refused: "
            f"{str(exc)[:80]}); make sure it is '{SAFE_POLICY}' in your Redis provider's settings",
        )
    # Keys and values are bytes or str, as the client decodes responses.
    found = {_text(key): _text(value) for key, value in dict(reply).items()}
    policy = found.get("maxmemory-policy", "")
    if policy == SAFE_POLICY:
        return EvictionCheck(policy)
    message = (
        f"Redis maxmemory-policy is '{policy}': under memory pressure it evicts keys with a TTL "
        "(ledger records, idempotency keys, locks), so messages could be sent twice or lost. "
        f"Set 'maxmemory-policy {SAFE_POLICY}'"
    )
    if not allow_eviction:
        raise ConfigurationError(
            message + ", or set DELIVERY_ALLOW_EVICTION=true to run at that risk"
        )
    return EvictionCheck(policy, message + " (DELIVERY_ALLOW_EVICTION=true: running anyway)")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class MemoryUsage:
    used_bytes: int
    max_bytes: int
    """0: no limit (Redis may grow until the host runs out)."""

    @property
    def headroom_bytes(self) -> float:
        """Bytes left before ``maxmemory``; +Inf when there is no limit."""
        if self.max_bytes <= 0:
            return float("inf")
        return float(max(self.max_bytes - self.used_bytes, 0))


def memory_usage(client: redis.Redis) -> MemoryUsage:
    info = client.info("memory")
    return MemoryUsage(int(info["used_memory"]), int(info.get("maxmemory", 0)))
