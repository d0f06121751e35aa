"""The values a driver exchanges with the delivery service (no behaviour here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["Balance", "CancelAtProvider", "Gate", "RuleViolation", "SendContext", "SendOutcome"]

Gate = Callable[[], None]
"""Called by :meth:`Driver.send` once the request is built, right before it is transmitted.

Status lookups pass one that takes the limiter slot; whatever it raises ends the call
unchanged. The delivery flow does not pass one to the driver: it calls its own gate
(``worker.delivery.pipeline``) between :meth:`Driver.build` and :meth:`Driver.transmit`."""


@dataclass(frozen=True)
class SendContext:
    """What a driver may know about the delivery besides the message itself."""

    delivery_id: str
    idempotency_key: str
    """Stable across every attempt of one delivery; sent to providers that support one."""
    attempt: int = 1
    tag: str | None = None
    """The provider-side tag sent on every attempt (SMS Partner): the caller's, else one unique to
    this delivery; an unknown outcome is reconciled by it (:meth:`Driver.reconcile_tag`)."""
    tag_is_callers: bool = False
    """The tag was chosen by the caller, so other sends may carry it too."""
    batch_tags: tuple[str, ...] = ()
    """Tags of the batch requests that carried this delivery (newest last; ``worker.batching``):
    one tag per request, so an unknown outcome is looked up under each of them, per item."""
    sent_after: float | None = None
    """When the delivery's first attempt started (epoch seconds): a send found by a shared tag
    that is older than this is not this delivery's."""
    callback_url: str | None = field(default=None, repr=False)
    """Where the provider may report a status change of this delivery (SMS Partner ``urlDlr``,
    Voice Partner ``notifyUrl``): a tracking hint URL with an auth token, never logged
    (``worker.tracking.callbacks``). None when tracking hints are not configured."""
    schedule_at: datetime | None = None
    """Provider-native scheduling: the provider sends at this time (``worker.scheduling``); the
    driver adds its schedule fields (:meth:`Driver.schedule_fields`)."""


@dataclass(frozen=True)
class SendOutcome:
    """A provider accepted the message."""

    provider: str
    provider_message_ids: dict[str, str] = field(default_factory=dict)
    """Provider id per recipient (raw address/number; masked before it leaves the worker)."""
    rejected_recipients: dict[str, str] = field(default_factory=dict)
    """Recipients the provider refused or did not confirm although it accepted the message,
    raw address/number → reason (masked and scrubbed before it leaves the worker)."""
    cost: float | None = None
    currency: str | None = None
    warnings: tuple[str, ...] = ()
    """Caller fields the provider did not receive, each ``"<field>: why"`` (never a value)."""


@dataclass(frozen=True)
class Balance:
    """An account balance as the provider reports it."""

    provider: str
    has_credit: bool
    credits: float | None = None
    currency: str | None = None


class RuleViolation(ValueError):
    """A message the provider would refuse: ``field`` names the message field, ``text`` why."""

    def __init__(self, field: str, text: str) -> None:
        self.field = field
        self.text = text
        super().__init__(f"{field}: {text}")


@dataclass(frozen=True)
class CancelAtProvider:
    """A provider's answer to cancelling a scheduled send (:meth:`Driver.cancel_scheduled`).

    ``outcome``: ``cancelled`` (now, or it already was), ``too_late`` (inside the provider's
    no-cancel window), ``already_sent``, ``not_found`` or ``error`` (``detail`` says why).
    """

    outcome: str
    detail: str = ""
