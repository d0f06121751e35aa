"""Suppression in Redis: one hash per channel (``add.lua``, ``soft.lua``).

Keys:

- ``<prefix>:supp:<channel>``: hash, recipient key → :meth:`Entry.encode` (expiry first). No
  TTL: entries live until removed or, with an expiry, until met after it (the hot path treats
  them as absent; :meth:`entries` and ``suppression list`` drop them).
- ``<prefix>:supp:soft:<channel>:<key>``: sorted set of soft-bounce times, expiring one window
  after the last bounce.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import redis

from worker.stores._redis import load_script, text
from worker.stores.keys import DEFAULT_NAMESPACE, Keys
from worker.stores.suppression.base import (
    Entry,
    SoftBouncePolicy,
    Source,
    SuppressionStore,
)

__all__ = ["RedisSuppressionStore"]

_PACKAGE = "worker.stores.suppression"


class RedisSuppressionStore(SuppressionStore):
    def __init__(
        self,
        client: redis.Redis,
        prefix: str = DEFAULT_NAMESPACE,
        *,
        policy: SoftBouncePolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = client
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.policy = policy or SoftBouncePolicy()
        self._clock = clock
        self._add = load_script(client, _PACKAGE, "add.lua")
        self._soft = load_script(client, _PACKAGE, "soft.lua")

    def key(self, channel: str) -> str:
        """The channel's hash (``worker.stores.hotpath`` reads it in the send's first step)."""
        return self.keys.suppression(channel)

    def soft_key(self, channel: str, key: str) -> str:
        return self.keys.soft_bounces(channel, key)

    def add(self, entry: Entry) -> bool:
        now = self._clock()
        if not entry.at:
            entry = replace(entry, at=now)
        keys = [self.key(entry.channel), self.soft_key(entry.channel, entry.key)]
        if entry.expires_at is not None:
            keys[1] = ""  # an expiring entry keeps the soft-bounce count
        return int(self._add(keys=keys, args=[entry.key, entry.encode(), repr(now)])) == 1

    def soft_bounce(
        self, channel: str, key: str, *, source: Source, provider: str = "", masked: str = ""
    ) -> Entry | None:
        now = self._clock()
        p = self.policy
        entry = Entry(channel, key, "soft_bounce", source, provider, now, now + p.suppress_s,
                      masked)  # fmt: skip
        keys = [self.key(channel), self.soft_key(channel, key)]
        args = [key, entry.encode(), repr(now), repr(p.window_s), str(p.threshold),
                uuid.uuid4().hex]  # fmt: skip
        return entry if int(self._soft(keys=keys, args=args)) == 1 else None

    def check(self, channel: str, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys:
            return {}
        raw: list[Any] = self.redis.hmget(self.key(channel), list(keys))
        return self.decode_live(channel, keys, raw, self._clock())

    @staticmethod
    def decode_live(
        channel: str, keys: Sequence[str], raw: Sequence[Any], now: float
    ) -> dict[str, Entry]:
        """The live entries of an ``HMGET`` reply (``raw[i]`` for ``keys[i]``)."""
        found = {}
        for key, value in zip(keys, raw, strict=True):
            if value is None or value is False or text(value) == "":
                continue
            entry = Entry.decode(channel, key, text(value))
            if entry.live(now):
                found[key] = entry
        return found

    def remove(self, channel: str, key: str) -> bool:
        pipe = self.redis.pipeline()
        pipe.hget(self.key(channel), key)
        pipe.hdel(self.key(channel), key)
        pipe.delete(self.soft_key(channel, key))
        raw, _, _ = pipe.execute()
        return raw is not None and Entry.decode(channel, key, text(raw)).live(self._clock())

    def entries(self, channel: str) -> Iterator[Entry]:
        name = self.key(channel)
        for field, value in self.redis.hscan_iter(name, count=1000):
            entry = Entry.decode(channel, text(field), text(value))
            if entry.live(self._clock()):
                yield entry
            else:
                self.redis.hdel(name, text(field))

    def count(self, channel: str) -> int:
        return int(self.redis.hlen(self.key(channel)))
