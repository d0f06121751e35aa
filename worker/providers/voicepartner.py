"""Voice Partner: text-to-speech calls and voicemail drops; docs/providers/voicepartner.md §3.

``apiKey`` goes in the JSON body for POST and in the URL **path** for GET
(docs/providers/voicepartner.md §3.1). Success is ``{"success": true, "campaignId": …}``. The error
body shape is [NOT FOUND] (docs/providers/voicepartner.md §3.3): the string codes are looked for
under ``error`` (as the third-party Ruby gem reads them), ``code`` and ``message``, whichever is
present.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx

from worker.errors import (
    AccountBlockedError,
    ConfigurationError,
    DeliveryError,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
)
from worker.models import VoiceMessage
from worker.providers._util import as_float, json_or_empty, short_text
from worker.providers.base import Balance, CancelAtProvider, Driver, SendContext, SendOutcome
from worker.redaction import scrub
from worker.stores.limiter import Limit

__all__ = ["MAX_NUMBERS", "VoicePartnerDriver"]

MAX_NUMBERS = 500
"""Numbers per request (docs/providers/voicepartner.md §3.2: voicemail drops take at most 500;
docs/providers/voicepartner.md §3.3: ``PHONE_NUMBER_SIZE_ERROR`` beyond 500, a code listed for
both endpoints)."""

# docs/providers/voicepartner.md §3.3 (VMS string codes) and docs/providers/voicepartner.md §3.2
# (code 10 on /me); classes [INFERRED].
ERROR_CODES: dict[str, type[DeliveryError]] = {
    "NOT_CREDIT": AccountBlockedError,
    "PHONE_NUMBER_REQUIRED": PermanentError,
    "PHONE_NUMBER_SIZE_ERROR": PermanentError,  # more than 500 numbers
    "TOKEN_AUDIO_REQUIRED": PermanentError,
    "NOTIFY_URL_INVALID": PermanentError,
    "SENDER_NOT_AUTHORIZED": PermanentError,
    "SENDER_INVALID": PermanentError,
    "AUDIO_FILE_NOT_FOUND": PermanentError,
    "DESTINATION_INVALID": PermanentError,
    "10": ConfigurationError,  # invalid API key
}

PER_NUMBER_CODES = frozenset({"DESTINATION_INVALID"})
"""Refusals of a whole request that one of its numbers can cause (docs/providers/voicepartner.md
§3.3): in a batch, each message is asked again alone."""

_CODE_LIKE = re.compile(r"[A-Z][A-Z0-9_]{1,63}|\d{1,6}")


class VoicePartnerDriver(Driver[VoiceMessage]):
    name = "voicepartner"
    channel = "voice"
    default_base_url = "https://api.voicepartner.fr/v1"
    extra_settings = {
        "notification_email": (
            "default emailForNotification for voicemail drops (docs/providers/voicepartner.md §3.2)"
        ),
    }
    # docs/providers/voicepartner.md §3.2: tts/send 2000/hour; campaign/send (voicemail drop)
    # 2000/hour AND 5/minute.
    rate_limits = {
        "tts": (Limit(2000, 3600.0),),
        "campaign": (Limit(5, 60.0), Limit(2000, 3600.0)),
    }
    # docs/providers/voicepartner.md §3.2: whether a 429 carries Retry-After is [NOT FOUND]; the
    # x-ratelimit-reset header (docs/providers/voicepartner.md §3.1, [INFERRED]) has undocumented
    # units. Without Retry-After, wait a minute: a 1 s retry would only burn the per-minute budget.
    default_retry_after_s = 60.0

    def __init__(
        self,
        client: httpx.Client,
        *,
        api_key: str,
        base_url: str | None = None,
        notification_email: str | None = None,
    ) -> None:
        super().__init__(client, api_key=api_key, base_url=base_url)
        self.notification_email = notification_email or None

    @classmethod
    def limiter_bucket(cls, message: VoiceMessage) -> str:
        return "tts" if message.mode == "tts" else "campaign"

    # -- campaigns: several numbers per request (docs/providers/voicepartner.md §3.2) ------------
    # Both endpoints take ``phoneNumbers`` comma-separated with one content for all (at most
    # 500: docs/providers/voicepartner.md §3.3 PHONE_NUMBER_SIZE_ERROR). Single-number messages
    # with the same content share one request, so a voice campaign costs one request per chunk,
    # one slot of its endpoint's budget (tts/send 2000/hour; campaign/send 5/minute and
    # 2000/hour). The answer is one ``campaignId`` for every number, recorded as each
    # message's id.
    batch_limit = MAX_NUMBERS

    @classmethod
    def batch_key(cls, message: VoiceMessage) -> Hashable | None:
        """Single-number messages whose request fields are equal (mode, text or audio, lang,
        speech rate, sender, notification email) batch together; a message to several numbers
        is one request already."""
        if len(message.to) != 1:
            return None
        return (
            message.mode,
            message.audio_token or "",
            "" if message.audio_token else (message.text or ""),
            message.lang,
            message.speech_rate,
            message.sender or "",
            message.notification_email or "",
        )

    def build_batch_request(
        self, messages: Sequence[VoiceMessage], tag: str, *, bulk: bool = False
    ) -> httpx.Request:
        """One request for every number: the first message's content (the batch key makes them
        equal), no ``notifyUrl`` (a callback URL names one delivery; Voice Partner sends
        nothing that could be read per number) and no schedule (a campaign is held in our
        schedule and leaves at its time, ``worker.scheduling.enqueue``)."""
        first = messages[0]
        merged = first.model_copy(update={"to": [m.to[0] for m in messages]})
        return self.build_request(merged, SendContext(delivery_id=tag, idempotency_key=tag))

    def parse_batch_response(
        self, response: httpx.Response, messages: Sequence[VoiceMessage], request: httpx.Request
    ) -> list[SendOutcome | DeliveryError | None]:
        """The one ``campaignId`` for each number, the cost shared evenly (one price per
        number, the docs give the total). A refusal a single number can cause
        (``DESTINATION_INVALID``) accepted nothing: every entry answers ``None`` and each is
        sent again on its own."""
        numbers = [m.to[0] for m in messages]
        try:
            data = self._answer(response)
        except DeliveryError as exc:
            if exc.provider_code in PER_NUMBER_CODES and len(numbers) > 1:
                return [None] * len(numbers)
            raise
        whole = self.one_id_outcome(
            response, data, data.get("campaignId"), numbers, id_field="campaignId"
        )
        return list(self.per_number(whole, numbers))

    def build_request(self, message: VoiceMessage, ctx: SendContext) -> httpx.Request:
        numbers = ",".join(message.to)
        if message.mode == "voicemail":
            return self._voicemail(message, numbers, ctx)
        payload: dict[str, Any] = {
            "apiKey": self._api_key,
            "phoneNumbers": numbers,
            "lang": message.lang,
        }
        # docs/providers/voicepartner.md §3.2: with tokenAudio, text is ignored; send only one of
        # them.
        if message.audio_token:
            payload["tokenAudio"] = message.audio_token
        elif message.text:
            payload["text"] = message.text
        else:
            raise PermanentError("tts needs text or audio_token", provider=self.name)
        if message.speech_rate is not None:
            payload["speechRate"] = message.speech_rate
        if ctx.callback_url:
            # docs/providers/voicepartner.md §3.2/§3.3: the campaign status is POSTed there (payload
            # [NOT FOUND]): a hint only.
            payload["notifyUrl"] = ctx.callback_url
        # docs/providers/voicepartner.md §3.2 scheduledDate (worker.scheduling)
        payload.update(self.scheduled_payload(ctx))
        return self.post_json("tts/send", payload)

    def _voicemail(self, message: VoiceMessage, numbers: str, ctx: SendContext) -> httpx.Request:
        if not message.audio_token:
            raise PermanentError("voicemail drops need audio_token", provider=self.name)
        email = message.notification_email or self.notification_email
        if not email:
            # docs/providers/voicepartner.md §3.2: emailForNotification is required for
            # /campaign/send.
            raise ConfigurationError(
                "voicemail drops need notification_email on the message or "
                "DELIVERY_VOICEPARTNER_NOTIFICATION_EMAIL",
                provider=self.name,
            )
        payload: dict[str, Any] = {
            "apiKey": self._api_key,
            "tokenAudio": message.audio_token,
            "emailForNotification": email,
            "phoneNumbers": numbers,
        }
        if message.sender:
            payload["sender"] = message.sender
        if ctx.callback_url:
            # docs/providers/voicepartner.md §3.2/§3.3: the campaign status arrives by GET (payload
            # [NOT FOUND]): a hint only.
            payload["notifyUrl"] = ctx.callback_url
        # docs/providers/voicepartner.md §3.2 scheduledDate (worker.scheduling)
        payload.update(self.scheduled_payload(ctx))
        return self.post_json("campaign/send", payload)

    def parse_response(
        self, response: httpx.Response, message: VoiceMessage, ctx: SendContext
    ) -> SendOutcome:
        data = self._answer(response)
        # One campaign covers every number of the request (docs/providers/voicepartner.md §3.2).
        return self.one_id_outcome(
            response, data, data.get("campaignId"), message.to, id_field="campaignId"
        )

    # -- native scheduling and cancel (docs/providers/voicepartner.md §3.2) ------------------------

    # docs/providers/voicepartner.md §3.2 documents no cancel window for DELETE /campaign/cancel
    # [NOT FOUND]; the safe side is the Partner platform's 5 minutes (same company): a send_at
    # nearer than 6 minutes is held by the worker, which can cancel it to the last moment.
    native_schedule_min_lead_s: ClassVar[float | None] = 6 * 60.0

    @classmethod
    def native_schedule_fits(cls, when: datetime) -> bool:
        """``scheduledDate`` is ``"YYYY-mm-dd H:m:00"`` (docs/providers/voicepartner.md §3.2): whole
        minutes only. Its time zone is not stated; the API's own dates name Europe/Paris
        (docs/providers/voicepartner.md §3.2 audio ``created_at``), so [INFERRED] Paris time, and a
        local time that occurs twice (autumn DST change) is held by the worker instead (the safe
        side)."""
        local = when.astimezone(_PARIS)
        if local.second or local.microsecond:
            return False
        naive = local.replace(tzinfo=None)
        first = naive.replace(tzinfo=_PARIS, fold=0).timestamp()
        second = naive.replace(tzinfo=_PARIS, fold=1).timestamp()
        return first == second == when.timestamp()

    def schedule_fields(self, when: datetime) -> dict[str, Any]:
        return {"scheduledDate": when.astimezone(_PARIS).strftime("%Y-%m-%d %H:%M:00")}

    def cancel_scheduled(self, provider_message_id: str) -> CancelAtProvider:
        """``DELETE /campaign/cancel/{apiKey}/{campaignId}`` (docs/providers/voicepartner.md §3.2):
        200 with ``success: true`` cancelled; 404 not found; 400 (a campaign that is not
        cancellable: already due, sent or cancelled, the codes are HTTP-style only) is read as too
        late; 401 and anything else is an error to report."""
        path = "campaign/cancel/" + quote(self._api_key, safe="") + "/"
        request = self.client.build_request(
            "DELETE", self.url(path + quote(provider_message_id, safe=""))
        )
        try:
            response = self.transmit(request)
        except DeliveryError as exc:
            return CancelAtProvider("error", exc.message)
        data = json_or_empty(response)
        if response.status_code == 200 and data.get("success") is True:
            return CancelAtProvider("cancelled")
        if response.status_code == 404:
            return CancelAtProvider("not_found", "voicepartner: campaign not found")
        if response.status_code == 400:
            return CancelAtProvider("too_late", "voicepartner: campaign is not cancellable")
        return CancelAtProvider(
            "error", f"voicepartner cancel answered HTTP {response.status_code}"
        )

    def check_balance(self) -> Balance | None:
        """``GET /me/{apiKey}`` (docs/providers/voicepartner.md §3.2): the key is a path segment,
        quoted."""
        request = self.client.build_request("GET", self.url("me/" + quote(self._api_key, safe="")))
        data = self._answer(self.transmit(request))
        credit = as_float(data.get("credit"))  # a string in the doc example: "19"
        if credit is None:
            raise TransientError("voicepartner /me answer has no credit", provider=self.name)
        currency = data.get("currency")
        return Balance(
            provider=self.name,
            has_credit=credit > 0,
            credits=credit,
            currency=currency if isinstance(currency, str) else None,
        )

    # -- answer classification -----------------------------------------------------------------

    def _answer(self, response: httpx.Response) -> dict[str, Any]:
        """The body of a ``success: true`` 2xx answer; otherwise a classified error."""
        status = response.status_code
        data = json_or_empty(response)
        if 200 <= status < 300 and data.get("success") is True:
            return data
        code, text = _error_code(data)
        known = ERROR_CODES.get(code) if code is not None else None
        detail = text if text and text != code else ""
        message = f"voicepartner HTTP {status}" + (f": {detail}" if detail else "")
        if known is not None:
            raise known(message, provider=self.name, status_code=status, provider_code=code)
        if 200 <= status < 300 and data.get("success") is not False:
            # A 2xx that says neither success nor failure (not JSON, wrong types): the
            # provider may have accepted the call.
            raise UnknownOutcomeError(
                f"{message}: unrecognisable answer", provider=self.name, status_code=status
            )
        if 200 <= status < 300:
            # An explicit refusal (success: false) with an unknown code: resending would repeat it.
            raise PermanentError(
                message, provider=self.name, status_code=status, provider_code=code
            )
        # The shared mapping; an undocumented 402 reads as NOT_CREDIT, the safe side
        # (docs/providers/voicepartner.md §3.3).
        raise self.classify_status(response, message, provider_code=code)


def _error_code(data: dict[str, Any]) -> tuple[str | None, str]:
    """The string error code and a readable text from an error body of unknown shape
    (docs/providers/voicepartner.md §3.3).

    Accepts ``{"error": "NOT_CREDIT"}``, ``{"code": "NOT_CREDIT", "message": …}``,
    ``{"message": "NOT_CREDIT"}``, ``{"error": {"code": …, "message": …}}`` and numeric codes.
    """
    candidates: list[Any] = []
    texts: list[str] = []
    error = data.get("error")
    if isinstance(error, dict):
        candidates += [error.get("code"), error.get("error")]
        if isinstance(error.get("message"), str):
            texts.append(error["message"])
    else:
        candidates.append(error)
    candidates += [data.get("code"), data.get("message")]
    if isinstance(data.get("message"), str):
        texts.append(data["message"])
    if isinstance(error, str):
        texts.append(error)
    code: str | None = None
    for candidate in candidates:
        if isinstance(candidate, bool) or not isinstance(candidate, (str, int)):
            continue
        value = str(candidate).strip()
        if value.upper() in ERROR_CODES:
            code = value.upper()
            break
        if code is None and _CODE_LIKE.fullmatch(value):
            # An unknown code, kept for operators. DeliveryError scrubs its message but not
            # provider_code, so scrub here: a provider may echo the key back.
            code = scrub(value)
    return code, short_text(texts[0] if texts else "")


_PARIS = ZoneInfo("Europe/Paris")

DRIVER = VoicePartnerDriver
"""This module's provider, as the registry (:mod:`worker.providers`) finds it."""
