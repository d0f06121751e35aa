"""The email message: addresses, attachments, templates and the content rules."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal, Self

from pydantic import Field, StringConstraints, field_validator, model_validator

from worker.models.common import (
    MAX_BODY_CHARS,
    CommonFields,
    EmailStr,
    Name,
    ProviderName,
    Strict,
    field_error,
    has_line_break,
    matching,
    one_line,
)

__all__ = ["MAX_ATTACHMENT_BYTES_TOTAL", "Address", "Attachment", "EmailMessage", "Template"]

MAX_ATTACHMENT_BYTES_TOTAL = 10 * 1024 * 1024


class Address(Strict):
    email: EmailStr
    name: Name | None = None

    @field_validator("name")
    @classmethod
    def _no_newlines(cls, v: str | None) -> str | None:
        return one_line(v) if v is not None else None


class Attachment(Strict):
    filename: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    content_type: Annotated[
        str,
        StringConstraints(max_length=255),
        matching(r"[A-Za-z0-9.+\-]+/[A-Za-z0-9.+\-]+", "must be a MIME type such as text/plain"),
    ] = "application/octet-stream"
    content: Annotated[str, StringConstraints(min_length=1)]
    """Base64 of the file's bytes."""

    @field_validator("filename")
    @classmethod
    def _safe_filename(cls, v: str) -> str:
        if any(c in v for c in "/\\") or has_line_break(v) or v in (".", ".."):
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


class Template(Strict):
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


_HEADER_NAME = re.compile(r"[!-9;-~]{1,100}")  # RFC 5322 field name: printable, no colon


class EmailMessage(CommonFields):
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
        return one_line(v) if v is not None else None

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
            if has_line_break(value):
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
            # docs/providers/postal.md §4.3: /send/raw takes rcpt_to, mail_from and data only (which
            # providers accept raw is theirs to say: Driver.accepts_raw).
            if self.from_ is None:
                raise field_error("from", "is required (used as the envelope sender)")
            extras = [
                name
                for name in ("html", "text", "template", "subject", "preview_text", "reply_to")
                if getattr(self, name) is not None
            ]
            extras += [name for name in ("attachments", "headers") if getattr(self, name)]
            if extras:
                raise field_error(
                    "raw", "a raw message carries its own content; drop " + ", ".join(extras)
                )
            return self
        if self.subject is None:
            raise field_error("subject", "is required")
        if self.template is None and not (self.html or self.text):
            raise field_error("html", "html or text is required (or a template)")
        if self.template is not None and (self.html or self.text):
            raise field_error("template", "give either a template or html/text, not both")
        return self

    @model_validator(mode="after")
    def _sizes(self) -> Self:
        total = sum(a.size_bytes for a in self.attachments)
        if total > MAX_ATTACHMENT_BYTES_TOTAL:
            raise field_error("attachments", "attachments exceed 10 MB in total")
        return self
