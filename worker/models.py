"""Message and result models: the public contract of the three tasks.

A message is validated at the producer (nothing invalid reaches Redis) and again in the worker.
This module holds the channel shapes; the rules a provider adds to them (recipient counts,
attachment limits, tag formats) live in that provider's module and are applied by
:func:`worker.providers.parse_message`, which callers use. Each rule cites the provider
reference (``providers.md`` section) it comes from.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from worker.limits import MessageLimits, check_message

__all__ = [
    "Address",
    "Attachment",
    "Channel",
    "DeliveryResult",
    "EmailMessage",
    "ErrorInfo",
    "InvalidMessage",
    "Message",
    "SmsMessage",
    "Template",
    "VoiceMessage",
    "parse_shape",
]

Channel = Literal["email", "sms", "voice"]
MAX_BODY_CHARS = 2_000_000
MAX_ATTACHMENT_BYTES_TOTAL = 10 * 1024 * 1024


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
                # A model-level rule reports "field: message" (see _field_error); name the field.
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


def _has_line_break(value: str) -> bool:
    return not _LINE_BREAKS.isdisjoint(value)


def _one_line(value: str) -> str:
    if _has_line_break(value):
        raise ValueError("must not contain line breaks")
    return value


def _matching(pattern: str, description: str) -> AfterValidator:
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


def _check_e164(value: str) -> str:
    # [0-9], not \d: \d also matches other scripts' digits, which no provider accepts.
    if not re.fullmatch(r"\+[1-9][0-9]{6,14}", value):
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
    _matching(r"[\x21-\x7e]+", "must be 1-128 printable ASCII characters without spaces"),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=False)


class Address(_Strict):
    email: EmailStr
    name: Name | None = None

    @field_validator("name")
    @classmethod
    def _no_newlines(cls, v: str | None) -> str | None:
        return _one_line(v) if v is not None else None


class Attachment(_Strict):
    filename: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    content_type: Annotated[
        str,
        StringConstraints(max_length=255),
        _matching(r"[A-Za-z0-9.+\-]+/[A-Za-z0-9.+\-]+", "must be a MIME type such as text/plain"),
    ] = "application/octet-stream"
    content: Annotated[str, StringConstraints(min_length=1)]
    """Base64 of the file's bytes."""

    @field_validator("filename")
    @classmethod
    def _safe_filename(cls, v: str) -> str:
        if any(c in v for c in "/\\") or _has_line_break(v) or v in (".", ".."):
            raise ValueError("must be a bare file name (no path separators or line breaks)")
        return v

    @field_validator("content")
    @classmethod
    def _base64(cls, v: str) -> str:
        try:
            base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be base64-encoded") from None
        return v

    @property
    def size_bytes(self) -> int:
        return len(self.content) * 3 // 4 - self.content[-2:].count("=")

    @property
    def extension(self) -> str:
        # Windows drops trailing dots and spaces: "run.exe." opens as "run.exe".
        name = self.filename.rstrip(". ")
        return name.rsplit(".", 1)[-1].lower() if "." in name else ""


class Template(_Strict):
    id: int | Annotated[str, StringConstraints(min_length=1, max_length=100)]
    params: dict[Annotated[str, StringConstraints(max_length=100)], str] = Field(
        default_factory=dict, max_length=100
    )

    @field_validator("id", mode="before")
    @classmethod
    def _id_type(cls, v: Any) -> Any:
        # Checked before the union so that the error is reported at "template.id" (not once per
        # union member) and so that a JSON true or 1.5 is not read as the integer 1.
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise ValueError("must be an integer or a string")
        return v


class _Common(_Strict):
    idempotency_key: IdempotencyKey | None = None
    deadline: datetime | None = None
    """When the message stops being worth sending; after it, the delivery ends as ``expired``."""

    @field_validator("deadline")
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


# -- email ----------------------------------------------------------------------------------------

_HEADER_NAME = re.compile(r"[!-9;-~]{1,100}")  # RFC 5322 field name: printable, no colon


class EmailMessage(_Common):
    channel: Literal["email"] = Field(default="email", exclude=True)
    provider: ProviderName | None = None
    """A named provider is used alone (no failover); omitted, the worker routes the message to
    the first healthy configured email provider whose rules it meets, and fails over on
    outages and payment failures."""
    to: list[Address] = Field(min_length=1, max_length=500)
    cc: list[Address] = Field(default_factory=list, max_length=500)
    bcc: list[Address] = Field(default_factory=list, max_length=500)
    from_: Address | None = Field(default=None, alias="from")
    reply_to: Address | None = None
    subject: Annotated[str, StringConstraints(min_length=1, max_length=998)] | None = None
    html: Annotated[str, StringConstraints(max_length=MAX_BODY_CHARS)] | None = None
    text: Annotated[str, StringConstraints(max_length=MAX_BODY_CHARS)] | None = None
    preview_text: Annotated[str, StringConstraints(max_length=255)] | None = None
    attachments: list[Attachment] = Field(default_factory=list, max_length=100)
    headers: dict[str, Annotated[str, StringConstraints(max_length=2000)]] = Field(
        default_factory=dict, max_length=50
    )
    tag: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    template: Template | None = None
    raw: Annotated[str, StringConstraints(min_length=1, max_length=3 * MAX_BODY_CHARS)] | None = (
        None
    )
    """Base64 of a complete RFC 2822 message (Postal ``/send/raw`` only)."""

    @field_validator("subject")
    @classmethod
    def _subject_one_line(cls, v: str | None) -> str | None:
        return _one_line(v) if v is not None else None

    @field_validator("headers")
    @classmethod
    def _header_injection(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            # fullmatch: `$` in re.match would accept a name ending in "\n".
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(
                    f"header name {name[:40]!r} is not a valid header field name "
                    "(printable ASCII, no spaces or colons)"
                )
            if _has_line_break(value):
                raise ValueError(f"header {name!r} must not contain line breaks")
        return v

    @field_validator("raw")
    @classmethod
    def _raw_base64(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("must be base64-encoded") from None
        return v

    @model_validator(mode="after")
    def _content(self) -> Self:
        if self.raw is not None:
            # providers.md §4.3: /send/raw takes rcpt_to, mail_from and data only (which
            # providers accept raw is theirs to say: Driver.accepts_raw).
            if self.from_ is None:
                raise _field_error("from", "is required (used as the envelope sender)")
            extras = [
                name
                for name in ("html", "text", "template", "subject", "preview_text", "reply_to")
                if getattr(self, name) is not None
            ]
            extras += [name for name in ("attachments", "headers") if getattr(self, name)]
            if extras:
                raise _field_error(
                    "raw", "a raw message carries its own content; drop " + ", ".join(extras)
                )
            return self
        if self.subject is None:
            raise _field_error("subject", "is required")
        if self.template is None and not (self.html or self.text):
            raise _field_error("html", "html or text is required (or a template)")
        if self.template is not None and (self.html or self.text):
            raise _field_error("template", "give either a template or html/text, not both")
        return self

    @model_validator(mode="after")
    def _sizes(self) -> Self:
        total = sum(a.size_bytes for a in self.attachments)
        if total > MAX_ATTACHMENT_BYTES_TOTAL:
            raise _field_error("attachments", "attachments exceed 10 MB in total")
        return self


# -- SMS ------------------------------------------------------------------------------------------

_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# GSM 03.38 extension table: each of these is sent as ESC + char, two septets.
_GSM7_EXTENSION = frozenset("^{}\\[~]|€")
_GSM7 = _GSM7_BASIC | _GSM7_EXTENSION
MAX_SMS_SEGMENTS = 10


def sms_units(text: str) -> tuple[int, bool]:
    """Length as the network counts it, and whether the text fits GSM-7.

    GSM-7: extension characters count 2. Otherwise UCS-2: UTF-16 code units, so an emoji
    counts 2. Either way a line break counts 2, since SMS Partner sends it as ``:br:``
    (providers.md §1.2.2).
    """
    text = text.replace("\r\n", "\n")
    breaks = text.count("\n")
    if _GSM7.issuperset(text):
        return len(text) + breaks + sum(text.count(c) for c in _GSM7_EXTENSION), True
    return len(text.encode("utf-16-le", "surrogatepass")) // 2 + breaks, False


def sms_segments(text: str) -> int:
    """Billed SMS parts: 160/153 units in GSM-7, 70/67 otherwise (providers.md §1.2.2, §1.6)."""
    units, gsm7 = sms_units(text)
    single, multi = (160, 153) if gsm7 else (70, 67)
    return 1 if units <= single else math.ceil(units / multi)


def _check_unique_numbers(numbers: list[str]) -> None:
    first: dict[str, int] = {}
    for i, number in enumerate(numbers):
        if number in first:
            raise _field_error(f"to.{i}", f"duplicates to.{first[number]}")
        first[number] = i


class SmsMessage(_Common):
    channel: Literal["sms"] = Field(default="sms", exclude=True)
    provider: ProviderName | None = None
    """Omitted: the channel's only provider, or routed once there are several."""

    to: list[E164] = Field(min_length=1, max_length=500)
    text: Annotated[str, StringConstraints(min_length=1)]
    sender: (
        Annotated[
            str,
            _matching(r"[A-Za-z0-9]{3,11}", "must be 3-11 letters or digits, no spaces or symbols"),
        ]
        | None
    ) = None
    """Alphanumeric sender, 3-11 characters (providers.md §1.2.2); omitted: a short code is used."""
    tag: (
        Annotated[
            str,
            _matching(
                r"[a-z0-9_\-]{1,20}", "must be 1-20 lowercase letters, digits, _ or -, no spaces"
            ),
        ]
        | None
    ) = None
    """providers.md §1.2.2: <= 20 characters, lowercase, no spaces."""

    @field_validator("text")
    @classmethod
    def _segments(cls, v: str) -> str:
        # providers.md §1.3 code 52: at most 10 concatenated SMS.
        units, gsm7 = sms_units(v)
        parts = sms_segments(v)
        if parts > MAX_SMS_SEGMENTS:
            limit = (
                "1530 GSM-7 characters; line breaks and ^{}[]~|\\€ count twice"
                if gsm7
                else "670 characters once it needs Unicode; line breaks and emoji count twice"
            )
            raise ValueError(
                f"needs {parts} SMS parts ({units} characters); at most {MAX_SMS_SEGMENTS} "
                f"parts, i.e. {limit}"
            )
        return v

    @model_validator(mode="after")
    def _unique(self) -> Self:
        _check_unique_numbers(self.to)
        return self


# -- voice ----------------------------------------------------------------------------------------


class VoiceMessage(_Common):
    channel: Literal["voice"] = Field(default="voice", exclude=True)
    provider: ProviderName | None = None
    """Omitted: the channel's only provider, or routed once there are several."""

    mode: Literal["tts", "voicemail"]
    to: list[E164] = Field(min_length=1, max_length=500)
    text: Annotated[str, StringConstraints(min_length=1, max_length=5000)] | None = None
    audio_token: (
        Annotated[
            str,
            _matching(
                r"[A-Za-z0-9_\-]{1,100}",
                "must be a Voice Partner audio file token (letters, digits, _ or -)",
            ),
        ]
        | None
    ) = None
    lang: Annotated[
        str, _matching(r"[a-z]{2}(-[A-Za-z]{2})?", "must be a language code such as fr or en-GB")
    ] = "fr"
    sender: E164 | None = None
    """Voicemail callback number, validated beforehand on the provider's site (§3.2)."""
    notification_email: EmailStr | None = None
    """Voicemail drops require an address for the campaign report (§3.2, emailForNotification)."""
    speech_rate: Annotated[float, Field(ge=0.5, le=2.0)] | None = None

    @model_validator(mode="after")
    def _content(self) -> Self:
        _check_unique_numbers(self.to)
        if self.mode == "tts" and not (self.text or self.audio_token):
            raise _field_error("text", "text or audio_token is required for tts")
        if self.mode == "voicemail":
            if not self.audio_token:
                raise _field_error("audio_token", "is required for voicemail drops")
            if self.text:
                raise _field_error("text", "voicemail drops play audio_token; drop text")
        return self


Message = EmailMessage | SmsMessage | VoiceMessage
_MODELS: dict[str, type[EmailMessage] | type[SmsMessage] | type[VoiceMessage]] = {
    "email": EmailMessage,
    "sms": SmsMessage,
    "voice": VoiceMessage,
}


def _field_error(field: str, message: str) -> ValueError:
    """A model-level error that still names its field (pydantic reports model errors at '')."""
    return ValueError(f"{field}: {message}")


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


# -- results --------------------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    kind: str
    code: str | None = None
    message: str


class DeliveryResult(BaseModel):
    """What a task returns and the result backend stores. Never a key, body or full address."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["sent", "failed", "expired", "dead", "parked", "queued", "sending", "waiting"]
    delivery_id: str
    channel: Channel
    provider: str | None = None
    provider_message_ids: dict[str, str] = Field(default_factory=dict)
    """Provider id per recipient; keys are masked recipients (``j***@example.com``)."""
    rejected_recipients: dict[str, str] = Field(default_factory=dict)
    """Recipients of a sent message that the provider refused or did not confirm (e.g. an
    EmailMassivo cc/bcc), masked recipient → reason. Empty when every recipient was accepted."""
    attempts: int = 0
    cost: float | None = None
    currency: str | None = None
    error: ErrorInfo | None = None
    warnings: list[str] = Field(default_factory=list)
    """Fields of the message the provider did not receive, each ``"<field>: why"``."""
