"""The public task names and the channel each one delivers (the contract's three tasks).

Read by the producer (which task to publish), the app (which publishes to redact) and the
guard (which channel a refused message belongs to); kept apart so none imports another.
"""

from __future__ import annotations

__all__ = [
    "CHANNEL_OF_TASK",
    "SEND_CHUNK_TASK",
    "SEND_MANY_TASK",
    "TASK_NAMES",
    "TRACK_EVENTS_TASK",
    "TRACK_HINT_TASK",
]

TASK_NAMES = {"email": "tasks.send_email", "sms": "tasks.send_sms", "voice": "tasks.send_voice"}
CHANNEL_OF_TASK = {name: channel for channel, name in TASK_NAMES.items()}

TRACK_EVENTS_TASK = "delivery.track_events"
"""Apply normalised delivery events (``worker.tracking``): ``(events: list[dict])``, each a
``DeliveryEvent.model_dump(mode="json")``. The webhook receiver publishes it."""
TRACK_HINT_TASK = "delivery.track_hint"
"""A provider callback said something changed: ``(provider: str, delivery_id: str)``; the
worker asks the provider's status lookup (callback bodies are not trusted)."""

SEND_CHUNK_TASK = "tasks.send_chunk"
"""A campaign's chunk (``worker.campaign``): ``({"channel": str, "items": [{"id", "message"}]},)``,
published by ``worker.producer.send_many`` with each delivery already recorded."""
SEND_MANY_TASK = "tasks.send_many"
"""Many messages by name, for producers without this package (``worker.campaign``):
``({"channel": str, "messages": [dict, ...]},)``, at most ``MAX_PER_TASK`` messages."""
