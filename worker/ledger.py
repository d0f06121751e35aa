"""The delivery ledger: one Redis hash per delivery, with forward-only state transitions.

States and their rank (a transition never lowers the rank, and a final state never changes)::

    queued (0) → sending / waiting / parked (1) → sent / failed / expired / dead (2, final)

``waiting`` is a retry scheduled after an error or a throttle; ``parked`` is a message held
while its provider is paused; ``dead`` is a poison message set aside after it killed its
worker too often (see :meth:`Ledger.bury`).

Besides the records, the ledger keeps:

* the idempotency index (``dw:idem:<channel>:<key>`` → delivery id);
* ``dw:active``, a sorted set of unfinished deliveries scored by their last update, which the
  sweeper scans for deliveries stuck in ``queued``/``sending``/``waiting``;
* a short per-delivery lock so two copies of one task (a redelivery, a sweep) never send at
  the same time;
* ``dw:dead``, the dead letters with their message, for ``delivery-worker dead replay``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

__all__ = ["ACTIVE_KEY", "DEAD_KEY", "FINAL_STATES", "STATE_RANK", "DeliveryRecord", "Ledger"]

STATE_RANK: dict[str, int] = {
    "queued": 0,
    "sending": 1,
    "waiting": 1,
    "parked": 1,
    "sent": 2,
    "failed": 2,
    "expired": 2,
    "dead": 2,
}
FINAL_STATES = frozenset(s for s, rank in STATE_RANK.items() if rank == 2)

_PREFIX = "dw:delivery:"
_IDEM_PREFIX = "dw:idem:"
_LOCK_PREFIX = "dw:lock:"
ACTIVE_KEY = "dw:active"
_TAG_PREFIX = "dw:tag:"
_TAG_MEMORY_S = 24 * 3600.0
"""How long tag uses are remembered: well beyond any reconciliation window (grace + timeout)."""
DEAD_KEY = "dw:dead"
_RECORD_TTL_S = 14 * 24 * 3600

# KEYS[1] record, KEYS[2] idempotency index (or ""), KEYS[3] active set
# ARGV: delivery_id, now, ttl_s, then field/value pairs for a new record
_CREATE = """
if KEYS[2] ~= "" then
  local existing = redis.call('GET', KEYS[2])
  if existing then return {0, existing} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, ARGV[1]} end
local args = {'state', 'queued', 'created_at', ARGV[2], 'updated_at', ARGV[2]}
for i = 4, #ARGV, 2 do
  table.insert(args, ARGV[i]); table.insert(args, ARGV[i + 1])
end
redis.call('HSET', KEYS[1], unpack(args))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
if KEYS[2] ~= "" then redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[3])) end
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return {1, ARGV[1]}
"""

# KEYS[1] record, KEYS[2] active set
# ARGV: new_state, new_rank, now, ranks (JSON), delivery_id, then field/value pairs
_TRANSITION = """
local ranks = cjson.decode(ARGV[4])
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {-1, ''} end
local cur_rank = ranks[current] or 0
local new_rank = tonumber(ARGV[2])
if cur_rank == 2 and current ~= ARGV[1] then return {0, current} end
if new_rank < cur_rank then return {0, current} end
local args = {'state', ARGV[1], 'updated_at', ARGV[3]}
for i = 6, #ARGV, 2 do
  table.insert(args, ARGV[i]); table.insert(args, ARGV[i + 1])
end
redis.call('HSET', KEYS[1], unpack(args))
if new_rank == 2 or ARGV[1] == 'parked' then
  -- final, or parked (held in the parking store): nothing for the sweeper to look at
  redis.call('ZREM', KEYS[2], ARGV[5])
else
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
end
return {1, current}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class DeliveryRecord:
    delivery_id: str
    state: str
    channel: str
    provider: str
    created_at: float
    updated_at: float
    attempts: int
    """Send attempts that ended in an error (the error-retry budget)."""
    throttled: int
    """Times the delivery waited for a limiter, a breaker or a provider's Retry-After."""
    fields: dict[str, str]

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def result(self) -> dict[str, Any] | None:
        raw = self.fields.get("result")
        if not raw:
            return None
        value: dict[str, Any] = json.loads(raw)
        return value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "delivery_id": self.delivery_id,
            "state": self.state,
            "channel": self.channel,
            "provider": self.provider,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "attempts": self.attempts,
            "throttled": self.throttled,
        }
        for name in (
            "deadline",
            "sent_at",
            "parked_reason",
            "waiting_reason",
            "error_kind",
            "dead_reason",
            "task_name",
        ):
            if name in self.fields:
                out[name] = self.fields[name]
        if self.result is not None:
            out["result"] = self.result
        return out


class Ledger:
    """Delivery records in Redis, shared by producers and every worker."""

    def __init__(self, client: redis.Redis, *, ttl_s: int = _RECORD_TTL_S) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._create = client.register_script(_CREATE)
        self._transition = client.register_script(_TRANSITION)
        self._release = client.register_script(_RELEASE)

    @staticmethod
    def key(delivery_id: str) -> str:
        return _PREFIX + delivery_id

    @staticmethod
    def idem_key(channel: str, idempotency_key: str) -> str:
        return f"{_IDEM_PREFIX}{channel}:{idempotency_key}"

    def create(
        self,
        delivery_id: str,
        *,
        channel: str,
        provider: str,
        idempotency_key: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> tuple[str, bool]:
        """Record a new delivery; ``(existing_id, False)`` when the idempotency key is known."""
        fields = {"channel": channel, "provider": provider, "attempts": "0", "throttled": "0"}
        if idempotency_key:
            fields["idempotency_key"] = idempotency_key
        fields.update(extra or {})
        argv: list[str] = [delivery_id, repr(time.time()), str(self.ttl_s)]
        for k, v in fields.items():
            argv += [k, v]
        idem = self.idem_key(channel, idempotency_key) if idempotency_key else ""
        created, existing = self._create(keys=[self.key(delivery_id), idem, ACTIVE_KEY], args=argv)
        return _text(existing), bool(created)

    def get(self, delivery_id: str) -> DeliveryRecord | None:
        raw = self.redis.hgetall(self.key(delivery_id))
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return DeliveryRecord(
            delivery_id=delivery_id,
            state=fields.get("state", "queued"),
            channel=fields.get("channel", ""),
            provider=fields.get("provider", ""),
            created_at=float(fields.get("created_at", "0")),
            updated_at=float(fields.get("updated_at", "0")),
            attempts=int(fields.get("attempts", "0")),
            throttled=int(fields.get("throttled", "0")),
            fields=fields,
        )

    def transition(self, delivery_id: str, state: str, **fields: str) -> bool:
        """Move to ``state`` if that is forward; returns whether the record changed."""
        argv: list[str] = [
            state,
            str(STATE_RANK[state]),
            repr(time.time()),
            json.dumps(STATE_RANK),
            delivery_id,
        ]
        for k, v in fields.items():
            argv += [k, v]
        changed, _previous = self._transition(keys=[self.key(delivery_id), ACTIVE_KEY], args=argv)
        return int(changed) == 1

    # -- concurrency guard ---------------------------------------------------------------------

    def lock(self, delivery_id: str, token: str, ttl_s: float) -> float:
        """Take the delivery's send lock; 0.0 when taken, else the seconds until it frees."""
        key = _LOCK_PREFIX + delivery_id
        if self.redis.set(key, token, nx=True, px=max(1, int(ttl_s * 1000))):
            return 0.0
        remaining_ms = int(self.redis.pttl(key))
        return max(remaining_ms, 1) / 1000 if remaining_ms > 0 else 0.001

    def unlock(self, delivery_id: str, token: str) -> None:
        self._release(keys=[_LOCK_PREFIX + delivery_id], args=[token])

    # -- sweeping and dead letters -------------------------------------------------------------

    def stale(self, older_than_s: float, *, limit: int = 500) -> list[str]:
        """Unfinished deliveries whose last update is older than ``older_than_s``."""
        cutoff = time.time() - older_than_s
        ids = self.redis.zrangebyscore(ACTIVE_KEY, "-inf", cutoff, start=0, num=limit)
        return [_text(i) for i in ids]

    def touch(self, delivery_id: str) -> None:
        now = time.time()
        self.redis.hset(self.key(delivery_id), "updated_at", repr(now))
        self.redis.zadd(ACTIVE_KEY, {delivery_id: now}, xx=True)

    def bury(self, delivery_id: str, *, reason: str, task_name: str, message: Any) -> bool:
        """Set a poison message aside: state ``dead``, message kept for a replay."""
        changed = self.transition(delivery_id, "dead", error_kind="dead_letter", dead_reason=reason)
        if changed:
            entry = {
                "task_name": task_name,
                "message": message,
                "reason": reason,
                "at": time.time(),
            }
            self.redis.hset(DEAD_KEY, delivery_id, json.dumps(entry))
        return changed

    def set_aside(self, delivery_id: str, *, reason: str, task_name: str, outline: Any) -> None:
        """Keep a refused message for inspection, redacted: its outline (keys and types), never
        its content. Not replayable: the message broke the checks (``worker.guard``)."""
        entry = {
            "task_name": task_name,
            "message": None,
            "outline": outline,
            "reason": reason,
            "redacted": True,
            "at": time.time(),
        }
        self.redis.hset(DEAD_KEY, delivery_id, json.dumps(entry))

    def dead_letters(self) -> dict[str, dict[str, Any]]:
        raw = self.redis.hgetall(DEAD_KEY)
        return {_text(k): json.loads(v) for k, v in raw.items()}

    def revive(self, delivery_id: str) -> dict[str, Any] | None:
        """Take a dead letter back for a replay: the record starts again at ``queued``.

        This is the one transition that goes backwards, and only an operator makes it.
        """
        raw = self.redis.hget(DEAD_KEY, delivery_id)
        if raw is None:
            return None
        entry: dict[str, Any] = json.loads(raw)
        if entry.get("redacted"):
            return None  # refused by the checks and kept without its content: nothing to send
        now = repr(time.time())
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            self.key(delivery_id),
            mapping={"state": "queued", "updated_at": now, "runs_unfinished": "0", "attempts": "0"},
        )
        pipe.hdel(self.key(delivery_id), "result")
        pipe.zadd(ACTIVE_KEY, {delivery_id: float(now)})
        pipe.hdel(DEAD_KEY, delivery_id)
        pipe.execute()
        return entry

    def forget(self, delivery_id: str, *, channel: str, idempotency_key: str | None) -> None:
        """Drop a record that was never published (the enqueue failed)."""
        keys = [self.key(delivery_id)]
        if idempotency_key:
            keys.append(self.idem_key(channel, idempotency_key))
        self.redis.delete(*keys)
        self.redis.zrem(ACTIVE_KEY, delivery_id)

    def incr(self, delivery_id: str, counter: str) -> int:
        return int(self.redis.hincrby(self.key(delivery_id), counter, 1))

    def set_fields(self, delivery_id: str, **fields: str) -> None:
        if fields:
            self.redis.hset(self.key(delivery_id), mapping=dict(fields.items()))

    # -- caller-chosen provider tags (SMS Partner reconciliation) -----------------------------

    @staticmethod
    def tag_key(provider: str, tag: str) -> str:
        return f"{_TAG_PREFIX}{provider}:{tag}"

    def note_tag_use(
        self, provider: str, tag: str, recipients: list[str], delivery_id: str, at: float
    ) -> None:
        """Remember that ``delivery_id`` sent to ``recipients`` under a caller's ``tag``."""
        key = self.tag_key(provider, tag)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(key, {f"{r}|{delivery_id}": at for r in recipients})
        pipe.zremrangebyscore(key, "-inf", at - _TAG_MEMORY_S)
        pipe.expire(key, int(_TAG_MEMORY_S))
        pipe.execute()

    def tag_used_by_others(
        self, provider: str, tag: str, recipients: list[str], delivery_id: str, since: float
    ) -> bool:
        """Whether another delivery sent to one of ``recipients`` under ``tag`` since ``since``."""
        wanted = set(recipients)
        for member in self.redis.zrangebyscore(self.tag_key(provider, tag), since, "+inf"):
            recipient, _, other = _text(member).rpartition("|")
            if other != delivery_id and recipient in wanted:
                return True
        return False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
