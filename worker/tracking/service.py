"""Delivery tracking in the worker: register a send, apply events, tell the application.

``on_sent`` runs when a send ends ``sent`` (``worker.delivery.writer``); ``apply_events``
runs for the receiver's events (``delivery.track_events``) and the poller's lookups. Each new
event is written to the delivery's outbox in the same atomic step as its state change
(``worker.stores.tracking``) and then published to the application's events task
(``DELIVERY_EVENTS_TASK``) by :func:`flush`, one at a time, in order, under a per-delivery lock.

**Guarantee**: every new event is published at least once, in the order it was applied per
delivery. A crash between the state write and the publish leaves the entry in the outbox,
and the next polling round publishes it (:func:`flush_pending`). A crash between a publish
and the outbox pop publishes that one event again, with the same Celery task id
(:func:`notification_id`) and ``event_id``, so the application can drop the repeat; nothing
else is ever published twice.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from worker.metrics import record as metrics
from worker.models import EmailMessage
from worker.providers import driver_class, parse_message
from worker.providers.lookup import mask_recipient
from worker.runtime import Runtime
from worker.stores.hotpath.base import TrackingArgs
from worker.stores.suppression import Reason
from worker.stores.tracking import Applied, Tracked, notification
from worker.suppression import mask, remember
from worker.tracking.events import DeliveryEvent, EventType

__all__ = [
    "Publisher",
    "apply_events",
    "celery_publisher",
    "flush",
    "flush_pending",
    "notification_id",
    "on_sent",
    "registered",
    "sent_tracking",
    "track_sent",
]

log = structlog.get_logger(__name__)

Publisher = Callable[[str, dict[str, Any], str, str], None]
"""``(task name, event payload, task id, queue)``: publish one notification."""
_NAMESPACE = uuid.UUID("6c1f8f1e-41d5-4c3c-9a55-3f1b7d0e5a10")
FLUSH_LOCK_S = 30.0
FLUSH_MAX = 200
STALE_OUTBOX_S = 10.0
"""An outbox entry this old was left by a publisher that stopped (a crash): the polling round
publishes it."""


def celery_publisher(task: str, payload: dict[str, Any], task_id: str, queue: str) -> None:
    """Publish through the current Celery app (the worker's own)."""
    from celery import current_app

    current_app.send_task(task, args=[payload], task_id=task_id, queue=queue)


def notification_id(delivery_id: str, event_id: str) -> str:
    """The Celery task id of an event's notification: the same on every publish of it."""
    return str(uuid.uuid5(_NAMESPACE, f"{delivery_id}\n{event_id}"))


def on_sent(
    rt: Runtime,
    delivery_id: str,
    provider: str,
    provider_message_ids: dict[str, str],
    *,
    publish: Publisher | None = None,
) -> Applied:
    """Index a sent delivery (raw recipient → provider id), start polling it where the provider
    has a status lookup, and tell the application."""
    t = sent_tracking(rt, delivery_id, provider, provider_message_ids)
    done = rt.tracking.register(
        delivery_id, provider, t.recipients, at=t.at, poll_at=t.poll_at, notify=t.notify
    )
    if t.notify:
        flush(rt, delivery_id, publish=publish)
    return done


def sent_tracking(
    rt: Runtime, delivery_id: str, provider: str, provider_message_ids: dict[str, str]
) -> TrackingArgs:
    """What :func:`on_sent` registers (the send pipeline registers it with the ledger's final
    write, ``worker.stores.hotpath``, then calls :func:`registered`)."""
    cls = driver_class(provider)
    tracked = [
        Tracked(
            mask_recipient(recipient),
            message_id,
            cls.lookup_ref(recipient) if cls.status_lookup else None,
        )
        for recipient, message_id in provider_message_ids.items()
    ]
    tracked = _unique(tracked)
    now = time.time()
    poll_at = now + rt.settings.poll_policy().first_s if cls.status_lookup else None
    notify = rt.settings.events_task is not None
    return TrackingArgs(provider, tracked, now, poll_at, notify)


def registered(rt: Runtime, delivery_id: str, t: TrackingArgs, error: str | None) -> None:
    """After the pipeline registered a send: tell the application (``notify``), or log why the
    registration failed (tracking never changes a send's outcome)."""
    if error is not None:
        log.warning("tracking.register_failed", provider=t.provider, error=error)
        return
    if t.notify:
        try:
            flush(rt, delivery_id)
        except Exception as exc:
            log.warning("tracking.register_failed", provider=t.provider, error=type(exc).__name__)


def track_sent(rt: Runtime, delivery_id: str, provider: str, ids: dict[str, str]) -> None:
    """:func:`on_sent` for the send pipeline: tracking never changes a send's outcome, so a
    failure here (Redis down) is logged and the delivery is simply not tracked."""
    try:
        on_sent(rt, delivery_id, provider, ids)
    except Exception as exc:
        log.warning("tracking.register_failed", provider=provider, error=type(exc).__name__)


def _unique(tracked: list[Tracked]) -> list[Tracked]:
    """Masked recipients that collide get ``#2``, ``#3`` (as the send result keys them)."""
    seen: dict[str, int] = {}
    out = []
    for t in tracked:
        n = seen.get(t.recipient, 0) + 1
        seen[t.recipient] = n
        key = t.recipient if n == 1 else f"{t.recipient}#{n}"
        out.append(Tracked(key, t.provider_message_id, t.lookup))
    return out


def apply_events(
    rt: Runtime, events: Sequence[DeliveryEvent], *, publish: Publisher | None = None
) -> Applied:
    notify = rt.settings.events_task is not None
    done = rt.tracking.apply(events, notify=notify)
    if rt.settings.suppression:
        suppress_from_events(rt, done.new)
    if done.orphaned:
        for provider in {e.provider for e in events}:
            metrics.count(rt.metrics, provider, "tracking_orphaned", done.orphaned)
    if notify:
        for delivery_id in sorted(done.deliveries):
            flush(rt, delivery_id, publish=publish)
    return done


def flush(rt: Runtime, delivery_id: str, *, publish: Publisher | None = None) -> int:
    """Publish a delivery's queued notifications, oldest first; how many were published."""
    task = rt.settings.events_task
    if task is None:
        return 0
    send = publish or rt.event_publisher or celery_publisher
    token = uuid.uuid4().hex
    if not rt.tracking.outbox_lock(delivery_id, token, FLUSH_LOCK_S):
        return 0  # another worker is publishing this delivery's events, in order
    published = 0
    try:
        for entry in rt.tracking.outbox(delivery_id, FLUSH_MAX):
            payload = notification(entry)
            if payload is not None:
                event_id = str(payload.get("event_id", ""))
                send(
                    task, payload, notification_id(delivery_id, event_id), rt.settings.events_queue
                )
                published += 1
            # One at a time: a crash here repeats at most this one event (same task id).
            rt.tracking.outbox_done(delivery_id, 1)
    except Exception as exc:  # the broker is unreachable: the entries stay for the next round
        log.warning("tracking.publish_failed", delivery_id=delivery_id, error=type(exc).__name__)
    finally:
        rt.tracking.outbox_unlock(delivery_id, token)
    return published


def flush_pending(rt: Runtime, *, publish: Publisher | None = None, limit: int = 500) -> int:
    """Publish what crashed or failed publishers left behind (run by each polling round)."""
    if rt.settings.events_task is None:
        return 0
    published = 0
    for delivery_id in rt.tracking.outbox_pending(time.time() - STALE_OUTBOX_S, limit):
        published += flush(rt, delivery_id, publish=publish)
    return published


_SUPPRESSING: dict[EventType, Reason] = {
    EventType.BOUNCED: "hard_bounce",  # Postal MessageBounced, a lookup's bounced state
    EventType.FAILED: "hard_bounce",  # Postal MessageDeliveryFailed (HardFail), failed lookups
    EventType.COMPLAINED: "complaint",
    EventType.UNSUBSCRIBED: "unsubscribed",
    EventType.DEFERRED: "soft_bounce",  # Postal SoftFail: counted, suppresses at the threshold
}


def _provider_says(event: DeliveryEvent) -> Reason | None:
    """The provider's own reading of an event its type does not suppress (Postal's hold on its
    suppression list, ``Driver.suppression_reason``)."""
    try:
        return driver_class(event.provider).suppression_reason(event)
    except KeyError:  # a provider this worker does not know
        return None


def suppress_from_events(rt: Runtime, events: Sequence[DeliveryEvent]) -> None:
    """Bounces, complaints and unsubscribes suppress their recipient on the channel. An event
    names its recipient masked: the delivery's message (kept on its ledger record) says which
    address it was."""
    for event in events:
        reason = _SUPPRESSING.get(event.type) or _provider_says(event)
        if reason is None or event.delivery_id is None or event.recipient is None:
            continue
        try:
            record = rt.records.get(event.delivery_id)
            raw = record.fields.get("message") if record is not None else None
            if record is None or not raw:
                continue
            message = parse_message(record.channel, json.loads(raw))
        except Exception as exc:  # a bad record never stops tracking
            log.warning("suppression.event_unmatched", error=type(exc).__name__)
            continue
        if isinstance(message, EmailMessage):
            everyone = [a.email for a in (*message.to, *message.cc, *message.bcc)]
        else:
            everyone = list(message.to)
        for recipient in everyone:
            if mask(record.channel, recipient) == event.recipient:
                remember(rt, record.channel, recipient, reason, "tracking", event.provider)
                break
