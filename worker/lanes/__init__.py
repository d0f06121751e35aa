"""Lanes: waiting work in Redis, ordered by priority and shared fairly across tenants.

A producer does not publish a message to the broker queue: it records the delivery on the
ledger (as always) and puts its id in the lane of its ``priority`` and ``tenant``, a sorted
set by enqueue time (:meth:`Lanes.push`). A dispatcher in each worker
(:mod:`worker.lanes.dispatcher`) keeps the broker queue short, about ``DELIVERY_LANE_BUFFER``
messages: whenever there is room it takes the next deliveries in lane order
(:meth:`Lanes.take`, one Lua script) and publishes them. The order:

- ``high`` first, whenever any waits;
- then ``normal`` and ``bulk`` by weighted shares (``DELIVERY_LANE_WEIGHTS``, default 4:1), so
  a campaign never stops transactional mail and transactional mail never stops a campaign;
- within a priority, tenants by weighted round robin (``DELIVERY_TENANT_WEIGHTS``, default 1
  each): a small sender is not stuck behind a large one's backlog.

A campaign chunk (``send_many``) waits in its lane as one entry, ``chunk:<task id>``
(:meth:`Lanes.push_chunk`); its task's message waits beside it, and the dispatcher publishes the
chunk task when it takes the entry. In the round robin a chunk counts by its size: n messages
are n turns (docs/lanes.md).

A taken entry is leased until it is published; if its dispatcher dies in between, the next
take puts it back at the front of its lane when the lease ends. Once published, the broker's
own guarantees hold (late acks, redelivery after a worker is lost). See docs/lanes.md.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from worker.lanes.weights import parse_weights
from worker.models import DEFAULT_TENANT, PRIORITIES
from worker.stores._redis import load_script, text
from worker.stores.keys import Keys

__all__ = [
    "CHUNK",
    "LEASE_S",
    "LaneDepth",
    "Lanes",
    "Taken",
    "lane_of",
    "lanes_beside",
    "parse_weights",
    "send_back",
]

LEASE_S = 30.0
"""How long a taken entry may stay unpublished before another take puts it back."""

CHUNK = "chunk:"
"""A lane member that is a campaign chunk: ``chunk:<its task id>``."""

_PACKAGE = "worker.lanes"
log = structlog.get_logger(__name__)
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def lane_of(body: Any) -> tuple[str, str]:
    """The (priority, tenant) of a message body (a dict, or its JSON): absent or not valid,
    ``normal`` and the default tenant (the worker refuses a bad one when it runs it)."""
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            body = {}
    body = body if isinstance(body, dict) else {}
    priority = body.get("priority")
    tenant = body.get("tenant")
    return (
        priority if priority in PRIORITIES else "normal",
        tenant if isinstance(tenant, str) and _TENANT.fullmatch(tenant) else DEFAULT_TENANT,
    )


_BESIDE: dict[int, Lanes] = {}


def send_back(ledger: Any, settings: Any, delivery_id: str, message: Any, delay_s: float) -> bool:
    """Put a delivery the limiter sent back (its slot lay beyond the inline wait) at the front of
    its lane, the lane due in ``delay_s`` (:meth:`Lanes.send_back`): it waits in Redis, in
    order, not in the broker nor in a worker's memory as a countdown. False when lanes are off
    (the caller retries through the broker)."""
    lanes = _BESIDE.get(id(ledger))
    if lanes is None:
        lanes = lanes_beside(ledger, settings)
        if lanes is None:
            return False
        _BESIDE[id(ledger)] = lanes
    priority, tenant = lane_of(message)
    lanes.send_back(delivery_id, priority, tenant, time.time() + max(delay_s, 0.0))
    return True


def lanes_beside(ledger: Any, settings: Any) -> Lanes | None:
    """The lanes on the ledger's Redis (a take reads its records), or ``None``: lanes off
    (``DELIVERY_LANES``), or a ledger without Redis (memory stores): publish directly."""
    client = getattr(ledger, "redis", None)
    if not settings.lanes or client is None:
        return None
    return Lanes(
        client,
        getattr(ledger, "keys", None),
        lane_weights=settings.lane_weights,
        tenant_weights=settings.tenant_weights,
    )


@dataclass(frozen=True)
class Taken:
    member: str
    delivery_id: str
    priority: str
    tenant: str
    task_name: str
    message: dict[str, Any]
    enqueued_at: float

    @property
    def chunk(self) -> bool:
        """A campaign chunk (its message is a ``tasks.send_chunk`` payload)."""
        return self.delivery_id.startswith(CHUNK)

    @property
    def task_id(self) -> str:
        """The id to publish under: the delivery's, or the chunk task's."""
        return self.delivery_id.removeprefix(CHUNK)


@dataclass(frozen=True)
class LaneDepth:
    priority: str
    tenant: str
    depth: int
    oldest_age_s: float


class Lanes:
    """The lanes of one namespace on one Redis (the ledger's: a take reads the record)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys | None = None,
        *,
        lane_weights: str | dict[str, int] = "normal=4,bulk=1",
        tenant_weights: str | dict[str, int] = "",
        lease_s: float = LEASE_S,
    ) -> None:
        self.redis = client
        self.keys = keys or Keys()
        self.class_weights = (
            parse_weights(lane_weights) if isinstance(lane_weights, str) else lane_weights
        )
        self.tenant_weights = (
            parse_weights(tenant_weights) if isinstance(tenant_weights, str) else tenant_weights
        )
        self.lease_s = lease_s
        self._take = load_script(client, _PACKAGE, "take.lua")
        self._send_back = load_script(client, _PACKAGE, "send_back.lua")

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Any) -> Lanes:
        from worker.stores.keys import keys_for

        return cls(
            client,
            keys_for(settings),
            lane_weights=settings.lane_weights,
            tenant_weights=settings.tenant_weights,
        )

    def push(
        self,
        delivery_id: str,
        priority: str = "normal",
        tenant: str = DEFAULT_TENANT,
        *,
        at: float | None = None,
    ) -> bool:
        """Put a delivery in its lane (again: a no-op, it keeps its place); whether it was
        not there."""
        return self.push_many([(delivery_id, priority, tenant)], at=at) == 1

    def push_many(self, entries: list[tuple[str, str, str]], *, at: float | None = None) -> int:
        """Put (delivery id, priority, tenant) entries in their lanes at once (one
        transaction: a dispatcher sees all of them or none, so order between lanes holds);
        how many were not there already."""
        if not entries:
            return 0
        at = time.time() if at is None else at
        pipe = self.redis.pipeline(transaction=True)
        for delivery_id, priority, tenant in entries:
            if priority not in PRIORITIES:
                raise ValueError(f"priority: must be one of {', '.join(PRIORITIES)}")
            pipe.zadd(self.keys.lane(priority, tenant), {delivery_id: at}, nx=True)
            pipe.sadd(self.keys.lane_tenants(priority), tenant)
        replies = pipe.execute()
        return sum(int(added) for added in replies[0::2])

    def send_back(
        self,
        delivery_id: str,
        priority: str,
        tenant: str,
        not_before: float,
        *,
        now: float | None = None,
    ) -> bool:
        """A delivery the limiter sent back: to the front of its lane (it keeps its place), and
        no lane of its priority whose first delivery goes to its provider is taken from before
        ``not_before`` (send_back.lua); whether it was not there."""
        if priority not in PRIORITIES:
            raise ValueError(f"priority: must be one of {', '.join(PRIORITIES)}")
        added = self._send_back(
            keys=[
                self.keys.lane(priority, tenant),
                self.keys.lane_tenants(priority),
                self.keys.lane_due,
                self.keys.delivery(delivery_id),
            ],
            args=[
                delivery_id,
                tenant,
                repr(time.time() if now is None else now),
                repr(not_before),
                priority,
            ],
        )
        return bool(int(added))

    def push_chunk(
        self,
        task_id: str,
        task_name: str,
        message: dict[str, Any],
        size: int,
        priority: str = "bulk",
        tenant: str = DEFAULT_TENANT,
        *,
        provider: str = "",
        at: float | None = None,
    ) -> None:
        """Put a campaign chunk in its lane as one entry (one transaction: its task's message
        beside it, then the entry); the dispatcher publishes ``task_name`` under ``task_id``.
        ``provider``: the chunk's, for the lanes' due times (:meth:`send_back`)."""
        if priority not in PRIORITIES:
            raise ValueError(f"priority: must be one of {', '.join(PRIORITIES)}")
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            self.keys.lane_chunk_prefix + task_id,
            mapping={
                "task_name": task_name,
                "message": json.dumps(message),
                "n": size,
                "provider": provider,
            },
        )
        pipe.zadd(
            self.keys.lane(priority, tenant),
            {CHUNK + task_id: time.time() if at is None else at},
            nx=True,
        )
        pipe.sadd(self.keys.lane_tenants(priority), tenant)
        pipe.execute()

    def take(self, room: int, now: float | None = None) -> list[Taken]:
        """Up to ``room`` deliveries in lane order, leased until :meth:`done`."""
        if room <= 0:
            return []
        tenants_prefix = self.keys.lane_tenants("")
        reply = self._take(
            keys=[
                self.keys.lane_prefix,
                tenants_prefix,
                self.keys.lane_turns,
                self.keys.lane_taken,
                self.keys.delivery_prefix,
                self.keys.lane_due,
                self.keys.lane_chunk_prefix,
            ],
            args=[
                room,
                repr(time.time() if now is None else now),
                repr(self.lease_s),
                json.dumps(self.class_weights),
                json.dumps(self.tenant_weights) if self.tenant_weights else "{}",
            ],
        )
        out: list[Taken] = []
        gone: list[str] = []
        for member, task_name, message, enqueued_at in reply:
            member_s = text(member)
            priority, tenant, _at, delivery_id = member_s.split("/", 3)
            if not text(task_name):
                gone.append(member_s)
                log.warning("lanes.record_gone", delivery_id=delivery_id)
                continue
            out.append(
                Taken(
                    member=member_s,
                    delivery_id=delivery_id,
                    priority=priority,
                    tenant=tenant,
                    task_name=text(task_name),
                    message=json.loads(text(message)),
                    enqueued_at=float(text(enqueued_at)),
                )
            )
        if gone:
            self.redis.zrem(self.keys.lane_taken, *gone)
        return out

    def done(self, taken: list[Taken]) -> None:
        """Published: end the leases (and drop the published chunks' messages)."""
        if not taken:
            return
        chunks = [self.keys.lane_chunk_prefix + t.task_id for t in taken if t.chunk]
        if not chunks:
            self.redis.zrem(self.keys.lane_taken, *[t.member for t in taken])
            return
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.keys.lane_taken, *[t.member for t in taken])
        pipe.delete(*chunks)
        pipe.execute()

    def depths(self, now: float | None = None) -> list[LaneDepth]:
        """Every lane with waiting work: how many wait, and how long the oldest has waited."""
        now = time.time() if now is None else now
        found: list[tuple[str, str]] = []
        for priority in PRIORITIES:
            for tenant in sorted(
                text(t) for t in self.redis.smembers(self.keys.lane_tenants(priority))
            ):
                found.append((priority, tenant))
        if not found:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for lane_priority, tenant in found:
            key = self.keys.lane(lane_priority, tenant)
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
        replies = pipe.execute()
        out: list[LaneDepth] = []
        for i, (lane_priority, tenant) in enumerate(found):
            depth = int(replies[2 * i])
            oldest = replies[2 * i + 1]
            age = max(0.0, now - float(oldest[0][1])) if oldest else 0.0
            if depth:
                out.append(LaneDepth(lane_priority, tenant, depth, age))
        return out
