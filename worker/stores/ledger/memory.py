"""The in-process ledger stub: the Redis ledger's contract on dicts, with an injectable clock.

It keeps what Redis keeps the way Redis keeps it (fields as text, dead letters as JSON, records
and idempotency keys expiring ``ttl_s`` after creation), so a test on the stub says what the
shared ledger does. Thread-safe, shared by nothing else: for tests and single-process tools.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from worker.stores.ledger.base import (
    DEAD_LETTER_CAP,
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

__all__ = ["MemoryLedger"]


class MemoryLedger(Ledger):
    def __init__(
        self, clock: Callable[[], float] = time.time, *, ttl_s: int = RECORD_TTL_S
    ) -> None:
        self._clock = clock
        self.ttl_s = ttl_s
        self.dead_letter_cap = DEAD_LETTER_CAP
        self._lock = threading.RLock()
        self._records: dict[str, dict[str, str]] = {}
        self._expires: dict[str, float] = {}
        """Record id, or ``idem:<channel>:<key>`` → when it expires."""
        self._idem: dict[tuple[str, str], str] = {}
        self._active: dict[str, float] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._dead: dict[str, str] = {}
        self._tags: dict[tuple[str, str], dict[str, float]] = {}
        self._schedule: dict[str, float] = {}
        self._claims: dict[str, int] = {}

    # -- expiry (what Redis does with EXPIRE) --------------------------------------------------

    def _record(self, delivery_id: str) -> dict[str, str] | None:
        expires = self._expires.get(delivery_id)
        if expires is not None and self._clock() >= expires:
            self._records.pop(delivery_id, None)
            self._expires.pop(delivery_id, None)
        return self._records.get(delivery_id)

    def _fields(self, delivery_id: str) -> dict[str, str]:
        """The record's fields, created empty when missing (as HSET/HINCRBY do)."""
        found = self._record(delivery_id)
        if found is None:
            found = self._records[delivery_id] = {}
        return found

    def _indexed(self, channel: str, idempotency_key: str) -> str | None:
        key = (channel, idempotency_key)
        expires = self._expires.get(f"idem:{channel}:{idempotency_key}")
        if expires is not None and self._clock() >= expires:
            self._idem.pop(key, None)
        return self._idem.get(key)

    # -- records -------------------------------------------------------------------------------

    def create(
        self,
        delivery_id: str,
        *,
        channel: str,
        provider: str,
        idempotency_key: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> tuple[str, bool]:
        with self._lock:
            if idempotency_key:
                existing = self._indexed(channel, idempotency_key)
                if existing is not None:
                    return existing, False
            if self._record(delivery_id) is not None:
                return delivery_id, False
            now = self._clock()
            fields = {"state": "queued", "created_at": repr(now), "updated_at": repr(now)}
            fields |= {"channel": channel, "provider": provider, "attempts": "0", "throttled": "0"}
            if idempotency_key:
                fields["idempotency_key"] = idempotency_key
            fields.update(extra or {})
            self._records[delivery_id] = fields
            self._expires[delivery_id] = now + self.ttl_s
            if idempotency_key:
                self._idem[(channel, idempotency_key)] = delivery_id
                self._expires[f"idem:{channel}:{idempotency_key}"] = now + self.ttl_s
            self._active[delivery_id] = now
            return delivery_id, True

    def create_many(
        self, records: Sequence[NewRecord], *, fresh_ids: bool = False
    ) -> list[tuple[str, bool]]:
        return [
            self.create(
                r.delivery_id,
                channel=r.channel,
                provider=r.provider,
                idempotency_key=r.idempotency_key,
                extra=r.extra,
            )
            for r in records
        ]

    def get_many(self, delivery_ids: Sequence[str]) -> list[DeliveryRecord | None]:
        return [self.get(delivery_id) for delivery_id in delivery_ids]

    def get(self, delivery_id: str) -> DeliveryRecord | None:
        with self._lock:
            fields = self._record(delivery_id)
            return None if not fields else DeliveryRecord.from_fields(delivery_id, dict(fields))

    def transition(self, delivery_id: str, state: str, **fields: str) -> bool:
        new_rank = STATE_RANK[state]
        with self._lock:
            record = self._record(delivery_id)
            current = None if record is None else record.get("state")
            if record is None or current is None:
                return False
            current_rank = STATE_RANK.get(current, 0)
            if current_rank == 2 and current != state:
                return False
            if new_rank < current_rank:
                return False
            now = self._clock()
            record.update({"state": state, "updated_at": repr(now), **fields})
            if state != "scheduled":
                self._schedule.pop(delivery_id, None)
                self._claims.pop(delivery_id, None)
            if new_rank == 2 or state in ("parked", "scheduled"):
                self._active.pop(delivery_id, None)
            else:
                self._active[delivery_id] = now
            return True

    # -- the schedule --------------------------------------------------------------------------

    def hold(self, delivery_id: str, due: float, **fields: str) -> bool:
        with self._lock:
            record = self._record(delivery_id)
            if record is None or "state" not in record or record["state"] in FINAL_STATES:
                return False
            record.update({"state": "scheduled", "updated_at": repr(self._clock()), **fields})
            self._active.pop(delivery_id, None)
            self._schedule[delivery_id] = due
            self._claims.pop(delivery_id, None)
            return True

    def hold_many(self, holds: Sequence[tuple[str, float, Mapping[str, str]]]) -> list[bool]:
        return [self.hold(delivery_id, due, **fields) for delivery_id, due, fields in holds]

    def claim_due(self, now: float, lease_s: float, *, limit: int = 200) -> list[DueEntry]:
        with self._lock:
            due = sorted((t, i) for i, t in self._schedule.items() if t <= now)[:limit]
            out = []
            for _, delivery_id in due:
                record = self._record(delivery_id) or {}
                task_name, message = record.get("task_name"), record.get("message")
                if record.get("state") != "scheduled" or not task_name or not message:
                    self._schedule.pop(delivery_id, None)
                    self._claims.pop(delivery_id, None)
                    continue
                self._schedule[delivery_id] = now + lease_s
                before = self._claims.get(delivery_id, 0)
                self._claims[delivery_id] = before + 1
                queue = record.get("queue", "")
                chunk = record.get("chunk", "")
                out.append(DueEntry(delivery_id, task_name, message, queue, before, chunk))
            return out

    def next_due(self) -> float | None:
        with self._lock:
            return min(self._schedule.values(), default=None)

    def schedule_size(self) -> int:
        with self._lock:
            return len(self._schedule)

    def cancel(self, delivery_id: str, *, result: str, at_provider: bool = False) -> CancelAnswer:
        with self._lock:
            record = self._record(delivery_id)
            current = None if record is None else record.get("state")
            if record is None or current is None:
                return CancelAnswer("unknown", "")
            if current in FINAL_STATES:
                return CancelAnswer("final", current)
            if current == "sending":
                return CancelAnswer("sending", current)
            if not at_provider and record.get("provider_scheduled") == "1":
                return CancelAnswer("provider", current)
            now = repr(self._clock())
            record.update(
                state="cancelled",
                updated_at=now,
                cancelled_at=now,
                error_kind="cancelled",
                result=result,
            )
            self._active.pop(delivery_id, None)
            self._schedule.pop(delivery_id, None)
            self._claims.pop(delivery_id, None)
            return CancelAnswer("cancelled", current)

    def incr(self, delivery_id: str, counter: str) -> int:
        with self._lock:
            fields = self._record(delivery_id)
            if fields is None:
                return 0  # never recreated without its TTL (as if_exists.lua)
            value = int(fields.get(counter, "0")) + 1
            fields[counter] = str(value)
            return value

    def set_fields(self, delivery_id: str, **fields: str) -> None:
        if fields:
            with self._lock:
                found = self._record(delivery_id)
                if found is not None:
                    found.update(fields)

    def forget(self, delivery_id: str, *, channel: str, idempotency_key: str | None) -> None:
        with self._lock:
            self._records.pop(delivery_id, None)
            self._expires.pop(delivery_id, None)
            if idempotency_key:
                self._idem.pop((channel, idempotency_key), None)
            self._active.pop(delivery_id, None)
            self._schedule.pop(delivery_id, None)
            self._claims.pop(delivery_id, None)

    # -- concurrency guard ---------------------------------------------------------------------

    def lock(self, delivery_id: str, token: str, ttl_s: float) -> float:
        with self._lock:
            now = self._clock()
            held = self._locks.get(delivery_id)
            if held is None or held[1] <= now:
                # Whole milliseconds, as Redis keeps the lock (SET PX, PTTL).
                self._locks[delivery_id] = (token, now + max(1, int(ttl_s * 1000)) / 1000)
                return 0.0
            return max(int((held[1] - now) * 1000), 1) / 1000

    def holds(self, delivery_id: str, token: str) -> bool:
        with self._lock:
            held = self._locks.get(delivery_id)
            return held is not None and held[0] == token and held[1] > self._clock()

    def unlock(self, delivery_id: str, token: str) -> None:
        with self._lock:
            held = self._locks.get(delivery_id)
            if held is not None and held[0] == token:
                del self._locks[delivery_id]

    # -- a run's first and last ledger steps, each under the lock (as one script on Redis) ----

    def open_run(
        self, delivery_id: str, token: str, ttl_s: float
    ) -> tuple[DeliveryRecord | None, float, int]:
        with self._lock:
            fields = self._record(delivery_id)
            if not fields:
                return None, 0.0, 0
            if fields.get("state", "queued") in FINAL_STATES:
                return DeliveryRecord.from_fields(delivery_id, dict(fields)), 0.0, 0
            busy_s = self.lock(delivery_id, token, ttl_s)
            if busy_s == 0:
                runs = int(fields.get("runs_unfinished", "0")) + 1
                fields["runs_unfinished"] = str(runs)
            else:
                runs = 0
            return DeliveryRecord.from_fields(delivery_id, dict(fields)), busy_s, runs

    def close_run(
        self,
        delivery_id: str,
        token: str,
        *,
        reset_runs: bool,
        state: str | None = None,
        fields: dict[str, str] | None = None,
        late: dict[str, str] | None = None,
    ) -> tuple[bool, bool]:
        with self._lock:
            held = self._locks.get(delivery_id)
            if held is None or held[0] != token or held[1] <= self._clock():
                found = self._record(delivery_id)
                if late is not None and found:
                    found.update(late)
                return False, False
            changed = state is not None and self.transition(delivery_id, state, **(fields or {}))
            if reset_runs:
                found = self._record(delivery_id)
                if found is not None:
                    found["runs_unfinished"] = "0"
            del self._locks[delivery_id]
            return True, changed

    # -- sweeping ------------------------------------------------------------------------------

    def stale(self, older_than_s: float, *, limit: int = 500) -> list[str]:
        with self._lock:
            cutoff = self._clock() - older_than_s
            ordered = sorted((score, i) for i, score in self._active.items() if score <= cutoff)
            return [i for _score, i in ordered[:limit]]

    def touch(self, delivery_id: str) -> None:
        with self._lock:
            now = self._clock()
            found = self._record(delivery_id)
            if found is None:
                return
            found["updated_at"] = repr(now)
            if delivery_id in self._active:
                self._active[delivery_id] = now

    def untrack(self, delivery_id: str) -> None:
        with self._lock:
            self._active.pop(delivery_id, None)

    # -- dead letters --------------------------------------------------------------------------

    def bury(self, delivery_id: str, *, reason: str, task_name: str, message: Any) -> bool:
        with self._lock:
            changed = self.transition(
                delivery_id, "dead", error_kind="dead_letter", dead_reason=reason
            )
            if changed:
                self._keep_dead(
                    delivery_id,
                    buried_entry(
                        task_name=task_name, message=message, reason=reason, at=self._clock()
                    ),
                )
            return changed

    def set_aside(self, delivery_id: str, *, reason: str, task_name: str, outline: Any) -> None:
        with self._lock:
            self._keep_dead(
                delivery_id,
                set_aside_entry(
                    task_name=task_name, outline=outline, reason=reason, at=self._clock()
                ),
            )

    def _keep_dead(self, delivery_id: str, entry: str) -> None:
        self._dead[delivery_id] = entry
        if len(self._dead) > self.dead_letter_cap:
            letters = {k: json.loads(v) for k, v in self._dead.items()}
            oldest = sorted(letters, key=lambda i: dead_letter_at(letters[i]))
            for gone in oldest[: len(self._dead) - self.dead_letter_cap]:
                del self._dead[gone]

    def purge_dead(self, older_than_s: float | None = None) -> int:
        with self._lock:
            if older_than_s is None:
                count = len(self._dead)
                self._dead.clear()
                return count
            cutoff = self._clock() - older_than_s
            old = [k for k, v in self._dead.items() if dead_letter_at(json.loads(v)) <= cutoff]
            for gone in old:
                del self._dead[gone]
            return len(old)

    def dead_letters(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: json.loads(v) for k, v in self._dead.items()}

    def revive(self, delivery_id: str) -> dict[str, Any] | None:
        with self._lock:
            raw = self._dead.get(delivery_id)
            if raw is None:
                return None
            entry: dict[str, Any] = json.loads(raw)
            if entry.get("redacted"):
                return None  # refused by the checks and kept without its content
            now = self._clock()
            if self._record(delivery_id) is None:
                # Expired meanwhile: recreated with a TTL, as create gives one.
                self._expires[delivery_id] = now + self.ttl_s
            fields = self._fields(delivery_id)
            fields.update(
                {
                    "state": "queued",
                    "updated_at": repr(now),
                    "runs_unfinished": "0",
                    "attempts": "0",
                }
            )
            fields.pop("result", None)
            self._active[delivery_id] = now
            del self._dead[delivery_id]
            return entry

    # -- caller-chosen provider tags (SMS Partner reconciliation) -----------------------------

    def note_tag_use(
        self, provider: str, tag: str, recipients: list[str], delivery_id: str, at: float
    ) -> None:
        with self._lock:
            uses = self._tags.setdefault((provider, tag), {})
            uses.update({f"{r}|{delivery_id}": at for r in recipients})
            for member in [m for m, score in uses.items() if score <= at - TAG_MEMORY_S]:
                del uses[member]

    def tag_used_by_others(
        self, provider: str, tag: str, recipients: list[str], delivery_id: str, since: float
    ) -> bool:
        wanted = set(recipients)
        with self._lock:
            uses = dict(self._tags.get((provider, tag), {}))
        for member, score in uses.items():
            recipient, _, other = member.rpartition("|")
            if score >= since and other != delivery_id and recipient in wanted:
                return True
        return False
