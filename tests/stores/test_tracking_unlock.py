"""Releasing the outbox lock never deletes another worker's lock (real redis-server).

The race: worker A's lock expires while A is still flushing, worker B takes the lock, then A
releases. A read-then-delete release could see A's token, let B's ``SET`` land in between, and
delete B's lock. The client below lets B in right after A's first command on the lock key, the
worst moment for a two-command release; a one-script compare-and-delete has no such moment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from worker.stores.tracking import RedisTrackingStore

LOCK_KEY = "dw:track:outlock:d1"


class InterleavingRedis(redis.Redis):
    """A real client that runs ``then`` once, right after its first command naming ``key``."""

    def __init__(self, *args: Any, key: str, then: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key, self.then, self.armed = key, then, False

    def execute_command(self, *args: Any, **options: Any) -> Any:
        fire = self.armed and any(a in (self.key, self.key.encode()) for a in args)
        try:
            return super().execute_command(*args, **options)
        finally:
            if fire:
                self.armed = False
                self.then()


def test_unlock_leaves_a_lock_taken_by_another_worker(redis_client: redis.Redis) -> None:
    other = redis_client  # worker B's connection
    kwargs = redis_client.connection_pool.connection_kwargs
    # B takes the lock as if A's had just expired: overwrite, with B's token.
    a_client = InterleavingRedis(
        host=kwargs["host"],
        port=kwargs["port"],
        db=kwargs["db"],
        key=LOCK_KEY,
        then=lambda: other.set(LOCK_KEY, "b"),
    )
    a = RedisTrackingStore(a_client)
    b = RedisTrackingStore(other)
    try:
        assert a.outbox_lock("d1", "a", 30)
        a_client.armed = True
        a.outbox_unlock("d1", "a")
        assert not a_client.armed  # B did get in, right after A's first command on the lock
        assert other.get(LOCK_KEY) == b"b"  # B's lock survived A's release
        assert not a.outbox_lock("d1", "c", 30)
        b.outbox_unlock("d1", "b")
        assert a.outbox_lock("d1", "c", 30)
    finally:
        a_client.close()


def test_unlock_with_a_stale_token_deletes_nothing(redis_client: redis.Redis) -> None:
    store = RedisTrackingStore(redis_client)
    assert store.outbox_lock("d1", "a", 30)
    store.outbox_unlock("d1", "stale")
    assert redis_client.get(LOCK_KEY) == b"a"
    store.outbox_unlock("d1", "a")
    assert redis_client.get(LOCK_KEY) is None
