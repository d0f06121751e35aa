"""The tracking tasks' logic: what ``delivery.track_events`` and ``delivery.track_hint`` accept.

Both are published by the webhook receiver (by name, ``worker.tasknames``); anything else on
the broker could publish them too, so every argument is checked here and a bad message ends
with a clear reason in the task's result (``{"status": "refused", "reason": …}``), never an
exception. An event reaches a delivery only through the store's index of provider message
ids (``worker.stores.tracking``): naming a delivery is not enough.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from pydantic import ValidationError

from worker.providers import DRIVERS
from worker.redaction import redact_mapping
from worker.runtime import Runtime
from worker.tracking.events import DeliveryEvent
from worker.tracking.poller import poll_watches
from worker.tracking.service import Publisher, apply_events

__all__ = ["MAX_EVENTS", "take_events", "take_hint"]

MAX_EVENTS = 500
"""Events per ``delivery.track_events`` message (the receiver batches at most this many)."""
_ID = re.compile(r"[\x21-\x7e]{1,200}")


def _refused(reason: str) -> dict[str, Any]:
    return {"status": "refused", "reason": reason}


def take_events(rt: Runtime, events: Any, *, publish: Publisher | None = None) -> dict[str, Any]:
    if not isinstance(events, list):
        return _refused(f"events must be a list, not {type(events).__name__}")
    if len(events) > MAX_EVENTS:
        return _refused(f"{len(events)} events in one message; at most {MAX_EVENTS}")
    good: list[DeliveryEvent] = []
    invalid: list[str] = []
    for i, item in enumerate(events):
        event, why = _event(item)
        if event is None:
            invalid.append(f"{i}: {why}")
        else:
            good.append(event)
    done = apply_events(rt, good, publish=publish)
    result: dict[str, Any] = {
        "status": "applied" if good else "refused",
        "new": len(done.new),
        "moved": done.moved,
        "duplicates": done.duplicates,
        "orphaned": done.orphaned,
        "refused": done.refused + len(invalid),
    }
    if invalid:
        result["reason"] = "; ".join(invalid[:5])[:1000]
    return result


def _event(item: Any) -> tuple[DeliveryEvent | None, str]:
    if not isinstance(item, dict):
        return None, f"an event is an object, not {type(item).__name__}"
    try:
        event = DeliveryEvent.model_validate(item)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})[:5]
        return None, f"invalid fields {', '.join(fields)}"
    if event.provider not in DRIVERS:
        return None, "unknown provider"
    if not math.isfinite(event.occurred_at):
        return None, "occurred_at is not a finite number"
    if event.source == "send":
        return None, "source 'send' is the worker's own"
    # Defence in depth: the receiver removes secrets and bodies; mask what it may have missed.
    return event.model_copy(update={"raw": redact_mapping(event.raw)}), ""


def take_hint(
    rt: Runtime, provider: Any, delivery_id: Any, *, publish: Publisher | None = None
) -> dict[str, Any]:
    """A provider callback said something changed: ask the provider's status lookup now."""
    if not isinstance(provider, str) or provider not in DRIVERS:
        return _refused("unknown provider")
    if not isinstance(delivery_id, str) or not _ID.fullmatch(delivery_id):
        return _refused("the delivery id is not a printable string of 1-200 characters")
    if not DRIVERS[provider].status_lookup:
        return {"status": "ignored", "reason": f"{provider} has no status lookup"}
    watch = rt.tracking.watch(delivery_id)
    if watch is None:
        return {"status": "ignored", "reason": "not polled (unknown, final or out of time)"}
    if watch.provider != provider:
        return _refused("the delivery was sent through another provider")
    report = poll_watches(rt, [watch], now=time.time(), publish=publish)
    return {"status": "looked_up", "requests": report.requests, "events": report.events}
