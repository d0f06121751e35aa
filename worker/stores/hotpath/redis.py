"""The hot path in Redis: ``begin.lua`` and ``finish.lua``, one round trip each.

``finish.lua`` runs the ledger's ``transition.lua`` and ``release.lua`` and the tracking store's
``register.lua`` (with ``apply.lua``) as local functions of one script, unchanged; ``begin.lua``
does what ``RedisLedger.get``/``lock``/``incr`` and ``RedisHealthStore.paused`` do, on the same
keys. It writes no key of its own (the layout is the stores'; tests/stores/test_redis_layout.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from worker.stores._redis import composed, lua_source, text
from worker.stores.health import RedisHealthStore
from worker.stores.hotpath.base import Begun, Closing, Finished, HotPath
from worker.stores.ledger import ACTIVE_KEY, FINAL_STATES, STATE_RANK, DeliveryRecord, RedisLedger
from worker.stores.ledger.redis import CLAIMS_KEY, LOCK_PREFIX, SCHEDULE_KEY
from worker.stores.metrics import RedisMetrics
from worker.stores.suppression import RedisSuppressionStore
from worker.stores.tracking import RedisTrackingStore
from worker.stores.tracking.redis import REGISTER_LUA

__all__ = ["BEGIN_LUA", "FINISH_LUA", "RedisHotPath"]

_PACKAGE = "worker.stores.hotpath"
_LEDGER = "worker.stores.ledger"
BEGIN_LUA = lua_source(_PACKAGE, "begin.lua")
FINISH_LUA = composed(
    lua_source(_PACKAGE, "finish.lua"),
    transition=lua_source(_LEDGER, "transition.lua"),
    release=lua_source(_LEDGER, "release.lua"),
    register=REGISTER_LUA,
)
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
        self._clock = clock
        self._begin = client.register_script(BEGIN_LUA)
        self._finish = client.register_script(FINISH_LUA)

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
        channel, recipients = suppress if suppress and self.suppression else ("", ())
        keys = [
            RedisLedger.key(delivery_id),
            LOCK_PREFIX + delivery_id,
            self.health.paused_key,
            mark[0] if mark else "",
            self.suppression.key(channel) if self.suppression and recipients else "",
            *(self.health.breaker_key(p) for p in providers),
        ]
        ttl_ms = max(1, int(lock_ttl_s * 1000))
        args = [token, str(ttl_ms), mark[1] if mark else "", _FINALS, str(len(recipients))]
        args += [*recipients, *providers]
        reply: list[Any] = self._begin(keys=keys, args=args)
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
        suppressed = RedisSuppressionStore.decode_live(
            channel, recipients, reply[4] if recipients else [], self._clock()
        )
        return Begun(
            "run",
            record,
            runs=runs,
            paused=paused,
            breaker_state=frozenset(breakers),
            asked=frozenset(providers),
            suppressed=suppressed,
        )

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
        keys = [RedisLedger.key(delivery_id), ACTIVE_KEY, LOCK_PREFIX + delivery_id, "", ""]
        keys += [SCHEDULE_KEY, CLAIMS_KEY]
        args = [token, "1" if reset_runs else "0", "", "0", repr(self._clock()), _RANKS]
        args += [delivery_id, "", "0"]
        reg = None
        if closing is not None:
            args[2], args[3] = closing.state, str(STATE_RANK[closing.state])
            if closing.provider and closing.breaker:
                keys[4] = self.health.breaker_key(closing.provider)
            if closing.provider and closing.metric:
                keys[3] = RedisMetrics.key(closing.provider)
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
        changed, breaker, registered, reply, lost = self._finish(keys=keys, args=args)
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


def _fields(raw: list[Any]) -> dict[str, str]:
    return {text(raw[i]): text(raw[i + 1]) for i in range(0, len(raw), 2)}
