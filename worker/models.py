"""Message and result models: the public contract of the three tasks.

A message is validated at the producer (nothing invalid reaches Redis) and again in the worker.
Rules that depend on the provider (recipient counts, attachment limits, tag formats) are checked
here too, because the provider would reject the message anyway, later and less clearly.
Each rule cites the provider reference (``providers.md`` section) it comes from.
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

__all__ = [
    "CHANNEL_PROVIDERS",
    "Address",
    "Attachment",
    "Channel",
    "DeliveryResult",
    "EmailMessage",
    "EmailProvider",
    "ErrorInfo",
    "InvalidMessage",
    "Message",
    "SmsMessage",
    "Template",
    "VoiceMessage",
    "parse_message",
]

Channel = Literal["email", "sms", "voice"]
EmailProvider = Literal["postal", "emailmassivo", "mailpartner"]
SmsProvider = Literal["smspartner"]
VoiceProvider = Literal["voicepartner"]

CHANNEL_PROVIDERS: dict[str, tuple[str, ...]] = {
    "email": ("postal", "emailmassivo", "mailpartner"),
    "sms": ("smspartner",),
    "voice": ("voicepartner",),
}

MAX_BODY_CHARS = 2_000_000
MAX_ATTACHMENT_BYTES_TOTAL = 10 * 1024 * 1024

# providers.md §5.2 (RuSender limits, applied to EmailMassivo).
EMAILMASSIVO_FORBIDDEN_EXTENSIONS = frozenset(
    "ade adp apk appx appxbundle bat cab chm cmd com cpl diagcab diagcfg diagpack dll dmg ex ex_ "
    "exe hta img ins iso isp jar jnlp js jse lib lnk mde msc msi msix msixbundle msp mst nsh pif "
    "ps1 scr sct shb sys vb vbe vbs vhd vxd wsc wsf wsh xll".split()
)


class InvalidMessage(ValueError):
    """A message refused before enqueue; ``errors`` names each bad field."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        lines = [f"{e['field']}: {e['message']}" for e in errors]
        super().__init__("invalid message: " + "; ".join(lines))

    @classmethod
    def from_validation_error(cls, exc: ValidationError) -> InvalidMessage:
        errors = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = ".".join(str(p) for p in err["loc"]) or "message"
            msg = str(err["msg"]).removeprefix("Value error, ")
            errors.append({"field": loc, "message": msg})
        return cls(errors)


# -- shared field types -------------------------------------------------------------------------


def _check_email(value: str) -> str:
    try:
        info = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address ({exc})") from None
    return info.normalized


def _check_e164(value: str) -> str:
    if not re.fullmatch(r"\+[1-9]\d{6,14}", value):
        raise ValueError("must be an E.164 number such as +33612345678")
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValueError("must be an E.164 number such as +33612345678") from None
    if not phonenumbers.is_possible_number(parsed):
        raise ValueError("is not a possible phone number for its country code")
    return value


EmailStr = Annotated[str, StringConstraints(max_length=255), AfterValidator(_check_email)]
E164 = Annotated[str, StringConstraints(max_length=16), AfterValidator(_check_e164)]
Name = Annotated[str, StringConstraints(max_length=255)]
IdempotencyKey = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=False)


class Address(_Strict):
    email: EmailStr
    name: Name | None = None

    @field_validator("name")
    @classmethod
    def _no_newlines(cls, v: str | None) -> str | None:
        if v is not None and ("\r" in v or "\n" in v):
            raise ValueError("must not contain line breaks")
        return v


class Attachment(_Strict):
    filename: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    content_type: Annotated[
        str, StringConstraints(max_length=255, pattern=r"^[\w.+\-]+/[\w.+\-]+$")
    ] = "application/octet-stream"
    content: Annotated[str, StringConstraints(min_length=1)]
    """Base64 of the file's bytes."""

    @field_validator("filename")
    @classmethod
    def _safe_filename(cls, v: str) -> str:
        if any(c in v for c in "/\\\r\n\x00"):
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
        return self.filename.rsplit(".", 1)[-1].lower() if "." in self.filename else ""


class Template(_Strict):
    id: int | Annotated[str, StringConstraints(min_length=1, max_length=100)]
    params: dict[Annotated[str, StringConstraints(max_length=100)], str] = Field(
        default_factory=dict, max_length=100
    )


class _Common(_Strict):
    idempotency_key: IdempotencyKey | None = None
    deadline: datetime | None = None
    """When the message stops being worth sending; after it, the delivery ends as ``expired``."""

    @field_validator("deadline")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("must include a timezone offset, e.g. 2026-01-31T12:00:00Z")
        return v.astimezone(UTC) if v is not None else None


# -- email ----------------------------------------------------------------------------------------

_HEADER_NAME = re.compile(r"^[!-9;-~]{1,100}$")  # RFC 5322 field name: printable, no colon


class EmailMessage(_Common):
    channel: Literal["email"] = Field(default="email", exclude=True)
    provider: EmailProvider
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
        if v is not None and ("\r" in v or "\n" in v):
            raise ValueError("must not contain line breaks")
        return v

    @field_validator("headers")
    @classmethod
    def _header_injection(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name[:40]!r} is not a valid header field name")
            if "\r" in value or "\n" in value:
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
    def _provider_rules(self) -> Self:
        if self.raw is not None:
            # providers.md §4.3: /send/raw takes rcpt_to, mail_from and data only.
            if self.provider != "postal":
                raise _field_error("raw", "raw RFC 2822 messages are only supported by postal")
            if self.from_ is None:
                raise _field_error("from", "is required (used as the envelope sender)")
            extras = [
                name
                for name in ("html", "text", "template", "subject", "preview_text")
                if getattr(self, name) is not None
            ]
            if extras or self.attachments or self.headers:
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
        if self.provider == "postal":
            self._check_postal()
        elif self.provider == "emailmassivo":
            self._check_emailmassivo()
        else:
            self._check_mailpartner()
        return self

    def _check_postal(self) -> None:
        # providers.md §4.2: 50 each for To, CC and BCC; from is required; no templates.
        for name in ("to", "cc", "bcc"):
            if len(getattr(self, name)) > 50:
                raise _field_error(name, "postal accepts at most 50 addresses per field")
        if self.from_ is None:
            raise _field_error("from", "is required for postal")
        if self.template is not None:
            raise _field_error("template", "postal has no stored templates; send html/text")
        for i, att in enumerate(self.attachments):
            if not att.filename:
                raise _field_error(f"attachments.{i}.filename", "is required")

    def _check_emailmassivo(self) -> None:
        # providers.md §5.2: a single `to` object; cc/bcc are single strings; preheader <= 255.
        if len(self.to) != 1:
            raise _field_error("to", "emailmassivo sends to exactly one recipient per message")
        for name in ("cc", "bcc"):
            if len(getattr(self, name)) > 1:
                # The shape of several cc/bcc recipients is not documented (§5.2, "strings,
                # not arrays"): refuse rather than guess a separator.
                raise _field_error(name, "emailmassivo accepts at most one address")
        if self.from_ is None:
            raise _field_error("from", "is required for emailmassivo")
        if self.template is not None and not isinstance(self.template.id, int):
            if not str(self.template.id).isdigit():
                raise _field_error("template.id", "emailmassivo template ids are integers")
        # providers.md §5.2: <= 20 attachments, <= 5 MB in total, forbidden extensions.
        if len(self.attachments) > 20:
            raise _field_error("attachments", "emailmassivo accepts at most 20 attachments")
        if sum(a.size_bytes for a in self.attachments) > 5 * 1024 * 1024:
            raise _field_error("attachments", "emailmassivo accepts at most 5 MB in total")
        for i, att in enumerate(self.attachments):
            if att.extension in EMAILMASSIVO_FORBIDDEN_EXTENSIONS:
                raise _field_error(
                    f"attachments.{i}.filename",
                    f"extension .{att.extension} is forbidden by emailmassivo",
                )

    def _check_mailpartner(self) -> None:
        # providers.md §2.2: params.to <= 500; no documented cc/bcc/headers/templates.
        for name in ("cc", "bcc"):
            if getattr(self, name):
                raise _field_error(name, "mailpartner has no cc/bcc; add the addresses to `to`")
        if self.template is not None:
            raise _field_error("template", "mailpartner has no stored templates; send html/text")
        if self.headers:
            raise _field_error("headers", "mailpartner does not accept custom headers")
        # providers.md §2.2: <= 3 attachments of 5 MB each.
        if len(self.attachments) > 3:
            raise _field_error("attachments", "mailpartner accepts at most 3 attachments")
        for i, att in enumerate(self.attachments):
            if att.size_bytes > 5 * 1024 * 1024:
                raise _field_error(f"attachments.{i}", "mailpartner accepts at most 5 MB each")
        if self.tag is not None and not re.fullmatch(r"[a-z0-9_\-]{3,20}", self.tag):
            raise _field_error("tag", "mailpartner tags are 3-20 lowercase chars, no spaces")

    @model_validator(mode="after")
    def _sizes(self) -> Self:
        total = sum(a.size_bytes for a in self.attachments)
        if total > MAX_ATTACHMENT_BYTES_TOTAL:
            raise _field_error("attachments", "attachments exceed 10 MB in total")
        return self


# -- SMS ------------------------------------------------------------------------------------------

_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€"
)


def sms_segments(text: str) -> int:
    """Billed SMS parts: 160/153 characters in GSM-7, 70/67 otherwise (providers.md §1.6)."""
    if all(c in _GSM7 for c in text):
        single, multi = 160, 153
    else:
        single, multi = 70, 67
    return 1 if len(text) <= single else math.ceil(len(text) / multi)


class SmsMessage(_Common):
    channel: Literal["sms"] = Field(default="sms", exclude=True)
    provider: SmsProvider = "smspartner"
    to: list[E164] = Field(min_length=1, max_length=500)
    text: Annotated[str, StringConstraints(min_length=1, max_length=1530)]
    sender: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{3,11}$")] | None = None
    """Alphanumeric sender, 3-11 characters (providers.md §1.2.2); omitted: a short code is used."""
    tag: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_\-]{1,20}$")] | None = None

    @field_validator("text")
    @classmethod
    def _segments(cls, v: str) -> str:
        # providers.md §1.3 code 52: at most 10 concatenated SMS.
        if sms_segments(v) > 10:
            raise ValueError("is longer than 10 SMS parts")
        return v

    @field_validator("to")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("contains duplicate numbers")
        return v


# -- voice ----------------------------------------------------------------------------------------


class VoiceMessage(_Common):
    channel: Literal["voice"] = Field(default="voice", exclude=True)
    provider: VoiceProvider = "voicepartner"
    mode: Literal["tts", "voicemail"]
    to: list[E164] = Field(min_length=1, max_length=500)
    text: Annotated[str, StringConstraints(min_length=1, max_length=5000)] | None = None
    audio_token: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-]{1,100}$")] | None = None
    lang: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[A-Za-z]{2})?$")] = "fr"
    sender: E164 | None = None
    """Voicemail callback number, validated beforehand on the provider's site (§3.2)."""
    notification_email: EmailStr | None = None
    """Voicemail drops require an address for the campaign report (§3.2, emailForNotification)."""
    speech_rate: Annotated[float, Field(ge=0.5, le=2.0)] | None = None

    @model_validator(mode="after")
    def _content(self) -> Self:
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


def parse_message(channel: str, data: Any) -> Message:
    """Validate ``data`` as a message of ``channel``; raise :class:`InvalidMessage` naming fields."""
    model = _MODELS.get(channel)
    if model is None:
        raise InvalidMessage([{"field": "channel", "message": f"unknown channel {channel!r}"}])
    if not isinstance(data, dict):
        raise InvalidMessage(
            [{"field": "message", "message": f"must be an object, got {type(data).__name__}"}]
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = InvalidMessage.from_validation_error(exc)
        # Model-level errors come back at loc '' with "field: message"; lift the field out.
        for item in err.errors:
            if item["field"] == "message" and ": " in item["message"]:
                field, _, text = item["message"].partition(": ")
                if re.fullmatch(r"[\w.]+", field):
                    item["field"], item["message"] = field, text
        raise InvalidMessage(err.errors) from None


# -- results --------------------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    kind: str
    code: str | None = None
    message: str


class DeliveryResult(BaseModel):
    """What a task returns and the result backend stores. Never a key, body or full address."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["sent", "failed", "expired", "parked", "queued", "sending"]
    delivery_id: str
    channel: Channel
    provider: str | None = None
    provider_message_ids: dict[str, str] = Field(default_factory=dict)
    """Provider id per recipient; keys are masked recipients (``j***@example.com``)."""
    attempts: int = 0
    cost: float | None = None
    currency: str | None = None
    error: ErrorInfo | None = None
