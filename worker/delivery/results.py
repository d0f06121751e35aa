"""What an attempt answers (:class:`Done`, :class:`Retry`) and the pure helpers results need."""

from __future__ import annotations

from dataclasses import dataclass

from tenacity import RetryCallState, wait_random_exponential

from worker.models import DeliveryResult, ErrorInfo

__all__ = ["Done", "Outcome", "Retry", "backoff_s"]


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


def failed_result(delivery_id: str, channel: str, kind: str, message: str) -> DeliveryResult:
    """A failure before the message could even be read (no provider, no attempt)."""
    return DeliveryResult(
        status="failed",
        delivery_id=delivery_id,
        channel=channel,
        error=ErrorInfo(kind=kind, message=message[:500]),
    )
