"""A channel's message from untrusted data: :func:`parse_shape` and the ``Message`` union."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from worker.limits import MessageLimits, check_message
from worker.models.common import InvalidMessage
from worker.models.email import EmailMessage
from worker.models.sms import SmsMessage
from worker.models.voice import VoiceMessage

__all__ = ["Message", "parse_shape"]

Message = EmailMessage | SmsMessage | VoiceMessage
_MODELS: dict[str, type[EmailMessage] | type[SmsMessage] | type[VoiceMessage]] = {
    "email": EmailMessage,
    "sms": SmsMessage,
    "voice": VoiceMessage,
}


def parse_shape(channel: str, data: Any, *, limits: MessageLimits | None = None) -> Message:
    """Validate ``data`` as a ``channel`` message; raise :class:`InvalidMessage` naming fields.

    The channel's shape only: use :func:`worker.providers.parse_message`, which adds the rules
    of the named (or eligible) providers.

    With ``limits`` (the producer), the size and shape bounds of ``worker.limits`` are checked
    first, without recursion, and a message over them is refused naming the limit.
    """
    model = _MODELS.get(channel) if isinstance(channel, str) else None
    if model is None:
        raise InvalidMessage(
            [
                {
                    "field": "channel",
                    "message": f"unknown channel {str(channel)[:40]!r}; use email, sms or voice",
                }
            ]
        )
    if not isinstance(data, dict):
        raise InvalidMessage(
            [{"field": "message", "message": f"must be an object, got {type(data).__name__}"}]
        )
    if limits is not None:
        reason = check_message(data, limits)
        if reason is not None:
            raise InvalidMessage([{"field": "message", "message": reason}])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidMessage.from_validation_error(exc) from None
