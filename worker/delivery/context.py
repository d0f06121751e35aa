"""The one delivery a run works on, and the ledger fields the steps share.

:class:`Delivery` is data, not a coordinator: the message, its ids, the provider chosen so far
and the store handles. Each step of the pipeline is a function that takes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from worker.config import Settings
from worker.models import DeliveryResult, ErrorInfo, Message, SmsMessage
from worker.runtime import Runtime
from worker.stores.hotpath import Begun, Closing
from worker.stores.ledger import GAVE_UP, NOT_BEFORE, OUTCOME_UNKNOWN

__all__ = [
    "BATCH_TAGS",
    "FIRST_ATTEMPT_AT",
    "GAVE_UP",
    "NOT_BEFORE",
    "OUTCOME_UNKNOWN",
    "Delivery",
]

# OUTCOME_UNKNOWN, NOT_BEFORE, GAVE_UP: the ledger's own fields (``worker.stores.ledger``),
# written by its typed marks. A run that comes before NOT_BEFORE just waits again (Celery
# countdowns are capped below the visibility timeout, :func:`worker.delivery.writer.wait`).
FIRST_ATTEMPT_AT = "first_attempt_at"
BATCH_TAGS = "batch_tags"
"""Ledger field: the tags of the batch requests that carried this delivery, space-separated,
newest last (``worker.delivery.batch``); an unknown outcome is looked up under each."""


@dataclass
class Delivery:
    rt: Runtime
    message: Message
    raw: Any
    """The message as the task received it (kept for parking and dead letters)."""
    delivery_id: str
    task_name: str
    provider: str = ""
    """The named provider, else the one chosen for this attempt ("" until chosen)."""
    created_at: float = field(default_factory=time.time)
    """When the ledger record was created (the default deadline counts from it)."""
    past_deadline: bool = False
    """The deadline passed while an earlier send's outcome was unknown: this run asks the
    provider once (a late acceptance is ``sent``, not ``expired``) and never sends."""
    begun: Begun | None = None
    """What the run's first step found (the record under the lock, providers' pause and
    breaker presence), read once instead of asking each store again."""
    closing: Closing | None = None
    """A ``sent`` transition left for the run's last step (written with the unlock, the
    counter and the tracking registration in one round trip); ``None``: written already."""
    suppressed: dict[str, str] = field(default_factory=dict)
    """Recipients left out as suppressed, masked → reason (``worker.delivery.pipeline``)."""
    defer_closing: bool = False
    """Set while the run holds the lock (:func:`worker.delivery.pipeline.open_runs`)."""
    priority: str = "normal"
    """The message's lane (``high`` | ``normal`` | ``bulk``): the order in which the global
    limiter grants this delivery's request its slot (``docs/limiter.md``)."""

    settings: Settings = field(init=False)
    channel: str = field(init=False)
    routed: bool = field(init=False)
    """The caller named no provider: the worker picks one per attempt."""

    def __post_init__(self) -> None:
        # Read once: plain attributes, so a step reading them stays in its own module.
        self.settings = self.rt.settings
        self.channel = self.message.channel
        self.routed = self.message.provider is None
        self.priority = self.message.lane

    def deadline(self) -> float:
        if self.message.deadline is not None:
            return self.message.deadline.timestamp()
        # A scheduled message's default lifetime starts at its time, not at enqueue.
        start = self.created_at
        if self.message.send_at is not None:
            start = max(start, self.message.send_at.timestamp())
        return start + self.settings.default_ttl_s

    def recipients(self) -> list[str]:
        """SMS numbers (the tag bookkeeping of reconciliation is per number)."""
        return list(self.message.to) if isinstance(self.message, SmsMessage) else []

    def result(
        self,
        state: str,
        attempts: int,
        *,
        error: ErrorInfo | None = None,
        provider: str | None = None,
    ) -> DeliveryResult:
        return DeliveryResult(
            status=state,
            delivery_id=self.delivery_id,
            channel=self.channel,
            provider=provider or self.provider or None,
            attempts=attempts,
            error=error,
            suppressed_recipients=dict(self.suppressed),
        )
