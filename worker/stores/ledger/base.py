"""The delivery ledger: one record per delivery, with forward-only state transitions.

States and their rank (a transition never lowers the rank, and a final state never changes)::

    queued (0) → sending / waiting / parked / scheduled (1)
               → sent / failed / expired / dead / cancelled (2, final)

``waiting`` is a retry scheduled after an error or a throttle; ``parked`` is a message held
while its provider is paused; ``scheduled`` is a message held until its ``send_at`` (in the
ledger's schedule, or at the provider); ``dead`` is a poison message set aside after it killed
its worker too often (see :meth:`Ledger.bury`); ``cancelled`` was taken back before it was sent
(:meth:`Ledger.cancel`).

Besides the records, the ledger keeps:

* the idempotency index (channel and idempotency key → delivery id);
* the active set, the unfinished deliveries by their last update, which the sweeper scans for
  deliveries stuck in ``queued``/``sending``/``waiting`` (:meth:`Ledger.stale`);
* a short per-delivery lock so two copies of one task (a redelivery, a sweep) never send at
  the same time;
* the dead letters with their message, for ``delivery-worker dead replay``;
* notes of caller-chosen provider tags (SMS Partner reconciliation);
* the schedule: ``scheduled`` deliveries by due time, claimed by the schedule mover
  (``worker.scheduling.mover``) with a lease when due (:meth:`Ledger.claim_due`). Any
  transition out of ``scheduled`` takes the delivery off the schedule in the same step.

:class:`~worker.stores.ledger.redis.RedisLedger` is the shared ledger of every worker and
producer; :class:`~worker.stores.ledger.memory.MemoryLedger` the in-process stub with the same
contract (``tests/stores/test_ledger_contract.py`` runs against both).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "FINAL_STATES",
    "GAVE_UP",
    "NOT_BEFORE",
    "OUTCOME_UNKNOWN",
    "RECORD_TTL_S",
    "STATE_RANK",
    "TAG_MEMORY_S",
    "CancelAnswer",
    "DeliveryRecord",
    "DueEntry",
    "Ledger",
    "NewRecord",
    "buried_entry",
    "set_aside_entry",
]

STATE_RANK: dict[str, int] = {
    "queued": 0,
    "sending": 1,
    "waiting": 1,
    "parked": 1,
    "scheduled": 1,
    "sent": 2,
    "failed": 2,
    "expired": 2,
    "dead": 2,
    "cancelled": 2,
}
FINAL_STATES = frozenset(s for s, rank in STATE_RANK.items() if rank == 2)

OUTCOME_UNKNOWN = "outcome_unknown"
"""Record field: "1" while an earlier send's outcome could not be reconciled (ask again first)."""
NOT_BEFORE = "not_before"
"""Record field: epoch seconds before which the provider is not called (a deferred message, or
the grace before reconciling an unknown outcome)."""
GAVE_UP = "unknown_outcome_error"
"""Record field: the last error (JSON) when retries ran out with the outcome still unknown; the
delivery fails with it only once the provider, asked after the grace, has not seen the send."""

RECORD_TTL_S = 14 * 24 * 3600
"""How long a record and its idempotency key are kept after the delivery was created."""
TAG_MEMORY_S = 24 * 3600.0
"""How long tag uses are remembered: well beyond any reconciliation window (grace + timeout)."""


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
    final: bool = field(init=False, repr=False, compare=False)
    """The state is final (``FINAL_STATES``): read as data, set once from ``state``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "final", self.state in FINAL_STATES)

    @classmethod
    def from_fields(cls, delivery_id: str, fields: dict[str, str]) -> DeliveryRecord:
        """A record from its stored fields (every field is text, as in the Redis hash)."""
        return cls(
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
            "send_at",
            "scheduled_for",
            "provider_scheduled",
            "cancelled_at",
        ):
            if name in self.fields:
                out[name] = self.fields[name]
        if self.result is not None:
            out["result"] = self.result
        return out


@dataclass(frozen=True)
class DueEntry:
    """A due delivery the mover publishes: its task, message (JSON) and queue ("" = default)."""

    delivery_id: str
    task_name: str
    message: str
    queue: str
    claimed_before: int = 0
    """How often a mover claimed it before: 0 the first time it is due; more when its lease
    ended before its run started (its worker died, or it still waits in a busy queue)."""
    chunk: str = ""
    """A campaign message's chunk size (record field ``chunk``, ``worker.campaign``): the
    mover publishes such entries together, as chunk tasks of at most that many; "" for a
    single send."""


@dataclass(frozen=True)
class CancelAnswer:
    """What :meth:`Ledger.cancel` did: ``outcome`` is ``cancelled``, ``final`` (already
    finished: see ``state``), ``sending`` (a send is under way), ``provider`` (scheduled at the
    provider: cancel there first) or ``unknown`` (no such delivery)."""

    outcome: str
    state: str


@dataclass(frozen=True)
class NewRecord:
    """One record of :meth:`Ledger.create_many` (:meth:`Ledger.create`'s arguments)."""

    delivery_id: str
    channel: str
    provider: str
    idempotency_key: str | None = None
    extra: dict[str, str] | None = None


# The ledger by role. One store (a Redis hash per delivery and its indexes, or dicts in memory)
# answers every role; each feature depends on the role it uses (``Runtime.records``,
# ``Runtime.run_locks``, ``Runtime.schedule``, ``Runtime.dead_letters``, ``Runtime.tag_index``),
# and :class:`Ledger` is all of them (the backends, the contract suite).


class Records(Protocol):
    """Delivery records shared by producers and every worker: create, read, typed transitions
    and marks, the sweeper's view. Times are Unix seconds."""

    def create(
        self,
        delivery_id: str,
        *,
        channel: str,
        provider: str,
        idempotency_key: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> tuple[str, bool]:
        """Record a new delivery (state ``queued``); ``(existing_id, False)`` when the
        idempotency key (per channel) or the delivery id is already known."""
        ...

    def create_many(
        self, records: Sequence[NewRecord], *, fresh_ids: bool = False
    ) -> list[tuple[str, bool]]:
        """:meth:`create` for each record, in order, in one round trip (a campaign's chunk);
        one answer each. ``fresh_ids``: the ids are new UUIDs (no record can have one yet),
        so only the idempotency keys are looked up."""
        ...

    def get(self, delivery_id: str) -> DeliveryRecord | None: ...

    def get_many(self, delivery_ids: Sequence[str]) -> list[DeliveryRecord | None]:
        """:meth:`get` for each id, in order, in one round trip."""
        ...

    def transition(self, delivery_id: str, state: str, **fields: str) -> bool:
        """Move to ``state`` if that is forward; returns whether the record changed.

        A final or parked record leaves the active set; any other state refreshes its place.
        """
        ...

    def incr(self, delivery_id: str, counter: str) -> int:
        """Add one to a counter field (``attempts``, ``throttled``, ...); returns the new value."""
        ...

    def set_fields(self, delivery_id: str, **fields: str) -> None:
        """Write fields of an existing record as they are (a missing record stays missing).
        The delivery flow never calls it: it names what happened with the marks below."""
        ...

    # -- typed marks: what happened, not which fields change ----------------------------------
    # Written on each backend's ``set_fields`` (one HSET-if-exists script on Redis, one dict
    # update in memory), so the field names live here and nowhere in the flow.

    def record_provider(self, delivery_id: str, provider: str) -> None:
        """The run chose ``provider`` (routing picked it, or failover moved to it)."""
        self.set_fields(delivery_id, provider=provider)

    def record_result(self, delivery_id: str, result: str) -> None:
        """The result (JSON) a record answers with, written after its final state (a dead
        letter's result follows :meth:`bury`)."""
        self.set_fields(delivery_id, result=result)

    def record_send_at(self, delivery_id: str, send_at: float) -> None:
        """The message asks to be sent at ``send_at`` (Unix seconds): kept for the operator and
        for the schedule's later runs."""
        self.set_fields(delivery_id, send_at=repr(send_at))

    def mark_outcome_unknown(
        self, delivery_id: str, *, ask_at: float | None = None, gave_up: str | None = None
    ) -> None:
        """An earlier send's outcome is unknown: the provider is asked (not before ``ask_at``)
        before any resend; ``gave_up``: the error (JSON) to fail with if it has not seen it."""
        marks = {OUTCOME_UNKNOWN: "1"}
        if ask_at is not None:
            marks[NOT_BEFORE] = repr(ask_at)
        if gave_up is not None:
            marks[GAVE_UP] = gave_up
        self.set_fields(delivery_id, **marks)

    def mark_outcome_known(self, delivery_id: str) -> None:
        """The provider was asked and has not seen the earlier send: it may be sent again."""
        self.set_fields(delivery_id, **{OUTCOME_UNKNOWN: "0"})

    def forget(self, delivery_id: str, *, channel: str, idempotency_key: str | None) -> None:
        """Drop a record that was never published (the enqueue failed)."""
        ...

    def cancel(self, delivery_id: str, *, result: str, at_provider: bool = False) -> CancelAnswer:
        """Take the delivery back: ``cancelled`` (final) unless it is final already or a send
        is under way (``sending``), in one atomic step with the state check, so it races a
        send's gate (which moves to ``sending`` only from an unfinished state) to exactly one
        winner. A delivery scheduled *at the provider* (``provider_scheduled``) is refused
        with ``provider`` unless ``at_provider`` says the provider has cancelled it."""
        ...

    # -- sweeping ------------------------------------------------------------------------------

    def stale(self, older_than_s: float, *, limit: int = 500) -> list[str]:
        """Unfinished deliveries whose last update is older than ``older_than_s``, oldest first."""
        ...

    def touch(self, delivery_id: str) -> None:
        """Mark the delivery updated now (the sweeper requeued it)."""
        ...

    def untrack(self, delivery_id: str) -> None:
        """Take the delivery out of the active set: nothing for the sweeper to do with it."""
        ...


class RunLocks(Protocol):
    """A delivery's send lock: one run at a time, and a run's first and last ledger steps."""

    def lock(self, delivery_id: str, token: str, ttl_s: float) -> float:
        """Take the delivery's send lock; 0.0 when taken, else the seconds until it frees."""
        ...

    def unlock(self, delivery_id: str, token: str) -> None:
        """Release the lock if ``token`` still holds it."""
        ...

    def holds(self, delivery_id: str, token: str) -> bool:
        """Whether ``token`` still holds the delivery's send lock (it has not expired)."""
        ...

    def open_run(
        self, delivery_id: str, token: str, ttl_s: float
    ) -> tuple[DeliveryRecord | None, float, int]:
        """(record, busy_s, runs): no record (``None``); a final record (no lock taken); the
        lock held elsewhere (``busy_s`` > 0); else the lock taken and the unfinished runs
        counted (``runs``), with the record as it is then."""
        ...

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
        """(held, changed): while ``token`` holds the lock, move to ``state`` with ``fields``
        (if given), set the unfinished runs back to 0 (``reset_runs``) and unlock; the lock
        lost, write ``late`` on the record (if it exists) and change nothing else."""
        ...


class Schedule(Protocol):
    """``scheduled`` deliveries by due time (``worker.scheduling``)."""

    def hold(self, delivery_id: str, due: float, **fields: str) -> bool:
        """Move to ``scheduled`` and put the delivery on the schedule at ``due`` (Unix seconds),
        in one step; ``False`` (nothing changed) when the record is final or missing."""
        ...

    def hold_many(self, holds: Sequence[tuple[str, float, Mapping[str, str]]]) -> list[bool]:
        """:meth:`hold` for each (delivery id, due, fields), in one round trip (a campaign's
        chunk held at enqueue, ``worker.scheduling.enqueue.hold_chunk``)."""
        ...

    def claim_due(self, now: float, lease_s: float, *, limit: int = 200) -> list[DueEntry]:
        """Due deliveries for the mover to publish, each leased: its due time moves to
        ``now + lease_s`` in the same atomic step, so no other mover takes it meanwhile, and a
        mover that dies before publishing leaves it to be taken again when the lease ends. An
        entry whose record is gone or no longer ``scheduled`` is dropped."""
        ...

    def next_due(self) -> float | None:
        """The earliest due time on the schedule (leases included), or ``None``."""
        ...

    def schedule_size(self) -> int: ...


class DeadLetters(Protocol):
    """Poison and refused messages set aside, for the operator (``delivery-worker dead``)."""

    def bury(self, delivery_id: str, *, reason: str, task_name: str, message: Any) -> bool:
        """Set a poison message aside: state ``dead``, message kept for a replay."""
        ...

    def set_aside(self, delivery_id: str, *, reason: str, task_name: str, outline: Any) -> None:
        """Keep a refused message for inspection, redacted: its outline (keys and types), never
        its content. Not replayable: the message broke the checks (``worker.guard``)."""
        ...

    def dead_letters(self) -> dict[str, dict[str, Any]]: ...

    def purge_dead(self, older_than_s: float | None = None) -> int:
        """Drop dead letters set aside more than ``older_than_s`` ago (None: all); how many."""
        ...

    def revive(self, delivery_id: str) -> dict[str, Any] | None:
        """Take a dead letter back for a replay: the record starts again at ``queued``.

        This is the one transition that goes backwards, and only an operator makes it. ``None``
        for an unknown id and for a redacted (refused) message: nothing to send.
        """
        ...


class TagIndex(Protocol):
    """Caller-chosen provider tags (SMS Partner reconciliation)."""

    def note_tag_use(
        self, provider: str, tag: str, recipients: list[str], delivery_id: str, at: float
    ) -> None:
        """Remember that ``delivery_id`` sent to ``recipients`` under a caller's ``tag``."""
        ...

    def tag_used_by_others(
        self, provider: str, tag: str, recipients: list[str], delivery_id: str, since: float
    ) -> bool:
        """Whether another delivery sent to one of ``recipients`` under ``tag`` since ``since``."""
        ...


class Ledger(Records, RunLocks, Schedule, DeadLetters, TagIndex, Protocol):
    """Every role of the ledger: what a backend implements."""

    # -- a run's first and last ledger steps (the hot path's ledger part) ---------------------
    # Written here on the calls above, as the composed hot path runs them one after the other;
    # a backend may do each in one step (the in-memory ledger, under its lock). On Redis the
    # hot path's scripts do them (``worker/stores/hotpath/``).

    def open_run(
        self, delivery_id: str, token: str, ttl_s: float
    ) -> tuple[DeliveryRecord | None, float, int]:
        record = self.get(delivery_id)
        if record is None or record.final:
            return record, 0.0, 0
        busy_s = self.lock(delivery_id, token, ttl_s)
        if busy_s > 0:
            return record, busy_s, 0
        runs = self.incr(delivery_id, "runs_unfinished")
        return self.get(delivery_id) or record, 0.0, runs

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
        if not self.holds(delivery_id, token):
            if late is not None and self.get(delivery_id) is not None:
                self.set_fields(delivery_id, **late)
            return False, False
        changed = False
        if state is not None:
            changed = self.transition(delivery_id, state, **(fields or {}))
        if reset_runs:
            self.set_fields(delivery_id, runs_unfinished="0")
        self.unlock(delivery_id, token)
        return True, changed


DEAD_LETTER_CAP = 10_000
"""Dead letters kept at most; adding one more drops the oldest."""
DEAD_LETTER_TTL_S = 30 * 24 * 3600
"""The dead letters expire together once none was added for this long (30 days)."""


def dead_letter_at(entry: dict[str, Any]) -> float:
    """When a dead letter was set aside (0 for an entry without a readable time)."""
    try:
        return float(entry.get("at", 0.0))
    except (TypeError, ValueError):
        return 0.0


def buried_entry(*, task_name: str, message: Any, reason: str, at: float) -> str:
    """A replayable dead letter as stored (JSON), for :meth:`Ledger.bury`."""
    return json.dumps({"task_name": task_name, "message": message, "reason": reason, "at": at})


def set_aside_entry(*, task_name: str, outline: Any, reason: str, at: float) -> str:
    """A redacted dead letter as stored (JSON), for :meth:`Ledger.set_aside`."""
    entry = {
        "task_name": task_name,
        "message": None,
        "outline": outline,
        "reason": reason,
        "redacted": True,
        "at": at,
    }
    return json.dumps(entry)
