"""The hot path in Redis: ``begin.lua`` and ``finish.lua``, one round trip each; for a chunk of
deliveries, ``chunk.lua`` runs either for every delivery in one call.

``finish.lua`` runs the ledger's ``transition.lua`` and the tracking store's ``register.lua``
(with ``apply.lua``) as local functions of one script, unchanged, and ``release.lua``'s
compare-and-delete with its compare made once at the top; ``begin.lua``
does what ``RedisLedger.get``/``lock``/``incr`` and ``RedisHealthStore.paused`` do, on the same
keys. It writes no key of its own (the layout is the stores'; tests/stores/test_redis_layout.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import redis

from worker.stores._redis import composed, lua_source, text
from worker.stores.health import RedisHealthStore
from worker.stores.hotpath.base import Begin, Begun, Closing, Finish, Finished, HotPath
from worker.stores.ledger import FINAL_STATES, STATE_RANK, DeliveryRecord
from worker.stores.metrics import RedisMetrics
from worker.stores.suppression import RedisSuppressionStore
from worker.stores.tracking import RedisTrackingStore
from worker.stores.tracking.redis import REGISTER_LUA

__all__ = [
    "BEGIN_CHUNK_LUA",
    "BEGIN_LUA",
    "FINISH_CHUNK_LUA",
    "FINISH_LUA",
    "SENDING_CHUNK_LUA",
    "RedisHotPath",
]

_PACKAGE = "worker.stores.hotpath"
_LEDGER = "worker.stores.ledger"
BEGIN_LUA = lua_source(_PACKAGE, "begin.lua")
FINISH_LUA = composed(
    lua_source(_PACKAGE, "finish.lua"),
    transition=lua_source(_LEDGER, "transition.lua"),
    register=REGISTER_LUA,
)
BEGIN_CHUNK_LUA = composed(lua_source(_PACKAGE, "chunk.lua"), step=BEGIN_LUA)
BEGIN_SHARED_LUA = lua_source(_PACKAGE, "deferred.lua") + composed(
    lua_source(_PACKAGE, "begin_shared.lua"), step=BEGIN_LUA
)


def _shared_chunk(step: str) -> str:
    """chunk.lua over ``step`` with the writes to the chunk's shared keys (the active set, the
    poll schedule, the metrics hashes) made once per chunk (``deferred.lua``)."""
    body = composed(
        lua_source(_PACKAGE, "chunk_shared.lua"),
        step=step,
        each=lua_source(_PACKAGE, "chunk.lua"),
    )
    return lua_source(_PACKAGE, "deferred.lua") + body


FINISH_CHUNK_LUA = _shared_chunk(FINISH_LUA)
SENDING_CHUNK_LUA = _shared_chunk(lua_source(_LEDGER, "transition.lua"))
_FINALS = "," + ",".join(sorted(FINAL_STATES)) + ","
_RANKS = json.dumps(STATE_RANK)


class RedisHotPath(HotPath):
    def __init__(
        self,
        client: redis.Redis,
        *,
        health: RedisHealthStore,
        metrics: RedisMetrics,
        tracking: RedisTrackingStore,
        suppression: RedisSuppressionStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = client
        self.suppression = suppression
        self.health = health
        self.metrics = metrics
        self.tracking = tracking
        self.keys = tracking.keys
        """The namespace of the stores it spans (one Redis, one namespace)."""
        self._clock = clock
        self._begin = client.register_script(BEGIN_LUA)
        self._finish = client.register_script(FINISH_LUA)
        self._begin_chunk = client.register_script(BEGIN_CHUNK_LUA)
        self._begin_shared = client.register_script(BEGIN_SHARED_LUA)
        self._sending_chunk = client.register_script(SENDING_CHUNK_LUA)
        self._finish_chunk = client.register_script(FINISH_CHUNK_LUA)

    def begin(
        self,
        delivery_id: str,
        token: str,
        lock_ttl_s: float,
        *,
        providers: Sequence[str] = (),
        mark: tuple[str, str] | None = None,
        suppress: tuple[str, Sequence[str]] | None = None,
    ) -> Begun:
        b = Begin(delivery_id, token, lock_ttl_s, providers, mark, suppress)
        keys, args = self._begin_call(b)
        return self._begun(b, self._begin(keys=keys, args=args))

    def begin_chunk(self, chunk: Sequence[Begin]) -> list[Begun]:
        if len(chunk) == 1:
            return [
                self.begin(
                    chunk[0].delivery_id,
                    chunk[0].token,
                    chunk[0].lock_ttl_s,
                    providers=chunk[0].providers,
                    mark=chunk[0].mark,
                    suppress=chunk[0].suppress,
                )
            ]
        providers = chunk[0].providers
        if providers and all(b.providers == providers for b in chunk):
            return self._begin_chunk_shared(chunk, providers)
        keys, args = _chunk_call([self._begin_call(b) for b in chunk])
        replies = self._begin_chunk(keys=keys, args=args)
        return [self._begun(b, reply) for b, reply in zip(chunk, replies, strict=True)]

    def _begin_chunk_shared(self, chunk: Sequence[Begin], providers: Sequence[str]) -> list[Begun]:
        """``begin_shared.lua``: the providers' health read once for the chunk (2 commands per
        provider per chunk instead of per delivery), each delivery's begin.lua without it."""
        keys, args = _chunk_call([self._begin_call(replace(b, providers=())) for b in chunk])
        health_keys = [self.health.paused_key, *(self.health.breaker_key(p) for p in providers)]
        # Every delivery's suppression entries in one HMGET when they share the channel.
        looked_up = [self._suppress(b) for b in chunk]
        channels = {channel for channel, recipients in looked_up if recipients}
        fields: list[str] = []
        tail_keys: list[str] = []
        if len(channels) == 1 and self.suppression is not None:
            fields = list(dict.fromkeys(r for _, recipients in looked_up for r in recipients))
            tail_keys = [self.suppression.key(channels.pop())]
        health, replies = self._begin_shared(
            keys=[*health_keys, *keys, *tail_keys],
            args=[str(len(providers)), *providers, *args, *fields, str(len(fields))],
        )
        begun = []
        for b, reply in zip(chunk, replies, strict=True):
            if text(reply[0]) == "run":
                reply = [reply[0], reply[1], reply[2], health, *reply[4:]]
            begun.append(self._begun(b, reply))
        return begun

    def sending_chunk(self, chunk: Sequence[tuple[str, dict[str, str]]]) -> list[bool]:
        """``transition.lua`` for each delivery, as ``RedisLedger.transition`` calls it."""
        now, calls = repr(self._clock()), []
        for delivery_id, fields in chunk:
            args = ["sending", str(STATE_RANK["sending"]), now, _RANKS, delivery_id]
            for name, value in fields.items():
                args += [name, value]
            keys = [
                self.keys.delivery(delivery_id),
                self.keys.active,
                self.keys.scheduled,
                self.keys.claims,
            ]
            calls.append((keys, args))
        keys, args = _chunk_call(calls)
        # the active set: one ZADD for the chunk (deferred.lua)
        replies = self._sending_chunk(keys=[*keys, self.keys.active], args=[*args, "0", "1"])
        return [int(changed) == 1 for changed, _previous in replies]

    def _begin_call(self, b: Begin) -> tuple[list[str], list[str]]:
        delivery_id, token, providers, mark = b.delivery_id, b.token, b.providers, b.mark
        lock_ttl_s = b.lock_ttl_s
        channel, recipients = self._suppress(b)
        keys = [
            self.keys.delivery(delivery_id),
            self.keys.lock(delivery_id),
            self.health.paused_key,
            mark[0] if mark else "",
            self.suppression.key(channel) if self.suppression and recipients else "",
            *(self.health.breaker_key(p) for p in providers),
        ]
        ttl_ms = max(1, int(lock_ttl_s * 1000))
        args = [token, str(ttl_ms), mark[1] if mark else "", _FINALS, str(len(recipients))]
        args += [*recipients, *providers]
        return keys, args

    def _suppress(self, b: Begin) -> tuple[str, Sequence[str]]:
        """(channel, recipient keys) begin.lua looks up; none without a suppression store."""
        if b.suppress is None or self.suppression is None:
            return "", ()
        return b.suppress

    def _begun(self, b: Begin, reply: list[Any]) -> Begun:
        begun = _begun(b, reply)
        channel, recipients = self._suppress(b)
        if begun.status != "run" or not recipients:
            return begun
        live = RedisSuppressionStore.decode_live(channel, recipients, reply[4], self._clock())
        return replace(begun, suppressed=live)

    def clear_mark(self, mark: tuple[str, str]) -> None:
        self.redis.hdel(mark[0], mark[1])

    def finish(
        self,
        delivery_id: str,
        token: str,
        *,
        reset_runs: bool,
        closing: Closing | None = None,
    ) -> Finished:
        keys, args, reg = self._finish_call(Finish(delivery_id, token, reset_runs, closing))
        return self._finished(reg, self._finish(keys=keys, args=args))

    def finish_chunk(self, chunk: Sequence[Finish]) -> list[Finished]:
        if len(chunk) == 1:
            f = chunk[0]
            return [self.finish(f.delivery_id, f.token, reset_runs=f.reset_runs, closing=f.closing)]
        calls = [self._finish_call(f) for f in chunk]
        keys, args = _chunk_call([(k, a) for k, a, _ in calls])
        # The active set, the poll schedule and the metrics hashes: one write each per chunk;
        # the orphan lists the registrations take: probed with one EXISTS.
        metrics = sorted({k[3] for k, _, _ in calls if k[3]})
        shared = [self.keys.active, self.tracking.keys.track_poll, *metrics]
        probes = list(
            dict.fromkeys(k for _, _, reg in calls if reg is not None for k in reg.orphans)
        )
        replies = self._finish_chunk(
            keys=[*keys, *probes, *shared], args=[*args, str(len(probes)), str(len(shared))]
        )
        regs = [reg for _, _, reg in calls]
        return [self._finished(reg, reply) for reg, reply in zip(regs, replies, strict=True)]

    def _finish_call(self, f: Finish) -> tuple[list[str], list[str], Any]:
        delivery_id, token, reset_runs, closing = f.delivery_id, f.token, f.reset_runs, f.closing
        keys = [
            self.keys.delivery(delivery_id),
            self.keys.active,
            self.keys.lock(delivery_id),
            "",
            "",
        ]
        keys += [self.keys.scheduled, self.keys.claims]
        args = [token, "1" if reset_runs else "0", "", "0", repr(self._clock()), _RANKS]
        args += [delivery_id, "", "0"]
        reg = None
        if closing is not None:
            args[2], args[3] = closing.state, str(STATE_RANK[closing.state])
            if closing.provider and closing.breaker:
                keys[4] = self.health.breaker_key(closing.provider)
            if closing.provider and closing.metric:
                keys[3] = self.metrics.key(closing.provider)
                args[7] = closing.metric
            args[8] = str(len(closing.fields))
            for name, value in closing.fields.items():
                args += [name, value]
            t = closing.tracking
            if t is not None:
                reg = self.tracking.registration(
                    delivery_id,
                    t.provider,
                    t.recipients,
                    at=t.at,
                    poll_at=t.poll_at,
                    notify=t.notify,
                )
                keys += reg.keys
                args += reg.args
        return keys, args, reg

    def _finished(self, reg: Any, raw: list[Any]) -> Finished:
        changed, breaker, registered, reply, lost = raw
        if int(lost) == 1:
            return Finished(lock_lost=True)
        done = Finished(changed=int(changed) == 1, breaker_state=int(breaker) == 1)
        if reg is None or int(registered) != 1:
            return done
        try:
            applied = self.tracking.registered(reg, reply)
        except Exception as exc:  # orphans applied after: tracking never changes the send
            return Finished(done.changed, done.breaker_state, tracking_error=type(exc).__name__)
        return Finished(done.changed, done.breaker_state, tracking=applied)


def _chunk_call(calls: list[tuple[list[str], list[str]]]) -> tuple[list[str], list[str]]:
    """chunk.lua's keys and arguments for one script call per delivery."""
    keys: list[str] = []
    counts = [str(len(calls))]
    args: list[str] = []
    for k, a in calls:
        keys += k
        counts += [str(len(k)), str(len(a))]
        args += a
    return keys, counts + args


def _begun(b: Begin, reply: list[Any]) -> Begun:
    delivery_id, providers = b.delivery_id, b.providers
    status = text(reply[0])
    if status == "missing":
        return Begun("missing")
    fields = _fields(reply[1])
    if status == "final":
        return Begun("final", DeliveryRecord.from_fields(delivery_id, fields))
    if status == "busy":
        remaining_ms = int(reply[2])
        busy_s = max(remaining_ms, 1) / 1000 if remaining_ms > 0 else 0.001
        record = DeliveryRecord.from_fields(delivery_id, fields)
        return Begun("busy", record, busy_s=busy_s)
    runs = int(reply[2])
    fields["runs_unfinished"] = str(runs)
    health = reply[3]
    paused, breakers = {}, set()
    for i, provider in enumerate(providers):
        raw, has_state = health[2 * i], int(health[2 * i + 1])
        if text(raw):
            paused[provider] = RedisHealthStore.pause_info(provider, raw)
        if has_state:
            breakers.add(provider)
    record = DeliveryRecord.from_fields(delivery_id, fields)
    return Begun(
        "run",
        record,
        runs=runs,
        paused=paused,
        breaker_state=frozenset(breakers),
        asked=frozenset(providers),
    )


def _fields(raw: list[Any]) -> dict[str, str]:
    return {text(raw[i]): text(raw[i + 1]) for i in range(0, len(raw), 2)}
