"""The voice message: a text-to-speech call or a voicemail drop
(docs/providers/voicepartner.md §3.2)."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, StringConstraints, model_validator

from worker.models.common import (
    E164,
    CommonFields,
    EmailStr,
    ProviderName,
    check_unique_numbers,
    field_error,
    matching,
)

__all__ = ["VoiceMessage"]


class VoiceMessage(CommonFields):
    channel: Literal["voice"] = Field(default="voice", exclude=True)
    provider: ProviderName | None = None
    """Omitted: the channel's only provider, or routed once there are several."""

    mode: Literal["tts", "voicemail"]
    to: list[E164] = Field(min_length=1, max_length=500)
    text: Annotated[str, StringConstraints(min_length=1, max_length=5000)] | None = None
    audio_token: (
        Annotated[
            str,
            matching(
                r"[A-Za-z0-9_\-]{1,100}",
                "must be a Voice Partner audio file token (letters, digits, _ or -)",
            ),
        ]
        | None
    ) = None
    lang: Annotated[
        str, matching(r"[a-z]{2}(-[A-Za-z]{2})?", "must be a language code such as fr or en-GB")
    ] = "fr"
    sender: E164 | None = None
    """Voicemail callback number, validated beforehand on the provider's site
    (docs/providers/voicepartner.md §3.2)."""
    notification_email: EmailStr | None = None
    """Voicemail drops require an address for the campaign report
    (docs/providers/voicepartner.md §3.2, emailForNotification)."""
    speech_rate: Annotated[float, Field(ge=0.5, le=2.0)] | None = None

    @model_validator(mode="after")
    def _content(self) -> Self:
        check_unique_numbers(self.to)
        if self.mode == "tts" and not (self.text or self.audio_token):
            raise field_error("text", "text or audio_token is required for tts")
        if self.mode == "voicemail":
            if not self.audio_token:
                raise field_error("audio_token", "is required for voicemail drops")
            if self.text:
                raise field_error("text", "voicemail drops play audio_token; drop text")
        return self
