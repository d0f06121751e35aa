"""The in-process tracking store: the Redis store's contract on dicts, with an injectable clock."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence

from worker.stores.tracking.base import (
    HISTORY_CAP,
    ORPHAN_CAP,
    ORPHAN_TTL_S,
    Applied,
    DeliveryStatus,
    RecipientState,
    Tracked,
    TrackingBase,
    Watch,
    history_entry,
    outbox_entry,
    parse_state,
    sent_event,
    state_json,
    watch_fields,
    watch_from,
)
from worker.tracking.events import DeliveryEvent, EventType, advances

__all__ = ["MemoryTrackingStore"]

_PROVIDER = "~provider"


class MemoryTrackingStore(TrackingBase):
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._index_map: dict[tuple[str, str], dict[str, str]] = {}
        self._states: dict[str, dict[str, str]] = {}
        self._history: dict[str, list[str]] = {}
        self._seen: dict[str, set[str]] = {}
        self._out: dict[str, list[str]] = {}
        self._outbox: dict[str, float] = {}
        self._out_locks: dict[str, tuple[str, float]] = {}
        self._orphans: dict[tuple[str, str], tuple[float, list[str]]] = {}
        self._watches: dict[str, dict[str, str]] = {}
        self._poll: dict[str, float] = {}

    def _now(self) -> float:
        return self._clock()

    def register(
        self,
        delivery_id: str,
        provider: str,
        recipients: Sequence[Tracked],
        *,
        at: float,
        poll_at: float | None,
        notify: bool,
    ) -> Applied:
        """:meth:`TrackingBase.register` in one step under the store's lock (as one script on
        Redis): the index, each recipient's ``sent`` event, the watch; then kept orphans."""
        done = Applied()
        with self._lock:
            self._write_index(delivery_id, provider, recipients, at)
            now = self._clock()
            for tracked in recipients:
                event = sent_event(delivery_id, provider, tracked, at)
                new, moved = self._apply_one(delivery_id, event, notify=notify, now=now)
                if not new:
                    done.duplicates += 1
                    continue
                done.new.append(event)
                done.moved += int(moved)
                done.deliveries.add(delivery_id)
            if poll_at is not None and recipients:
                self._start_watch(delivery_id, provider, recipients, at, poll_at)
            pmids = sorted({t.provider_message_id for t in recipients})
            kept = [self._take_orphans(provider, pmid) for pmid in pmids if self._orphans]
        for events in kept:
            if events:
                done.absorb(self.apply(events, notify=notify))
        return done

    def _index(self, provider: str, provider_message_id: str) -> dict[str, str]:
        with self._lock:
            return dict(self._index_map.get((provider, provider_message_id), {}))

    def _write_index(
        self, delivery_id: str, provider: str, recipients: Sequence[Tracked], at: float
    ) -> None:
        with self._lock:
            for t in recipients:
                self._index_map.setdefault((provider, t.provider_message_id), {})[t.recipient] = (
                    delivery_id
                )
            self._states.setdefault(delivery_id, {})[_PROVIDER] = provider

    def _apply_one(
        self, delivery_id: str, event: DeliveryEvent, *, notify: bool, now: float
    ) -> tuple[bool, bool]:
        assert event.recipient is not None
        with self._lock:
            seen = self._seen.setdefault(delivery_id, set())
            if event.event_id in seen:
                return False, False
            seen.add(event.event_id)
            states = self._states.setdefault(delivery_id, {})
            stored = states.get(event.recipient)
            current = parse_state(stored) if stored else None
            moved = advances(current.state if current else None, event.type)
            if moved:
                states[event.recipient] = state_json(event)
            after = event.type.value if moved else (current.state.value if current else "")
            text = history_entry(event)
            history = self._history.setdefault(delivery_id, [])
            history.append(text)
            del history[:-HISTORY_CAP]
            if notify and event.type is not EventType.UNKNOWN:
                self._out.setdefault(delivery_id, []).append(outbox_entry(after, text))
                self._outbox.setdefault(delivery_id, now)
            return True, moved

    def _keep_orphan(self, event: DeliveryEvent, now: float) -> None:
        key = (event.provider, event.provider_message_id)
        with self._lock:
            expires, kept = self._orphans.get(key, (0.0, []))
            if expires <= now:
                kept = []
            kept = [*kept, event.model_dump_json()][-ORPHAN_CAP:]
            self._orphans[key] = (now + ORPHAN_TTL_S, kept)

    def _take_orphans(self, provider: str, provider_message_id: str) -> list[DeliveryEvent]:
        with self._lock:
            expires, kept = self._orphans.pop((provider, provider_message_id), (0.0, []))
        if expires <= self._clock():
            return []
        return [DeliveryEvent.model_validate_json(k) for k in kept]

    def _start_watch(
        self,
        delivery_id: str,
        provider: str,
        recipients: Sequence[Tracked],
        at: float,
        poll_at: float,
    ) -> None:
        with self._lock:
            if delivery_id not in self._watches:
                self._watches[delivery_id] = watch_fields(provider, recipients, at)
                self._poll[delivery_id] = poll_at

    def status(self, delivery_id: str) -> DeliveryStatus | None:
        with self._lock:
            states = dict(self._states.get(delivery_id, {}))
            history = list(self._history.get(delivery_id, []))
            polling = delivery_id in self._poll
        if not states:
            return None
        provider = states.pop(_PROVIDER, "")
        parsed = {r: parse_state(v) for r, v in states.items()}
        return DeliveryStatus(
            delivery_id=delivery_id,
            provider=provider,
            recipients={r: s for r, s in parsed.items() if isinstance(s, RecipientState)},
            history=[json.loads(h) for h in history],
            polling=polling,
        )

    # -- polling -------------------------------------------------------------------------------

    def claim_due(self, now: float, limit: int, lease_s: float) -> list[Watch]:
        with self._lock:
            due = sorted((at, d) for d, at in self._poll.items() if at <= now)[:limit]
            out = []
            for _, delivery_id in due:
                self._poll[delivery_id] = now + lease_s
                found = watch_from(delivery_id, self._watches.get(delivery_id, {}))
                if found is None:
                    self.unwatch(delivery_id)
                else:
                    out.append(found)
            return out

    def watch(self, delivery_id: str) -> Watch | None:
        with self._lock:
            fields = self._watches.get(delivery_id)
            return None if fields is None else watch_from(delivery_id, fields)

    def reschedule(self, delivery_id: str, at: float, *, polled: bool) -> None:
        with self._lock:
            fields = self._watches.get(delivery_id)
            if fields is None:
                return
            if polled:
                fields["polls"] = str(int(fields.get("polls", "0")) + 1)
            self._poll[delivery_id] = at

    def unwatch(self, delivery_id: str) -> None:
        with self._lock:
            self._watches.pop(delivery_id, None)
            self._poll.pop(delivery_id, None)

    def watching(self) -> int:
        with self._lock:
            return len(self._poll)

    # -- outbox --------------------------------------------------------------------------------

    def outbox(self, delivery_id: str, limit: int) -> list[str]:
        with self._lock:
            return list(self._out.get(delivery_id, [])[:limit])

    def outbox_done(self, delivery_id: str, count: int) -> None:
        with self._lock:
            left = self._out.get(delivery_id, [])[count:]
            if left:
                self._out[delivery_id] = left
            else:
                self._out.pop(delivery_id, None)
                self._outbox.pop(delivery_id, None)

    def outbox_pending(self, older_than: float, limit: int) -> list[str]:
        with self._lock:
            return [
                d for at, d in sorted((a, d) for d, a in self._outbox.items()) if at <= older_than
            ][:limit]

    def outbox_lock(self, delivery_id: str, token: str, ttl_s: float) -> bool:
        now = self._clock()
        with self._lock:
            held = self._out_locks.get(delivery_id)
            if held is not None and held[1] > now:
                return False
            self._out_locks[delivery_id] = (token, now + ttl_s)
            return True

    def outbox_unlock(self, delivery_id: str, token: str) -> None:
        with self._lock:
            held = self._out_locks.get(delivery_id)
            if held is not None and held[0] == token:
                del self._out_locks[delivery_id]
