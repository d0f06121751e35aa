"""The SMS message, and how the network counts its length (GSM-7 or UCS-2 units, parts)."""

from __future__ import annotations

import math
from typing import Annotated, Literal, Self

from pydantic import Field, StringConstraints, field_validator, model_validator

from worker.models.common import E164, CommonFields, ProviderName, check_unique_numbers, matching

__all__ = ["MAX_SMS_SEGMENTS", "SmsMessage", "sms_segments", "sms_units"]

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
    (docs/providers/smspartner.md §1.2.2).
    """
    text = text.replace("\r\n", "\n")
    breaks = text.count("\n")
    if _GSM7.issuperset(text):
        return len(text) + breaks + sum(text.count(c) for c in _GSM7_EXTENSION), True
    return len(text.encode("utf-16-le", "surrogatepass")) // 2 + breaks, False


def sms_segments(text: str) -> int:
    """Billed SMS parts: 160/153 units in GSM-7, 70/67 otherwise
    (docs/providers/smspartner.md §1.2.2, §1.6)."""
    return _parts(*sms_units(text))


def _parts(units: int, gsm7: bool) -> int:
    single, multi = (160, 153) if gsm7 else (70, 67)
    return 1 if units <= single else math.ceil(units / multi)


class SmsMessage(CommonFields):
    channel: Literal["sms"] = Field(default="sms", exclude=True)
    provider: ProviderName | None = None
    """Omitted: the channel's only provider, or routed once there are several."""

    to: list[E164] = Field(min_length=1, max_length=500)
    text: Annotated[str, StringConstraints(min_length=1)]
    sender: (
        Annotated[
            str,
            matching(r"[A-Za-z0-9]{3,11}", "must be 3-11 letters or digits, no spaces or symbols"),
        ]
        | None
    ) = None
    """Alphanumeric sender, 3-11 characters (docs/providers/smspartner.md §1.2.2); omitted: a short
    code is used."""
    tag: (
        Annotated[
            str,
            matching(
                r"[a-z0-9_\-]{1,20}", "must be 1-20 lowercase letters, digits, _ or -, no spaces"
            ),
        ]
        | None
    ) = None
    """docs/providers/smspartner.md §1.2.2: <= 20 characters, lowercase, no spaces."""

    @field_validator("text")
    @classmethod
    def _segments(cls, v: str) -> str:
        # docs/providers/smspartner.md §1.3 code 52: at most 10 concatenated SMS.
        units, gsm7 = sms_units(v)
        parts = _parts(units, gsm7)  # sms_segments(v), the units counted once
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
        check_unique_numbers(self.to)
        return self
