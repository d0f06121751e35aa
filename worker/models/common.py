"""What every channel's message shares: the error type, field types and checks, common fields.

The rules a provider adds to a channel's shape live in its module (``worker.providers``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "E164",
    "MAX_BODY_CHARS",
    "Channel",
    "CommonFields",
    "EmailStr",
    "IdempotencyKey",
    "InvalidMessage",
    "Name",
    "ProviderName",
    "Strict",
    "check_unique_numbers",
    "field_error",
    "has_line_break",
    "matching",
    "one_line",
]

Channel = Literal["email", "sms", "voice"]
MAX_BODY_CHARS = 2_000_000


class InvalidMessage(ValueError):
    """A message refused before enqueue; ``errors`` names each bad field."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        lines = [f"{e['field']}: {e['message']}" for e in errors]
        super().__init__("invalid message: " + "; ".join(lines))

    def __reduce__(self) -> tuple[type[InvalidMessage], tuple[list[dict[str, str]]]]:
        # ``args`` holds the rendered text, not ``errors``: rebuild from ``errors`` so the
        # exception survives pickling (Celery result backends, multiprocessing).
        return (type(self), (self.errors,))

    @classmethod
    def from_validation_error(cls, exc: ValidationError) -> InvalidMessage:
        errors = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = ".".join(str(p) for p in err["loc"]) or "message"
            msg = str(err["msg"]).removeprefix("Value error, ")
            if loc == "message":
                # A model-level rule reports "field: message" (see field_error); name the field.
                field, sep, text = msg.partition(": ")
                if sep and _FIELD_PATH.fullmatch(field):
                    loc, msg = field, text
            errors.append({"field": loc, "message": msg})
        return cls(errors)


# -- shared field types -------------------------------------------------------------------------

_FIELD_PATH = re.compile(r"[a-z_]+(\.[a-z0-9_]+)*")

# Characters that end a line somewhere: CR and LF for SMTP, plus those that Python's
# str.splitlines() and some mail libraries also break on. NUL truncates C strings.
_LINE_BREAKS = frozenset("\r\n\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def has_line_break(value: str) -> bool:
    return not _LINE_BREAKS.isdisjoint(value)


def one_line(value: str) -> str:
    if has_line_break(value):
        raise ValueError("must not contain line breaks")
    return value


def matching(pattern: str, description: str) -> AfterValidator:
    """A pattern check whose error says what is expected, not which regex failed."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(description)
        return value

    return AfterValidator(check)


def _check_email(value: str) -> str:
    try:
        info = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address ({exc})") from None
    return info.normalized


# [0-9], not \d: \d also matches other scripts' digits, which no provider accepts.
_E164_SHAPE = re.compile(r"\+[1-9][0-9]{6,14}")


def _check_e164(value: str) -> str:
    if not _E164_SHAPE.fullmatch(value):
        raise ValueError("must be an E.164 number such as +33612345678")
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValueError("must be an E.164 number such as +33612345678") from None
    if not phonenumbers.is_possible_number(parsed):
        raise ValueError("is not a possible phone number for its country code")
    return value


EmailStr = Annotated[str, StringConstraints(max_length=255), AfterValidator(_check_email)]
# No max_length: the E.164 check bounds the length and says what is expected.
E164 = Annotated[str, AfterValidator(_check_e164)]
Name = Annotated[str, StringConstraints(max_length=255)]
ProviderName = Annotated[str, StringConstraints(min_length=1, max_length=40)]
"""A provider of the message's channel; checked against the registry by
:func:`worker.providers.parse_message`."""
IdempotencyKey = Annotated[
    str,
    StringConstraints(max_length=128),
    matching(r"[\x21-\x7e]+", "must be 1-128 printable ASCII characters without spaces"),
]


Priority = Literal["high", "normal", "bulk"]
"""The lane a message waits in (``worker.lanes``): ``high`` first, then ``normal`` and ``bulk`` by
weighted shares. Absent means ``normal``."""
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "bulk")
DEFAULT_TENANT = "default"
"""The tenant of every message that names none: they share one fair share."""
TenantKey = Annotated[
    str,
    StringConstraints(max_length=64),
    matching(
        r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
        "must be 1-64 letters, digits, '_', '.' or '-' (an operator-chosen key, not an address)",
    ),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=False)


class CommonFields(Strict):
    idempotency_key: IdempotencyKey | None = None
    deadline: datetime | None = None
    """When the message stops being worth sending; after it, the delivery ends as ``expired``."""

    send_at: datetime | None = None
    """Send no earlier than this (aware datetime, or ISO 8601 with an offset); see
    ``worker.scheduling``. Checked against the clock at enqueue and when a worker first sees the
    message (``worker.scheduling.rules``); here only its shape and its order with ``deadline``."""

    priority: Priority | None = None
    """The lane (``high`` | ``normal`` | ``bulk``); absent: ``normal``. See docs/lanes.md."""

    tenant: TenantKey | None = None
    """The sender or customer this message is sent for: waiting work is shared fairly across
    tenants within a priority (``DELIVERY_TENANT_WEIGHTS``). Absent: the one default tenant.
    An identifier chosen by the operator (letters, digits, ``_.-``), never an address."""

    ignore_suppression: bool = False
    """Send even to suppressed recipients (a legal or transactional message); logged
    (``delivery.suppression_ignored``). See docs/suppression.md."""

    @property
    def lane(self) -> Priority:
        """The priority this message waits and sends at (absent: ``normal``)."""
        return self.priority or "normal"

    @property
    def tenant_key(self) -> str:
        return self.tenant or DEFAULT_TENANT

    @field_validator("deadline", "send_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        if v.tzinfo is None:
            raise ValueError("must include a timezone offset, e.g. 2026-01-31T12:00:00Z")
        try:
            return v.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise ValueError("is out of range once converted to UTC") from None

    @model_validator(mode="after")
    def _send_at_before_deadline(self) -> CommonFields:
        if self.send_at is not None and self.deadline is not None and self.send_at > self.deadline:
            raise field_error("send_at", "must not be after deadline")
        return self


def field_error(field: str, message: str) -> ValueError:
    """A model-level error that still names its field (pydantic reports model errors at '')."""
    return ValueError(f"{field}: {message}")


def check_unique_numbers(numbers: list[str]) -> None:
    first: dict[str, int] = {}
    for i, number in enumerate(numbers):
        if number in first:
            raise field_error(f"to.{i}", f"duplicates to.{first[number]}")
        first[number] = i
