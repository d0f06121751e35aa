"""Suppression in process memory, with an injectable clock (tests, single-process tools)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from worker.stores.suppression.base import (
    Entry,
    SoftBouncePolicy,
    Source,
    SuppressionStore,
)

__all__ = ["MemorySuppressionStore"]


class MemorySuppressionStore(SuppressionStore):
    def __init__(
        self, clock: Callable[[], float] = time.time, *, policy: SoftBouncePolicy | None = None
    ) -> None:
        self._clock = clock
        self.policy = policy or SoftBouncePolicy()
        self._entries: dict[tuple[str, str], Entry] = {}
        self._soft: dict[tuple[str, str], list[float]] = {}

    def add(self, entry: Entry) -> bool:
        now = self._clock()
        if not entry.at:
            entry = replace(entry, at=now)
        current = self._entries.get((entry.channel, entry.key))
        if (
            current is not None
            and current.live(now)
            and current.expires_at is None
            and entry.expires_at is not None
        ):
            return False
        self._entries[(entry.channel, entry.key)] = entry
        return True

    def soft_bounce(
        self, channel: str, key: str, *, source: Source, provider: str = "", masked: str = ""
    ) -> Entry | None:
        now = self._clock()
        p = self.policy
        seen = [t for t in self._soft.get((channel, key), []) if t > now - p.window_s]
        seen.append(now)
        self._soft[(channel, key)] = seen
        if len(seen) < p.threshold:
            return None
        self._soft.pop((channel, key), None)
        entry = Entry(channel, key, "soft_bounce", source, provider, now, now + p.suppress_s,
                      masked)  # fmt: skip
        return entry if self.add(entry) else None

    def check(self, channel: str, keys: Sequence[str]) -> dict[str, Entry]:
        now = self._clock()
        found = {}
        for key in keys:
            entry = self._entries.get((channel, key))
            if entry is not None and entry.live(now):
                found[key] = entry
        return found

    def remove(self, channel: str, key: str) -> bool:
        self._soft.pop((channel, key), None)
        entry = self._entries.pop((channel, key), None)
        return entry is not None and entry.live(self._clock())

    def entries(self, channel: str) -> Iterator[Entry]:
        now = self._clock()
        for (ch, key), entry in sorted(self._entries.items()):
            if ch != channel:
                continue
            if entry.live(now):
                yield entry
            else:
                self._entries.pop((ch, key), None)

    def count(self, channel: str) -> int:
        return sum(1 for ch, _ in self._entries if ch == channel)
