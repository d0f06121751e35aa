"""Where the receiver hands its work: Celery tasks by name, after a Redis dedupe check.

The receiver never applies an event itself; it publishes ``TRACK_EVENTS_TASK`` /
``TRACK_HINT_TASK`` (``worker.tasknames``) for the workers. A Postal envelope is published
once per ``uuid``: :class:`RedisDedupe` claims the uuid before the publish (``SET NX`` with a
short "pending" lifetime) and marks it done after, so

* a retry after our 2xx got lost is answered "duplicate" and publishes nothing;
* a retry while the first request is still publishing is answered 409 (Postal tries again
  later, docs/providers/postal.md §4.6);
* a receiver that dies between claim and publish loses nothing: the pending claim expires
  and Postal's next retry publishes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

from worker.stores.keys import Keys
from worker.tasknames import TRACK_EVENTS_TASK, TRACK_HINT_TASK
from worker.tracking.events import DeliveryEvent

__all__ = [
    "CeleryPublisher",
    "Claim",
    "Dedupe",
    "MemoryDedupe",
    "Publisher",
    "RedisDedupe",
]

Claim = Literal["new", "duplicate", "pending"]

PENDING_TTL_S = 60
"""How long a claimed, not yet published uuid blocks a concurrent retry."""


class Publisher(Protocol):
    def publish_events(self, events: list[DeliveryEvent]) -> None: ...

    def publish_hint(self, provider: str, delivery_id: str) -> None: ...

    def ping(self) -> None: ...


class Dedupe(Protocol):
    def claim(self, key: str) -> Claim: ...

    def done(self, key: str) -> None: ...

    def release(self, key: str) -> None: ...

    def hint_due(self, key: str, interval_s: float) -> bool:
        """True at most once per ``interval_s`` for ``key`` (a delivery's hints)."""
        ...

    def ping(self) -> None: ...


class CeleryPublisher:
    """``send_task`` by name through the project's Celery app (its routes, its redaction)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    # ignore_result: nobody waits on these results. Without it, the Redis result backend
    # subscribes to every sent task's result channel (one shared pubsub connection, one more
    # channel per event): the receiver slowed down to ~100 events/s (bench/tracking_receiver.py).

    def publish_events(self, events: list[DeliveryEvent]) -> None:
        args = [[event.model_dump(mode="json") for event in events]]
        self.app.send_task(TRACK_EVENTS_TASK, args=args, ignore_result=True)

    def publish_hint(self, provider: str, delivery_id: str) -> None:
        self.app.send_task(TRACK_HINT_TASK, args=[provider, delivery_id], ignore_result=True)

    def ping(self) -> None:
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)


class RedisDedupe:
    """Claims in Redis (``<ns>:track:seen:<key>``), shared by every receiver process."""

    def __init__(self, client: Any, ttl_s: int, *, keys: Keys | None = None) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self.PREFIX = (keys or Keys()).track_seen_prefix

    def claim(self, key: str) -> Claim:
        name = self.PREFIX + key
        if self.redis.set(name, b"pending", nx=True, ex=PENDING_TTL_S):
            return "new"
        return "duplicate" if self.redis.get(name) == b"done" else "pending"

    def done(self, key: str) -> None:
        self.redis.set(self.PREFIX + key, b"done", ex=self.ttl_s)

    def release(self, key: str) -> None:
        self.redis.delete(self.PREFIX + key)

    def hint_due(self, key: str, interval_s: float) -> bool:
        name = f"{self.PREFIX}hint:{key}"
        return bool(self.redis.set(name, b"1", nx=True, px=max(1, int(interval_s * 1000))))

    def ping(self) -> None:
        self.redis.ping()


class MemoryDedupe:
    """The same claims in one process (tests, a single-process receiver without Redis)."""

    def __init__(self, ttl_s: float = 3600.0, clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[str, float]] = {}
        self._hints: dict[str, float] = {}
        self.ttl_s = ttl_s
        self.clock = clock

    def claim(self, key: str) -> Claim:
        now = self.clock()
        with self._lock:
            state = self._seen.get(key)
            if state is not None and state[1] > now:
                return "duplicate" if state[0] == "done" else "pending"
            self._seen[key] = ("pending", now + PENDING_TTL_S)
            return "new"

    def done(self, key: str) -> None:
        with self._lock:
            self._seen[key] = ("done", self.clock() + self.ttl_s)

    def release(self, key: str) -> None:
        with self._lock:
            self._seen.pop(key, None)

    def hint_due(self, key: str, interval_s: float) -> bool:
        now = self.clock()
        with self._lock:
            until = self._hints.get(key)
            if until is not None and until > now:
                return False
            self._hints[key] = now + interval_s
            return True

    def ping(self) -> None:
        return None
