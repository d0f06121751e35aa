"""The tracking store in Redis, shared by every worker.

Keys (the layout of deployed data; pinned by tests/stores/test_redis_layout.py):

* ``<ns>:track:msg:<provider>:<provider message id>``: hash, masked recipient → delivery id;
* ``<ns>:track:state:<id>``: hash, masked recipient → JSON state (``~provider``: the provider);
* ``<ns>:track:hist:<id>``: list, the newest :data:`HISTORY_CAP` events (JSON), oldest first;
* ``<ns>:track:seen:<id>``: set, the event ids applied;
* ``<ns>:track:out:<id>``: list, notifications not yet published (``<state>\\n<event JSON>``);
* ``<ns>:track:outbox``: sorted set, delivery ids with notifications, scored by the first one;
* ``<ns>:track:outlock:<id>``: string, the publisher's lock token;
* ``<ns>:track:orphan:<provider>:<provider message id>``: list, events waiting for the index;
* ``<ns>:track:watch:<id>``: hash, a polled delivery (provider, started_at, polls, recipients);
* ``<ns>:track:poll``: sorted set, polled delivery ids scored by their next lookup time.

Every per-delivery key expires :data:`TRACKING_TTL_S` after its last write; orphans after
:data:`ORPHAN_TTL_S`. Applying an event (dedupe, the forward-only move, the history and the
outbox entry) is one Lua script (``apply.lua``), so a crash never leaves a state change without
its notification; registering a sent delivery (index, its ``sent`` events through ``apply.lua``,
the watch, the orphans kept for it) is one more (``register.lua``, one round trip per send);
claiming due watches is another (``claim.lua``); releasing the outbox lock compares and deletes
in one (``unlock.lua``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from worker.stores._redis import composed, load_script, lua_source, text
from worker.stores.keys import Keys
from worker.stores.tracking.base import (
    HISTORY_CAP,
    ORPHAN_CAP,
    ORPHAN_TTL_S,
    TRACKING_TTL_S,
    Applied,
    DeliveryStatus,
    RecipientState,
    Tracked,
    TrackingBase,
    Watch,
    history_entry,
    parse_state,
    rules_json,
    sent_event,
    state_json,
    watch_fields,
    watch_from,
)
from worker.tracking.events import DeliveryEvent

__all__ = ["OUTBOX_KEY", "POLL_KEY", "REGISTER_LUA", "RedisTrackingStore", "Registration"]

_PACKAGE = "worker.stores.tracking"
_PROVIDER = "~provider"
_DEFAULT_KEYS = Keys()
# The default namespace's families, for tools and tests; a store uses its own ``keys``.
OUTBOX_KEY = _DEFAULT_KEYS.track_outbox
POLL_KEY = _DEFAULT_KEYS.track_poll


REGISTER_LUA = composed(
    lua_source(_PACKAGE, "register.lua"), apply=lua_source(_PACKAGE, "apply.lua")
)
"""``register.lua`` with ``apply.lua`` composed in (also composed into the send's last step,
``worker.stores.hotpath``)."""


@dataclass(frozen=True)
class Registration:
    """One ``register.lua`` call: its keys and arguments, and the events it applies."""

    keys: list[str]
    args: list[str]
    events: list[DeliveryEvent]
    provider: str
    notify: bool
    orphans: tuple[str, ...] = ()
    """The orphan lists it takes (the last of ``keys``)."""


class RedisTrackingStore(TrackingBase):
    def __init__(
        self,
        client: redis.Redis,
        *,
        ttl_s: int = TRACKING_TTL_S,
        clock: Callable[[], float] = time.time,
        keys: Keys = _DEFAULT_KEYS,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.ttl_s = ttl_s
        self._clock = clock
        self._rules = rules_json()
        self._apply = load_script(client, _PACKAGE, "apply.lua")
        self._claim = load_script(client, _PACKAGE, "claim.lua")
        self._unlock = load_script(client, _PACKAGE, "unlock.lua")
        self._register = client.register_script(REGISTER_LUA)

    def index_key(self, provider: str, provider_message_id: str) -> str:
        return self.keys.track_index(provider, provider_message_id)

    def orphan_key(self, provider: str, provider_message_id: str) -> str:
        return self.keys.track_orphan(provider, provider_message_id)

    def _now(self) -> float:
        return self._clock()

    # -- registering a send: one script -------------------------------------------------------

    def registration(
        self,
        delivery_id: str,
        provider: str,
        recipients: Sequence[Tracked],
        *,
        at: float,
        poll_at: float | None,
        notify: bool,
    ) -> Registration:
        """What :meth:`register` runs (``register.lua``), for a caller composing it."""
        events = [sent_event(delivery_id, provider, t, at) for t in recipients]
        pmids = sorted({t.provider_message_id for t in recipients})
        watch = watch_fields(provider, recipients, at) if poll_at is not None else {}
        keys = [
            self.keys.track("state", delivery_id),
            self.keys.track("hist", delivery_id),
            self.keys.track("seen", delivery_id),
            self.keys.track("out", delivery_id),
            self.keys.track_outbox,
            self.keys.track("watch", delivery_id),
            self.keys.track_poll,
            *(self.index_key(provider, t.provider_message_id) for t in recipients),
            *(self.orphan_key(provider, pmid) for pmid in pmids),
        ]
        args = [
            delivery_id,
            provider,
            repr(at),
            str(self.ttl_s),
            str(HISTORY_CAP),
            "1" if notify else "0",
            self._rules,
            "" if poll_at is None else repr(poll_at),
            str(len(recipients)),
            str(len(pmids)),
            str(len(watch)),
        ]
        for name, value in watch.items():
            args += [name, value]
        for t, event in zip(recipients, events, strict=True):
            args += [t.recipient, event.event_id, event.type.value]
            args += [history_entry(event), state_json(event)]
        orphans = tuple(keys[len(keys) - len(pmids) :])
        return Registration(keys, args, events, provider, notify, orphans)

    def registered(self, reg: Registration, reply: Any) -> Applied:
        """The :class:`Applied` of a ``register.lua`` reply (orphans kept for the send's ids
        are applied now, as :meth:`register` of the base does)."""
        applied, orphans = reply
        done = Applied()
        for event, (new, moved) in zip(reg.events, applied, strict=True):
            if int(new) != 1:
                done.duplicates += 1
                continue
            done.new.append(event)
            done.moved += int(moved)
            assert event.delivery_id is not None
            done.deliveries.add(event.delivery_id)
        kept = []
        for raw in orphans:
            try:
                kept.append(DeliveryEvent.model_validate_json(raw))
            except ValueError:
                continue
        if kept:
            done.absorb(self.apply(kept, notify=reg.notify))
        return done

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
        reg = self.registration(
            delivery_id, provider, recipients, at=at, poll_at=poll_at, notify=notify
        )
        return self.registered(reg, self._register(keys=reg.keys, args=reg.args))

    def _index(self, provider: str, provider_message_id: str) -> dict[str, str]:
        raw = self.redis.hgetall(self.index_key(provider, provider_message_id))
        return {text(k): text(v) for k, v in raw.items()}

    def _apply_one(
        self, delivery_id: str, event: DeliveryEvent, *, notify: bool, now: float
    ) -> tuple[bool, bool]:
        assert event.recipient is not None
        keys = [
            self.keys.track("state", delivery_id),
            self.keys.track("hist", delivery_id),
            self.keys.track("seen", delivery_id),
            self.keys.track("out", delivery_id),
            self.keys.track_outbox,
        ]
        args = [
            event.event_id,
            event.recipient,
            event.type.value,
            history_entry(event),
            state_json(event),
            repr(now),
            str(self.ttl_s),
            str(HISTORY_CAP),
            "1" if notify else "0",
            self._rules,
            delivery_id,
        ]
        new, moved = self._apply(keys=keys, args=args)
        return int(new) == 1, int(moved) == 1

    def _keep_orphan(self, event: DeliveryEvent, now: float) -> None:
        key = self.orphan_key(event.provider, event.provider_message_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.rpush(key, event.model_dump_json())
        pipe.ltrim(key, -ORPHAN_CAP, -1)
        pipe.expire(key, int(ORPHAN_TTL_S))
        pipe.execute()

    def status(self, delivery_id: str) -> DeliveryStatus | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.track("state", delivery_id))
        pipe.lrange(self.keys.track("hist", delivery_id), 0, -1)
        pipe.zscore(self.keys.track_poll, delivery_id)
        raw_states, raw_history, polling = pipe.execute()
        if not raw_states:
            return None
        states = {text(k): text(v) for k, v in raw_states.items()}
        provider = states.pop(_PROVIDER, "")
        parsed = {r: parse_state(v) for r, v in states.items()}
        history = []
        for raw in raw_history:
            try:
                history.append(json.loads(raw))
            except ValueError:
                continue
        return DeliveryStatus(
            delivery_id=delivery_id,
            provider=provider,
            recipients={r: s for r, s in parsed.items() if isinstance(s, RecipientState)},
            history=history,
            polling=polling is not None,
        )

    # -- polling -------------------------------------------------------------------------------

    def claim_due(self, now: float, limit: int, lease_s: float) -> list[Watch]:
        ids = [
            text(i)
            for i in self._claim(keys=[self.keys.track_poll], args=[repr(now), limit, lease_s])
        ]
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for delivery_id in ids:
            pipe.hgetall(self.keys.track("watch", delivery_id))
        out = []
        for delivery_id, raw in zip(ids, pipe.execute(), strict=True):
            found = watch_from(delivery_id, {text(k): text(v) for k, v in raw.items()})
            if found is None:
                self.unwatch(delivery_id)
            else:
                out.append(found)
        return out

    def watch(self, delivery_id: str) -> Watch | None:
        raw = self.redis.hgetall(self.keys.track("watch", delivery_id))
        if not raw:
            return None
        return watch_from(delivery_id, {text(k): text(v) for k, v in raw.items()})

    def reschedule(self, delivery_id: str, at: float, *, polled: bool) -> None:
        pipe = self.redis.pipeline(transaction=True)
        if polled:
            pipe.hincrby(self.keys.track("watch", delivery_id), "polls", 1)
        pipe.zadd(self.keys.track_poll, {delivery_id: at}, xx=True)
        pipe.execute()

    def unwatch(self, delivery_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.track("watch", delivery_id))
        pipe.zrem(self.keys.track_poll, delivery_id)
        pipe.execute()

    def watching(self) -> int:
        return int(self.redis.zcard(self.keys.track_poll))

    # -- outbox --------------------------------------------------------------------------------

    def outbox(self, delivery_id: str, limit: int) -> list[str]:
        return [
            text(e) for e in self.redis.lrange(self.keys.track("out", delivery_id), 0, limit - 1)
        ]

    def outbox_done(self, delivery_id: str, count: int) -> None:
        key = self.keys.track("out", delivery_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.ltrim(key, count, -1)
        pipe.llen(key)
        _, left = pipe.execute()
        if int(left) == 0:
            # An entry written after this ZREM re-adds the id (apply.lua's ZADD NX); one
            # written between the LLEN and the ZREM is seen by the second LLEN.
            self.redis.zrem(self.keys.track_outbox, delivery_id)
            if self.redis.llen(key):
                self.redis.zadd(self.keys.track_outbox, {delivery_id: self._clock()}, nx=True)

    def outbox_pending(self, older_than: float, limit: int) -> list[str]:
        ids = [
            text(i)
            for i in self.redis.zrangebyscore(
                self.keys.track_outbox, "-inf", older_than, start=0, num=limit
            )
        ]
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for delivery_id in ids:
            pipe.exists(self.keys.track("out", delivery_id))
        present = pipe.execute()
        # A list that expired with its delivery's tracking keys leaves its id indexed: drop it
        # (an entry written meanwhile re-adds the id, apply.lua's ZADD NX).
        gone = [d for d, there in zip(ids, present, strict=True) if not there]
        if gone:
            self.redis.zrem(self.keys.track_outbox, *gone)
        return [d for d, there in zip(ids, present, strict=True) if there]

    def outbox_lock(self, delivery_id: str, token: str, ttl_s: float) -> bool:
        key = self.keys.track("outlock", delivery_id)
        return bool(self.redis.set(key, token, nx=True, px=max(1, int(ttl_s * 1000))))

    def outbox_unlock(self, delivery_id: str, token: str) -> None:
        # Compare and delete in one script: a GET then a DEL could delete another worker's lock
        # taken in between (ours having expired).
        self._unlock(keys=[self.keys.track("outlock", delivery_id)], args=[token])
