"""Every Redis key family the worker writes, under one namespace.

The namespace (``DELIVERY_REDIS_NAMESPACE``, default ``dw``) comes first in every key, so two
deployments can share one Redis without meeting (dramatiq's ``namespace=``). Stores, the guard,
the producer and the receiver take a :class:`Keys` and build their keys here only; Lua scripts
receive the keys (or a prefix) from Python and never build one themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEFAULT_KEYS", "DEFAULT_NAMESPACE", "Keys", "keys_for"]

DEFAULT_NAMESPACE = "dw"
_VALID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


@dataclass(frozen=True)
class Keys:
    """The key builder of one namespace; ``Keys()`` is the default ``dw`` namespace."""

    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        if not _VALID.match(self.namespace):
            raise ValueError(
                f"redis namespace {self.namespace!r}: 1 to 32 letters, digits, '_', '.' or '-'"
            )

    def _k(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    # -- ledger --------------------------------------------------------------------------------

    @property
    def delivery_prefix(self) -> str:
        """``<ns>:delivery:``, the prefix of every record (the mover's script gets it)."""
        return self._k("delivery", "")

    def delivery(self, delivery_id: str) -> str:
        return self.delivery_prefix + delivery_id

    def idem(self, channel: str, idempotency_key: str) -> str:
        return self._k("idem", channel, idempotency_key)

    def lock(self, delivery_id: str) -> str:
        return self._k("lock", delivery_id)

    def tag(self, provider: str, tag: str) -> str:
        return self._k("tag", provider, tag)

    @property
    def active(self) -> str:
        return self._k("active")

    @property
    def dead(self) -> str:
        return self._k("dead")

    @property
    def scheduled(self) -> str:
        return self._k("scheduled")

    @property
    def claims(self) -> str:
        return self._k("scheduled", "claims")

    # -- lanes (worker.lanes) ----------------------------------------------------------------

    @property
    def lane_prefix(self) -> str:
        """``<ns>:lane:``; one sorted set per (priority, tenant) follows: ``<prefix><p>:<t>``."""
        return self._k("lane", "")

    def lane(self, priority: str, tenant: str) -> str:
        return self.lane_prefix + f"{priority}:{tenant}"

    def lane_tenants(self, priority: str) -> str:
        """The tenants with waiting work at one priority (a set)."""
        return self._k("lanes", "tenants", priority)

    @property
    def lane_turns(self) -> str:
        """The weighted round robin's running credits (a hash)."""
        return self._k("lanes", "turns")

    @property
    def lane_due(self) -> str:
        """When work the limiter sent back is due again (a hash: ``<priority>:<provider>`` →
        time)."""
        return self._k("lanes", "due")

    @property
    def lane_taken(self) -> str:
        """Entries taken by a dispatcher and not yet published, with the lease's end."""
        return self._k("lanes", "taken")

    @property
    def lane_chunk_prefix(self) -> str:
        """``<ns>:lanes:chunk:``; a campaign chunk waiting in a lane follows, by its task id (a
        hash: the chunk task's name, its message, its size)."""
        return self._k("lanes", "chunk", "")

    # -- tracking ------------------------------------------------------------------------------

    def track(self, kind: str, delivery_id: str) -> str:
        return self._k("track", kind, delivery_id)

    def track_index(self, provider: str, provider_message_id: str) -> str:
        return self._k("track", "msg", provider, provider_message_id)

    def track_orphan(self, provider: str, provider_message_id: str) -> str:
        return self._k("track", "orphan", provider, provider_message_id)

    @property
    def track_outbox(self) -> str:
        return self._k("track", "outbox")

    @property
    def track_poll(self) -> str:
        return self._k("track", "poll")

    @property
    def track_seen_prefix(self) -> str:
        """``<ns>:track:seen:``, the receiver's dedupe claims."""
        return self._k("track", "seen", "")

    # -- per-provider state ---------------------------------------------------------------------

    def parked(self, provider: str) -> str:
        return self._k("parked", provider)

    def metrics(self, provider: str) -> str:
        return self._k("metrics", provider)

    @property
    def balances(self) -> str:
        return self._k("balances")

    @property
    def health_paused(self) -> str:
        return self._k("health", "paused")

    def health_breaker(self, provider: str) -> str:
        return self._k("health", "breaker", provider)

    def limiter(self, provider: str, identity: str, bucket: str = "send") -> str:
        """One provider budget's limiter key (``worker.stores.limiter``); ``identity`` is the
        egress identity: workers that share it share the budget."""
        for name, value in (("provider", provider), ("identity", identity), ("bucket", bucket)):
            if not value:
                raise ValueError(f"limiter_key: {name} must not be empty")
        return self._k("rl", provider, identity, bucket)

    def suppression(self, channel: str) -> str:
        return self._k("supp", channel)

    def soft_bounces(self, channel: str, key: str) -> str:
        return self._k("supp", "soft", channel, key)

    # -- guard and producer --------------------------------------------------------------------

    @property
    def rejected(self) -> str:
        return self._k("rejected")

    @property
    def rejected_items(self) -> str:
        return self._k("rejected", "items")

    @property
    def main_mark_prefix(self) -> str:
        return self._k("main", "")

    def main_mark(self, task_id: str) -> str:
        return self.main_mark_prefix + task_id

    @property
    def guard_alive_prefix(self) -> str:
        return self._k("guard", "alive", "")

    @property
    def replication_fence(self) -> str:
        return self._k("repl", "fence")


def keys_for(settings: object) -> Keys:
    """The keys of a worker's settings (``redis_namespace``), the default namespace without."""
    return Keys(getattr(settings, "redis_namespace", DEFAULT_NAMESPACE))


DEFAULT_KEYS = Keys()
"""The default namespace's keys (tools, tests, and stores built without ``keys``)."""
