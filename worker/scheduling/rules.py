"""What a valid ``send_at`` is, against the clock.

The message model checks its shape (an aware datetime, or ISO 8601 with an offset) and that it
is not after ``deadline``. Here, against a reference time: at enqueue the producer's clock; in
the worker the delivery's ledger ``created_at`` (when it was enqueued, or first seen for a
message sent by name), so a message that waited in a busy queue is not refused for being late.
"""

from __future__ import annotations

from datetime import datetime

from worker.models import InvalidMessage

__all__ = ["SEND_AT_HORIZON_S", "SEND_AT_TOLERANCE_S", "check_send_at"]

SEND_AT_TOLERANCE_S = 60.0
"""A ``send_at`` up to this far in the past is accepted (clock skew between hosts, a message
built a moment ago) and sent at once; further in the past it is refused."""
SEND_AT_HORIZON_S = 7 * 24 * 3600.0
"""The furthest ``send_at`` accepted: 7 days after enqueue. Results are kept 7 days after they
are stored and ledger records 14 days after creation, so a scheduled delivery's record and its
``SCHEDULED`` result both outlive its time and its default deadline (``send_at`` plus
``DELIVERY_DEFAULT_TTL_S``)."""


def check_send_at(send_at: datetime | None, reference: float) -> None:
    """Raise :class:`InvalidMessage` naming ``send_at`` when it is too far in the past or
    beyond the horizon of ``reference`` (Unix seconds)."""
    if send_at is None:
        return
    at = send_at.timestamp()
    if at < reference - SEND_AT_TOLERANCE_S:
        ago = round(reference - at)
        message = f"is {ago} s in the past (at most {SEND_AT_TOLERANCE_S:.0f} s is accepted)"
        raise InvalidMessage([{"field": "send_at", "message": message}])
    if at > reference + SEND_AT_HORIZON_S:
        message = f"is more than {SEND_AT_HORIZON_S / 86400:.0f} days ahead (the horizon)"
        raise InvalidMessage([{"field": "send_at", "message": message}])
