"""What a task returns and the result backend stores."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.models.common import Channel

__all__ = ["DeliveryResult", "ErrorInfo"]


class ErrorInfo(BaseModel):
    kind: str
    code: str | None = None
    message: str


class DeliveryResult(BaseModel):
    """What a task returns and the result backend stores. Never a key, body or full address."""

    model_config = ConfigDict(extra="forbid")

    status: Literal[
        "sent",
        "failed",
        "expired",
        "dead",
        "parked",
        "queued",
        "sending",
        "waiting",
        "scheduled",
        "cancelled",
    ]
    delivery_id: str
    channel: Channel
    provider: str | None = None
    provider_message_ids: dict[str, str] = Field(default_factory=dict)
    """Provider id per recipient; keys are masked recipients (``j***@example.com``)."""
    rejected_recipients: dict[str, str] = Field(default_factory=dict)
    """Recipients of a sent message that the provider refused or did not confirm (e.g. an
    EmailMassivo cc/bcc), masked recipient → reason. Empty when every recipient was accepted."""
    suppressed_recipients: dict[str, str] = Field(default_factory=dict)
    """Recipients left out because they are on the channel's suppression list, masked
    recipient → reason (``hard_bounce``, ``stop``...)."""
    attempts: int = 0
    cost: float | None = None
    currency: str | None = None
    error: ErrorInfo | None = None
    warnings: list[str] = Field(default_factory=list)
    """Fields of the message the provider did not receive, each ``"<field>: why"``."""
