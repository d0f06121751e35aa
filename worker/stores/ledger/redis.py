"""The ledger in Redis, shared by producers and every worker.

Keys (the layout of deployed data; do not change it):

* ``<ns>:delivery:<id>``: hash, the record's fields (all text), expiring ``ttl_s`` after creation;
* ``<ns>:idem:<channel>:<key>``: string, the delivery id of an idempotency key, same expiry;
* ``<ns>:active``: sorted set, unfinished deliveries scored by their last update (Unix seconds);
* ``<ns>:lock:<id>``: string, the send lock's token, expiring with the lock;
* ``<ns>:dead``: hash, delivery id → JSON dead letter; at most ``DEAD_LETTER_CAP`` letters (the
  oldest are dropped) and expiring ``DEAD_LETTER_TTL_S`` after the last one was added;
* ``<ns>:tag:<provider>:<tag>``: sorted set, ``<recipient>|<delivery id>`` scored by send time;
* ``<ns>:scheduled``: sorted set, ``scheduled`` deliveries scored by due time (Unix seconds; a
  claimed entry by the end of its lease). The message itself stays in the record;
* ``<ns>:scheduled:claims``: hash, delivery id → how often the mover claimed it (gone once it
  leaves ``scheduled``).

Creation, transitions, holds, claims and cancels are Lua scripts (``create.lua``,
``transition.lua``, ``hold.lua``, ``claim_due.lua``, ``cancel.lua``), so a check and its write are
one atomic step across workers. Record times come from ``clock`` (the host's
clock by default, as the service compares them with its own).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis

from worker.stores._redis import load_script, text
from worker.stores.keys import Keys
from worker.stores.ledger.base import (
    DEAD_LETTER_CAP,
    DEAD_LETTER_TTL_S,
    FINAL_STATES,
    RECORD_TTL_S,
    STATE_RANK,
    TAG_MEMORY_S,
    CancelAnswer,
    DeliveryRecord,
    DueEntry,
    Ledger,
    NewRecord,
    buried_entry,
    dead_letter_at,
    set_aside_entry,
)

__all__ = ["ACTIVE_KEY", "CLAIMS_KEY", "DEAD_KEY", "SCHEDULE_KEY", "RedisLedger"]

_DEFAULT_KEYS = Keys()
# The default namespace's families, for tools and tests; a store uses its own ``keys``.
ACTIVE_KEY = _DEFAULT_KEYS.active
DEAD_KEY = _DEFAULT_KEYS.dead
SCHEDULE_KEY = _DEFAULT_KEYS.scheduled
CLAIMS_KEY = _DEFAULT_KEYS.claims
_FINAL = json.dumps(sorted(FINAL_STATES))
_PACKAGE = "worker.stores.ledger"


class RedisLedger(Ledger):
    def __init__(
        self,
        client: redis.Redis,
        *,
        ttl_s: int = RECORD_TTL_S,
        clock: Callable[[], float] = time.time,
        keys: Keys = _DEFAULT_KEYS,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.ttl_s = ttl_s
        self.dead_letter_cap = DEAD_LETTER_CAP
        self._clock = clock
        self._create = load_script(client, _PACKAGE, "create.lua")
        self._create_many = load_script(client, _PACKAGE, "create_many.lua")
        self._transition = load_script(client, _PACKAGE, "transition.lua")
        self._release = load_script(client, _PACKAGE, "release.lua")
        self._hold = load_script(client, _PACKAGE, "hold.lua")
        self._claim_due = load_script(client, _PACKAGE, "claim_due.lua")
        self._cancel = load_script(client, _PACKAGE, "cancel.lua")
        self._if_exists = load_script(client, _PACKAGE, "if_exists.lua")

    def key(self, delivery_id: str) -> str:
        return self.keys.delivery(delivery_id)

    def idem_key(self, channel: str, idempotency_key: str) -> str:
        return self.keys.idem(channel, idempotency_key)

    def tag_key(self, provider: str, tag: str) -> str:
        return self.keys.tag(provider, tag)

    def create(
        self,
        delivery_id: str,
        *,
        channel: str,
        provider: str,
        idempotency_key: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> tuple[str, bool]:
        fields = {"channel": channel, "provider": provider, "attempts": "0", "throttled": "0"}
        if idempotency_key:
            fields["idempotency_key"] = idempotency_key
        fields.update(extra or {})
        argv: list[str] = [delivery_id, repr(self._clock()), str(self.ttl_s)]
        for k, v in fields.items():
            argv += [k, v]
        idem = self.idem_key(channel, idempotency_key) if idempotency_key else ""
        created, existing = self._create(
            keys=[self.key(delivery_id), idem, self.keys.active], args=argv
        )
        return text(existing), bool(created)

    def create_many(
        self, records: Sequence[NewRecord], *, fresh_ids: bool = False
    ) -> list[tuple[str, bool]]:
        """``create.lua`` for every record, run by ``create_many.lua`` in one script call.

        The fields every record shares are passed once; ``fresh_ids`` (new UUIDs, which no
        record can have yet) skips the check that the id is unknown."""
        if not records:
            return []
        each = []
        for r in records:
            fields = {"channel": r.channel, "provider": r.provider, "attempts": "0"}
            fields["throttled"] = "0"
            if r.idempotency_key:
                fields["idempotency_key"] = r.idempotency_key
            fields.update(r.extra or {})
            each.append(fields)
        common = dict(each[0])
        for fields in each[1:]:
            common = {k: v for k, v in common.items() if fields.get(k) == v}
        keys: list[str] = []
        args: list[str] = [str(len(records)), repr(self._clock()), str(self.ttl_s)]
        args += ["1" if fresh_ids else "0", str(len(common))]
        for k, v in common.items():
            args += [k, v]
        for r, fields in zip(records, each, strict=True):
            own = [(k, v) for k, v in fields.items() if k not in common]
            idem = self.idem_key(r.channel, r.idempotency_key) if r.idempotency_key else ""
            keys += [self.key(r.delivery_id), idem]
            args += [r.delivery_id, str(len(own))]
            for k, v in own:
                args += [k, v]
        keys.append(self.keys.active)
        replies = self._create_many(keys=keys, args=args)
        return [(text(existing), bool(created)) for created, existing in replies]

    def get_many(self, delivery_ids: Sequence[str]) -> list[DeliveryRecord | None]:
        pipe = self.redis.pipeline(transaction=False)
        for delivery_id in delivery_ids:
            pipe.hgetall(self.key(delivery_id))
        return [
            DeliveryRecord.from_fields(d, {text(k): text(v) for k, v in raw.items()})
            if raw
            else None
            for d, raw in zip(delivery_ids, pipe.execute(), strict=True)
        ]

    def get(self, delivery_id: str) -> DeliveryRecord | None:
        raw = self.redis.hgetall(self.key(delivery_id))
        if not raw:
            return None
        return DeliveryRecord.from_fields(delivery_id, {text(k): text(v) for k, v in raw.items()})

    def transition(self, delivery_id: str, state: str, **fields: str) -> bool:
        argv: list[str] = [
            state,
            str(STATE_RANK[state]),
            repr(self._clock()),
            json.dumps(STATE_RANK),
            delivery_id,
        ]
        for k, v in fields.items():
            argv += [k, v]
        keys = [self.key(delivery_id), self.keys.active, self.keys.scheduled, self.keys.claims]
        changed, _previous = self._transition(keys=keys, args=argv)
        return int(changed) == 1

    def incr(self, delivery_id: str, counter: str) -> int:
        value = self._if_exists(
            keys=[self.key(delivery_id), self.keys.active], args=["incr", counter]
        )
        return int(value) if value is not None else 0

    def set_fields(self, delivery_id: str, **fields: str) -> None:
        if fields:
            args = ["set"]
            for k, v in fields.items():
                args += [k, v]
            self._if_exists(keys=[self.key(delivery_id), self.keys.active], args=args)

    def forget(self, delivery_id: str, *, channel: str, idempotency_key: str | None) -> None:
        keys = [self.key(delivery_id)]
        if idempotency_key:
            keys.append(self.idem_key(channel, idempotency_key))
        self.redis.delete(*keys)
        self.redis.zrem(self.keys.active, delivery_id)
        self.redis.zrem(self.keys.scheduled, delivery_id)
        self.redis.hdel(self.keys.claims, delivery_id)

    # -- concurrency guard ---------------------------------------------------------------------

    def lock(self, delivery_id: str, token: str, ttl_s: float) -> float:
        key = self.keys.lock(delivery_id)
        if self.redis.set(key, token, nx=True, px=max(1, int(ttl_s * 1000))):
            return 0.0
        remaining_ms = int(self.redis.pttl(key))
        return max(remaining_ms, 1) / 1000 if remaining_ms > 0 else 0.001

    def holds(self, delivery_id: str, token: str) -> bool:
        return text(self.redis.get(self.keys.lock(delivery_id)) or b"") == token

    def unlock(self, delivery_id: str, token: str) -> None:
        self._release(keys=[self.keys.lock(delivery_id)], args=[token])

    # -- sweeping ------------------------------------------------------------------------------

    def stale(self, older_than_s: float, *, limit: int = 500) -> list[str]:
        cutoff = self._clock() - older_than_s
        ids = self.redis.zrangebyscore(self.keys.active, "-inf", cutoff, start=0, num=limit)
        return [text(i) for i in ids]

    def touch(self, delivery_id: str) -> None:
        args = ["touch", repr(self._clock()), delivery_id]
        self._if_exists(keys=[self.key(delivery_id), self.keys.active], args=args)

    def untrack(self, delivery_id: str) -> None:
        self.redis.zrem(self.keys.active, delivery_id)

    # -- the schedule --------------------------------------------------------------------------

    def hold(self, delivery_id: str, due: float, **fields: str) -> bool:
        argv: list[str] = [repr(due), repr(self._clock()), _FINAL, delivery_id]
        for k, v in fields.items():
            argv += [k, v]
        keys = [self.key(delivery_id), self.keys.active, self.keys.scheduled, self.keys.claims]
        return int(self._hold(keys=keys, args=argv)) == 1

    def hold_many(self, holds: Sequence[tuple[str, float, Mapping[str, str]]]) -> list[bool]:
        if not holds:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for delivery_id, due, fields in holds:
            argv: list[str] = [repr(due), repr(self._clock()), _FINAL, delivery_id]
            for k, v in fields.items():
                argv += [k, v]
            keys = [self.key(delivery_id), self.keys.active, self.keys.scheduled, self.keys.claims]
            self._hold(keys=keys, args=argv, client=pipe)
        return [int(answer) == 1 for answer in pipe.execute()]

    def claim_due(self, now: float, lease_s: float, *, limit: int = 200) -> list[DueEntry]:
        flat = self._claim_due(
            keys=[self.keys.scheduled, self.keys.claims],
            args=[repr(now), repr(lease_s), str(limit), self.keys.delivery_prefix],
        )
        items = [text(x) for x in flat]
        return [
            DueEntry(
                items[i], items[i + 1], items[i + 2], items[i + 3], int(items[i + 4]), items[i + 5]
            )
            for i in range(0, len(items) - 5, 6)
        ]

    def next_due(self) -> float | None:
        first = self.redis.zrange(self.keys.scheduled, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def schedule_size(self) -> int:
        return int(self.redis.zcard(self.keys.scheduled))

    def cancel(self, delivery_id: str, *, result: str, at_provider: bool = False) -> CancelAnswer:
        outcome, state = self._cancel(
            keys=[self.key(delivery_id), self.keys.active, self.keys.scheduled, self.keys.claims],
            args=[repr(self._clock()), _FINAL, delivery_id, "1" if at_provider else "0", result],
        )
        return CancelAnswer(text(outcome), text(state))

    # -- dead letters --------------------------------------------------------------------------

    def bury(self, delivery_id: str, *, reason: str, task_name: str, message: Any) -> bool:
        changed = self.transition(delivery_id, "dead", error_kind="dead_letter", dead_reason=reason)
        if changed:
            entry = buried_entry(
                task_name=task_name, message=message, reason=reason, at=self._clock()
            )
            self._keep_dead(delivery_id, entry)
        return changed

    def set_aside(self, delivery_id: str, *, reason: str, task_name: str, outline: Any) -> None:
        entry = set_aside_entry(
            task_name=task_name, outline=outline, reason=reason, at=self._clock()
        )
        self._keep_dead(delivery_id, entry)

    def _keep_dead(self, delivery_id: str, entry: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.dead, delivery_id, entry)
        pipe.expire(self.keys.dead, DEAD_LETTER_TTL_S)
        pipe.hlen(self.keys.dead)
        *_, size = pipe.execute()
        if int(size) > self.dead_letter_cap:
            letters = self.dead_letters()
            oldest = sorted(letters, key=lambda i: dead_letter_at(letters[i]))
            self.redis.hdel(self.keys.dead, *oldest[: int(size) - self.dead_letter_cap])

    def purge_dead(self, older_than_s: float | None = None) -> int:
        if older_than_s is None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.hlen(self.keys.dead)
            pipe.delete(self.keys.dead)
            size, _ = pipe.execute()
            return int(size)
        cutoff = self._clock() - older_than_s
        letters = self.dead_letters()
        old = [i for i, entry in letters.items() if dead_letter_at(entry) <= cutoff]
        return int(self.redis.hdel(self.keys.dead, *old)) if old else 0

    def dead_letters(self) -> dict[str, dict[str, Any]]:
        raw = self.redis.hgetall(self.keys.dead)
        return {text(k): json.loads(v) for k, v in raw.items()}

    def revive(self, delivery_id: str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.keys.dead, delivery_id)
        if raw is None:
            return None
        entry: dict[str, Any] = json.loads(raw)
        if entry.get("redacted"):
            return None  # refused by the checks and kept without its content: nothing to send
        now = repr(self._clock())
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            self.key(delivery_id),
            mapping={"state": "queued", "updated_at": now, "runs_unfinished": "0", "attempts": "0"},
        )
        pipe.hdel(self.key(delivery_id), "result")
        # A record that expired meanwhile is recreated here: with a TTL, as create gives one.
        pipe.expire(self.key(delivery_id), self.ttl_s, nx=True)
        pipe.zadd(self.keys.active, {delivery_id: float(now)})
        pipe.hdel(self.keys.dead, delivery_id)
        pipe.execute()
        return entry

    # -- caller-chosen provider tags (SMS Partner reconciliation) -----------------------------

    def note_tag_use(
        self, provider: str, tag: str, recipients: list[str], delivery_id: str, at: float
    ) -> None:
        key = self.tag_key(provider, tag)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(key, {f"{r}|{delivery_id}": at for r in recipients})
        pipe.zremrangebyscore(key, "-inf", at - TAG_MEMORY_S)
        pipe.expire(key, int(TAG_MEMORY_S))
        pipe.execute()

    def tag_used_by_others(
        self, provider: str, tag: str, recipients: list[str], delivery_id: str, since: float
    ) -> bool:
        wanted = set(recipients)
        for member in self.redis.zrangebyscore(self.tag_key(provider, tag), since, "+inf"):
            recipient, _, other = text(member).rpartition("|")
            if other != delivery_id and recipient in wanted:
                return True
        return False
