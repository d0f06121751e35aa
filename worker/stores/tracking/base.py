"""The tracking store: what providers said about each recipient of each sent delivery.

Written when a send ends ``sent`` (:meth:`TrackingStore.register`) and by every normalised
event (:meth:`TrackingStore.apply`); read by ``delivery-worker status`` and
``worker.tracking.delivery_status``. It keeps:

* an **index** provider + provider message id → (delivery id, masked recipient): a webhook
  event names only the provider's id, and the index is the only way an event reaches a
  delivery (an event naming a delivery the index does not confirm is refused);
* each recipient's **state**, moving forward only (``worker.tracking.advances``);
* a bounded **history** per delivery (the last :data:`HISTORY_CAP` events);
* the **event ids seen** per delivery: a provider retry of the same event is applied once;
* an **outbox** per delivery: the notifications for the application's events task, written in
  the same atomic step as the state, drained in order (``worker.tracking.notify``);
* the **watch list** of deliveries whose provider can be asked (the poller's schedule).

Events for a provider message id the index does not know yet are kept for
:data:`ORPHAN_TTL_S` (a webhook can arrive before our ``sent`` write: Postal posts
``MessageSent`` as soon as it hands the mail on) and replayed by :meth:`TrackingStore.register`;
after that they are gone, counted by the caller. Recipients are masked everywhere except in a
watch's ``lookup`` values (SMS Partner's status lookup needs the full number,
docs/providers/smspartner.md §1.2.7-§1.2.8), which live only while the delivery is polled and never
reach a result, event or log.

Standalone like the other stores: nothing here imports settings, Celery or the rest of the
worker; the event model comes from ``worker.tracking.events`` (pydantic only).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from worker.tracking.events import (
    ENGAGEMENT_EVENTS,
    EVENT_RANK,
    FINAL_EVENTS,
    DeliveryEvent,
    EventType,
)

__all__ = [
    "HISTORY_CAP",
    "ORPHAN_CAP",
    "ORPHAN_TTL_S",
    "POLL_STOP_STATES",
    "TRACKING_TTL_S",
    "Applied",
    "DeliveryStatus",
    "RecipientState",
    "Tracked",
    "TrackingBase",
    "TrackingStore",
    "Watch",
    "notification",
    "rules_json",
]

TRACKING_TTL_S = 14 * 24 * 3600
"""Every tracking key expires with the ledger record (``RECORD_TTL_S``), refreshed on writes."""
HISTORY_CAP = 100
"""Events kept per delivery (the newest); a provider that keeps talking cannot grow it."""
ORPHAN_TTL_S = 600.0
"""How long an event for an unknown provider message id waits for its ``sent`` write."""
ORPHAN_CAP = 20
"""Events kept per unknown provider message id (the newest)."""
POLL_STOP_STATES = frozenset({EventType.DELIVERED, *FINAL_EVENTS, *ENGAGEMENT_EVENTS})
"""A recipient in one of these states needs no more status lookups."""


def rules_json() -> str:
    """The forward-only rule's tables for the Lua twin of ``advances`` (one source of truth)."""
    return json.dumps(
        {
            "ranks": {t.value: r for t, r in EVENT_RANK.items()},
            "final": {t.value: True for t in FINAL_EVENTS},
            "engagement": {t.value: True for t in ENGAGEMENT_EVENTS},
        }
    )


@dataclass(frozen=True)
class Tracked:
    """One recipient of a sent delivery, as :meth:`TrackingStore.register` records it."""

    recipient: str
    """Masked, as the send result keys it."""
    provider_message_id: str
    lookup: str | None = None
    """What the provider's status lookup needs beyond the id (SMS Partner: the number)."""


@dataclass(frozen=True)
class Watch:
    """A delivery the poller asks its provider about."""

    delivery_id: str
    provider: str
    started_at: float
    polls: int
    recipients: tuple[Tracked, ...]


@dataclass(frozen=True)
class RecipientState:
    recipient: str
    state: EventType
    provider_message_id: str
    updated_at: float
    reason: str | None = None


@dataclass(frozen=True)
class DeliveryStatus:
    delivery_id: str
    provider: str
    recipients: dict[str, RecipientState]
    history: list[dict[str, Any]]
    """Events as applied, oldest first (``DeliveryEvent`` JSON, each with ``delivery_id`` and
    ``recipient`` filled in)."""
    polling: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id,
            "provider": self.provider,
            "recipients": {
                r: {
                    "state": s.state.value,
                    "provider_message_id": s.provider_message_id,
                    "updated_at": s.updated_at,
                    "reason": s.reason,
                }
                for r, s in self.recipients.items()
            },
            "history": self.history,
            "polling": self.polling,
        }


@dataclass
class Applied:
    """What :meth:`TrackingStore.apply` did with a batch of events."""

    new: list[DeliveryEvent] = field(default_factory=list)
    """Applied for the first time (each with its delivery and one recipient), in order."""
    moved: int = 0
    """How many of ``new`` moved a recipient's state."""
    duplicates: int = 0
    orphaned: int = 0
    """Kept for a provider message id not indexed yet (replayed by ``register``)."""
    refused: int = 0
    """Named a delivery or recipient the index does not confirm: dropped."""
    deliveries: set[str] = field(default_factory=set)

    def absorb(self, replayed: Applied) -> None:
        """Add what replaying kept (orphaned) events did; they are no longer orphans."""
        self.new += replayed.new
        self.moved += replayed.moved
        self.duplicates += replayed.duplicates
        self.refused += replayed.refused
        self.deliveries |= replayed.deliveries


class TrackingStore(Protocol):
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
        """Index a sent delivery's recipients, record their ``sent`` state (an event with
        ``source="send"``), watch it from ``poll_at`` (``None``: the provider has no status
        lookup) and apply the orphaned events kept for its ids. Idempotent."""
        ...

    def apply(self, events: Sequence[DeliveryEvent], *, notify: bool) -> Applied:
        """Apply each event once (dedupe by ``event_id`` per delivery), forward only; with
        ``notify``, queue each new event in the delivery's outbox in the same atomic step."""
        ...

    def status(self, delivery_id: str) -> DeliveryStatus | None: ...

    # -- the poller's schedule -----------------------------------------------------------------

    def claim_due(self, now: float, limit: int, lease_s: float) -> list[Watch]:
        """Up to ``limit`` watches due at ``now``, each pushed ``lease_s`` ahead (a poller that
        dies mid-round leaves them to the next round after the lease)."""
        ...

    def watch(self, delivery_id: str) -> Watch | None: ...

    def reschedule(self, delivery_id: str, at: float, *, polled: bool) -> None:
        """Next lookup at ``at`` (``polled``: count one more lookup for the backoff)."""
        ...

    def unwatch(self, delivery_id: str) -> None:
        """Stop polling (final state or out of time); the lookup values are deleted."""
        ...

    def watching(self) -> int: ...

    # -- the outbox ----------------------------------------------------------------------------

    def outbox(self, delivery_id: str, limit: int) -> list[str]:
        """The oldest queued notifications (JSON text), oldest first."""
        ...

    def outbox_done(self, delivery_id: str, count: int) -> None:
        """Drop the ``count`` oldest (published); forget the delivery when nothing is left."""
        ...

    def outbox_pending(self, older_than: float, limit: int) -> list[str]:
        """Deliveries whose outbox has entries queued before ``older_than``."""
        ...

    def outbox_lock(self, delivery_id: str, token: str, ttl_s: float) -> bool: ...

    def outbox_unlock(self, delivery_id: str, token: str) -> None: ...


def history_entry(event: DeliveryEvent) -> str:
    return event.model_dump_json()


def parse_state(text: str) -> RecipientState | None:
    try:
        data = json.loads(text)
        return RecipientState(
            recipient=str(data["recipient"]),
            state=EventType(data["state"]),
            provider_message_id=str(data["provider_message_id"]),
            updated_at=float(data["updated_at"]),
            reason=data.get("reason"),
        )
    except (ValueError, KeyError, TypeError):
        return None


def sent_event(delivery_id: str, provider: str, tracked: Tracked, at: float) -> DeliveryEvent:
    """The event that opens each recipient's history: the provider accepted the send."""
    return DeliveryEvent(
        event_id=f"send:{delivery_id}:{tracked.recipient}",
        type=EventType.SENT,
        provider=provider,
        provider_message_id=tracked.provider_message_id,
        delivery_id=delivery_id,
        recipient=tracked.recipient,
        occurred_at=at,
        source="send",
    )


def pick_recipients(
    event: DeliveryEvent, index: dict[str, str]
) -> tuple[str | None, list[str]] | None:
    """Which delivery and recipients an event concerns, from the index of its provider message
    id (masked recipient → delivery id). ``None``: the id is not indexed (an orphan); an empty
    list: the index does not confirm what the event names (refused)."""
    if not index:
        return None
    deliveries = set(index.values())
    if event.delivery_id is not None and event.delivery_id not in deliveries:
        return event.delivery_id, []
    if event.recipient is not None:
        if event.recipient in index:
            return index[event.recipient], [event.recipient]
        if len(index) == 1:
            # One recipient per id (Postal): the receiver's masking of the address may differ.
            ((only, delivery_id),) = index.items()
            return delivery_id, [only]
        return None if event.delivery_id is None else event.delivery_id, []
    delivery_id = event.delivery_id or sorted(deliveries)[0]
    return delivery_id, sorted(r for r, d in index.items() if d == delivery_id)


def for_recipient(
    event: DeliveryEvent, delivery_id: str, recipient: str, split: bool
) -> DeliveryEvent:
    """The event as applied to one recipient (an id-wide event is split, one per recipient)."""
    event_id = f"{event.event_id}#{recipient}"[:200] if split else event.event_id
    return event.model_copy(
        update={"delivery_id": delivery_id, "recipient": recipient, "event_id": event_id}
    )


def state_json(event: DeliveryEvent) -> str:
    return json.dumps(
        {
            "recipient": event.recipient,
            "state": event.type.value,
            "provider_message_id": event.provider_message_id,
            "updated_at": event.occurred_at,
            "reason": event.reason,
        }
    )


def outbox_entry(current_state: str, event_json: str) -> str:
    """An outbox entry as both backends write it: ``<state after the event>\n<event JSON>``."""
    return f"{current_state}\n{event_json}"


def notification(entry: str) -> dict[str, Any] | None:
    """What the application's events task receives for an outbox entry: the event's JSON plus
    ``current_state``, the recipient's state after it. ``None``: an unreadable entry."""
    state, _, event_json = entry.partition("\n")
    try:
        data = json.loads(event_json)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    data["current_state"] = state
    return data


def watch_from(delivery_id: str, fields: dict[str, str]) -> Watch | None:
    try:
        recipients = tuple(
            Tracked(str(r["recipient"]), str(r["provider_message_id"]), r.get("lookup"))
            for r in json.loads(fields["recipients"])
        )
        return Watch(
            delivery_id=delivery_id,
            provider=fields["provider"],
            started_at=float(fields["started_at"]),
            polls=int(fields.get("polls", "0")),
            recipients=recipients,
        )
    except (ValueError, KeyError, TypeError):
        return None


def watch_fields(provider: str, recipients: Sequence[Tracked], at: float) -> dict[str, str]:
    return {
        "provider": provider,
        "started_at": repr(at),
        "polls": "0",
        "recipients": json.dumps(
            [
                {
                    "recipient": t.recipient,
                    "provider_message_id": t.provider_message_id,
                    "lookup": t.lookup,
                }
                for t in recipients
            ]
        ),
    }


class TrackingBase:
    """The part of :class:`TrackingStore` both backends share: resolving events through the
    index, splitting id-wide events per recipient, orphans. Backends supply the atomic steps."""

    def _index(self, provider: str, provider_message_id: str) -> dict[str, str]:
        raise NotImplementedError

    def _write_index(
        self, delivery_id: str, provider: str, recipients: Sequence[Tracked], at: float
    ) -> None:
        raise NotImplementedError

    def _apply_one(
        self, delivery_id: str, event: DeliveryEvent, *, notify: bool, now: float
    ) -> tuple[bool, bool]:
        """Atomically: (new, moved)."""
        raise NotImplementedError

    def _keep_orphan(self, event: DeliveryEvent, now: float) -> None:
        raise NotImplementedError

    def _take_orphans(self, provider: str, provider_message_id: str) -> list[DeliveryEvent]:
        raise NotImplementedError

    def _start_watch(
        self,
        delivery_id: str,
        provider: str,
        recipients: Sequence[Tracked],
        at: float,
        poll_at: float,
    ) -> None:
        raise NotImplementedError

    def _now(self) -> float:
        raise NotImplementedError

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
        self._write_index(delivery_id, provider, recipients, at)
        done = Applied()
        for tracked in recipients:
            self._count(done, sent_event(delivery_id, provider, tracked, at), notify)
        if poll_at is not None and recipients:
            self._start_watch(delivery_id, provider, recipients, at, poll_at)
        for pmid in sorted({t.provider_message_id for t in recipients}):
            kept = self._take_orphans(provider, pmid)
            if kept:
                done.absorb(self.apply(kept, notify=notify))
        return done

    def apply(self, events: Sequence[DeliveryEvent], *, notify: bool) -> Applied:
        done = Applied()
        for event in events:
            index = self._index(event.provider, event.provider_message_id)
            picked = pick_recipients(event, index)
            if picked is None:
                self._keep_orphan(event, self._now())
                done.orphaned += 1
                continue
            delivery_id, recipients = picked
            if delivery_id is None or not recipients:
                done.refused += 1
                continue
            split = event.recipient is None and len(recipients) > 1
            for recipient in recipients:
                self._count(done, for_recipient(event, delivery_id, recipient, split), notify)
        return done

    def _count(self, done: Applied, event: DeliveryEvent, notify: bool) -> None:
        assert event.delivery_id is not None
        new, moved = self._apply_one(event.delivery_id, event, notify=notify, now=self._now())
        if not new:
            done.duplicates += 1
            return
        done.new.append(event)
        done.moved += int(moved)
        done.deliveries.add(event.delivery_id)
