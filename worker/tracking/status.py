"""Reading a delivery's tracking state: the Python API and the ``status`` command's view.

``delivery_status(delivery_id)`` answers each recipient's current state (forward only) and
the delivery's event history, oldest first; ``None`` when the delivery was never sent (or its
tracking has expired, 14 days after the last event). The send task's Celery result stays the
send outcome; this is what happened afterwards.
"""

from __future__ import annotations

from typing import Any

from worker.runtime import Runtime, get_runtime

__all__ = ["delivery_status", "render"]


def delivery_status(delivery_id: str, *, rt: Runtime | None = None) -> dict[str, Any] | None:
    """``{"delivery_id", "provider", "recipients": {masked: {"state", "provider_message_id",
    "updated_at", "reason"}}, "history": [event, ...], "polling": bool}`` or ``None``."""
    found = (rt or get_runtime()).tracking.status(delivery_id)
    return None if found is None else found.as_dict()


def render(status: dict[str, Any]) -> str:
    """The ``delivery-worker status`` text: one line per recipient, then the history."""
    lines = [f"provider {status['provider']}" + ("  (polling)" if status["polling"] else "")]
    for recipient, state in sorted(status["recipients"].items()):
        reason = f"  {state['reason']}" if state.get("reason") else ""
        lines.append(f"  {recipient:<28}{state['state']:<12}{state['provider_message_id']}{reason}")
    lines.append("history")
    for event in status["history"]:
        reason = f"  {event['reason']}" if event.get("reason") else ""
        lines.append(
            f"  {event['occurred_at']:.3f}  {event['type']:<12}{event.get('recipient') or '':<28}"
            f"{event['source']}{reason}"
        )
    return "\n".join(lines)
