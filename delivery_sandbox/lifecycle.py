"""What happens to an accepted message after the answer: the sandbox's delivery timeline.

Each accepted message moves through its provider's statuses (delivered after a configurable
delay; magic recipients bounce, hold or fail). Every move is published as a
:class:`StatusChange` to the listeners: the status lookups read the latest one, and the
webhook/callback senders turn it into the provider's push format.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Listeners", "StatusChange"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StatusChange:
    provider: str
    message_id: str
    """The id the provider answered the send with (per recipient where it has one)."""
    recipient: str
    status: str
    """The provider's own word for the status (Postal ``MessageSent``, SMS ``Delivered``…)."""
    at: float
    detail: str | None = None
    message: dict[str, Any] = field(default_factory=dict)
    """The recorded message (``Recorder.messages()`` form): fields, tag, callback URLs."""


Listener = Callable[[StatusChange], None]


class Listeners:
    """Who hears about status changes. A failing listener never stops the others."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def publish(self, change: StatusChange) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(change)
            except Exception:  # one listener's fault is not the timeline's
                log.exception("status listener failed")
