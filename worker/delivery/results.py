"""What an attempt answers (:class:`Done`, :class:`Retry`) and the pure helpers results need."""

from __future__ import annotations

from dataclasses import dataclass

from tenacity import RetryCallState, wait_random_exponential

from worker.models import DeliveryResult, ErrorInfo
from worker.redaction import mask_email, mask_phone

__all__ = ["Done", "Outcome", "Retry", "backoff_s", "mask_ids"]


@dataclass(frozen=True)
class Done:
    result: DeliveryResult


@dataclass(frozen=True)
class Retry:
    delay_s: float
    reason: str
    result: DeliveryResult
    """What the delivery looks like while it waits (state ``waiting``)."""


Outcome = Done | Retry
"""How an attempt ends: the task returns the result, or reschedules itself after ``delay_s``."""


def backoff_s(error_attempt: int, *, base_s: float, cap_s: float) -> float:
    """Exponential backoff with full jitter (tenacity's policy), for the n-th error."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, error_attempt)
    return float(wait_random_exponential(multiplier=base_s, max=cap_s)(state))


def mask_ids(ids: dict[str, str]) -> dict[str, str]:
    """Provider ids keyed by masked recipients (results never carry full addresses)."""
    out: dict[str, str] = {}
    for recipient, provider_id in ids.items():
        masked = mask_email(recipient) if "@" in recipient else mask_phone(recipient)
        key, n = masked, 2
        while key in out:
            key, n = f"{masked}#{n}", n + 1
        out[key] = provider_id
    return out


def failed_result(delivery_id: str, channel: str, kind: str, message: str) -> DeliveryResult:
    """A failure before the message could even be read (no provider, no attempt)."""
    return DeliveryResult(
        status="failed",
        delivery_id=delivery_id,
        channel=channel,
        error=ErrorInfo(kind=kind, message=message[:500]),
    )
