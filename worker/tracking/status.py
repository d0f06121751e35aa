"""Reading a delivery's tracking state: the Python API and the ``status`` command's view.

``delivery_status(delivery_id)`` answers each recipient's current state (forward only) and
the delivery's event history, oldest first; ``None`` when the delivery was never sent (or its
tracking has expired, 14 days after the last event). The send task's Celery result stays the
send outcome; this is what happened afterwards.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from worker.runtime import Runtime, get_runtime

__all__ = ["delivery_status", "iso_time", "readable_record", "render"]

TIME_FIELDS = frozenset(
    {"created_at", "updated_at", "sent_at", "send_at", "scheduled_for", "cancelled_at", "deadline"}
)
"""The ledger record's fields that hold Unix seconds (``status`` shows them as ISO 8601)."""


def delivery_status(delivery_id: str, *, rt: Runtime | None = None) -> dict[str, Any] | None:
    """``{"delivery_id", "provider", "recipients": {masked: {"state", "provider_message_id",
    "updated_at", "reason"}}, "history": [event, ...], "polling": bool}`` or ``None``."""
    found = (rt or get_runtime()).tracking.status(delivery_id)
    return None if found is None else found.as_dict()


def iso_time(seconds: float, *, utc: bool = False) -> str:
    """Unix seconds as ISO 8601 with its offset, in the local zone (``TZ``) or in UTC."""
    at = datetime.fromtimestamp(seconds, tz=UTC)
    return (at if utc else at.astimezone()).isoformat(timespec="milliseconds")


def readable_record(record: dict[str, Any], *, utc: bool = False) -> dict[str, Any]:
    """A ledger record (``LedgerRecord.to_dict()``) with its times as ISO 8601."""
    out = dict(record)
    for name in TIME_FIELDS & out.keys():
        try:
            out[name] = iso_time(float(out[name]), utc=utc)
        except (TypeError, ValueError, OverflowError, OSError):
            continue  # already text (an ISO deadline), or not a time: shown as stored
    return out


def render(status: dict[str, Any], *, utc: bool = False) -> str:
    """The ``delivery-worker status`` text: one line per recipient, then the history in the
    order the events happened (a stable sort: events of one instant keep their order)."""
    lines = [f"provider {status['provider']}" + ("  (polling)" if status["polling"] else "")]
    for recipient, state in sorted(status["recipients"].items()):
        reason = f"  {state['reason']}" if state.get("reason") else ""
        lines.append(f"  {recipient:<28}{state['state']:<12}{state['provider_message_id']}{reason}")
    lines.append("history")
    for event in sorted(status["history"], key=lambda e: float(e.get("occurred_at") or 0.0)):
        reason = f"  {event['reason']}" if event.get("reason") else ""
        lines.append(
            f"  {iso_time(float(event['occurred_at']), utc=utc)}  {event['type']:<12}"
            f"{event.get('recipient') or '':<28}{event['source']}{reason}"
        )
    return "\n".join(lines)
