"""Message and result models: the public contract of the three tasks.

A message is validated at the producer (nothing invalid reaches Redis) and again in the worker.
This module holds the channel shapes; the rules a provider adds to them (recipient counts,
attachment limits, tag formats) live in that provider's module and are applied by
:func:`worker.providers.parse_message`, which callers use. Each rule cites the provider
reference (a section under ``docs/providers/``) it comes from.
"""

from worker.models.common import (
    DEFAULT_TENANT,
    MAX_BODY_CHARS,
    PRIORITIES,
    Channel,
    InvalidMessage,
    Priority,
)
from worker.models.email import (
    MAX_ATTACHMENT_BYTES_TOTAL,
    Address,
    Attachment,
    EmailMessage,
    Template,
)
from worker.models.parse import Message, parse_shape
from worker.models.results import DeliveryResult, ErrorInfo
from worker.models.sms import MAX_SMS_SEGMENTS, SmsMessage, sms_segments, sms_units
from worker.models.voice import VoiceMessage

__all__ = [
    "DEFAULT_TENANT",
    "MAX_ATTACHMENT_BYTES_TOTAL",
    "MAX_BODY_CHARS",
    "MAX_SMS_SEGMENTS",
    "PRIORITIES",
    "Address",
    "Attachment",
    "Channel",
    "DeliveryResult",
    "EmailMessage",
    "ErrorInfo",
    "InvalidMessage",
    "Message",
    "Priority",
    "SmsMessage",
    "Template",
    "VoiceMessage",
    "parse_shape",
    "sms_segments",
    "sms_units",
]
