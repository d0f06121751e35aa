"""The envelope shared by SMS Partner and Mail Partner (same company, same platform).

Every answer is JSON with ``success`` (bool) and ``code`` (int, 200 = OK), whatever the HTTP
status (docs/providers/smspartner.md §1.1: the validation fixture is served with HTTP 400). The
``apiKey`` goes in the JSON body for POST and in the query string for GET. Validation details come
as a list under ``error`` (Go client, Ruby gem, FR docs) or ``errors`` (EN draft): both are accepted
(docs/providers/smspartner.md §1.2.2, [INFERRED]).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar
from zoneinfo import ZoneInfo

import httpx

from worker.errors import (
    AccountBlockedError,
    ConfigurationError,
    DeferredError,
    DeliveryError,
    PermanentError,
    RecipientRejectedError,
    ThrottledError,
    TransientError,
    UnknownOutcomeError,
)
from worker.providers._util import as_float, as_int
from worker.providers.base import Balance, CancelAtProvider, Driver, M

__all__ = ["PROVIDER_TZ", "PartnerDriver", "next_marketing_slot"]

T = TypeVar("T", bound=DeliveryError)

# Codes with the same meaning on both platforms (docs/providers/smspartner.md §1.3 and
# docs/providers/mailpartner.md §2.3).
COMMON_CODES: dict[int, type[DeliveryError]] = {
    1: ConfigurationError,  # API key required
    3: ConfigurationError,  # API key required (mail)
    10: ConfigurationError,  # incorrect API key
    11: AccountBlockedError,  # insufficient credit
    14: RecipientRejectedError,  # STOP list / unsubscribe list
    20: ConfigurationError,  # account deactivated
    30: ConfigurationError,  # account blocked
    40: ConfigurationError,  # API access denied
    96: ConfigurationError,  # IP not authorised
    500: TransientError,  # problem adding the message to the queue
}


class PartnerDriver(Driver[M]):
    """Envelope parsing for the Partner platform; subclasses add their own code table."""

    codes: ClassVar[Mapping[int, type[DeliveryError]]] = COMMON_CODES
    balance_field: ClassVar[str] = "creditSms"

    def auth_body(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"apiKey": self._api_key, **payload}

    def get_request(self, path: str, **params: str) -> httpx.Request:
        return self.client.build_request(
            "GET", self.url(path), params={"apiKey": self._api_key, **params}
        )

    def envelope(self, response: httpx.Response) -> dict[str, Any]:
        """The body when ``success`` is true and ``code`` is 200; otherwise a classified error."""
        data = self.json_object(response)
        success = data.get("success")
        code = as_int(data.get("code"))
        if success is True and code in (200, None) and response.status_code < 300:
            return data
        if code is None or code == 200:
            # No code, or code 200 ("OK") without success=true: the envelope says nothing usable.
            if response.status_code >= 300:
                raise self.classify_status(
                    response, f"{self.name} answered HTTP {response.status_code}"
                )
            # A 2xx without a readable envelope: the provider may have accepted the send.
            raise UnknownOutcomeError(
                f"{self.name} answer has no usable success/code envelope",
                provider=self.name,
                status_code=response.status_code,
            )
        raise self.classify(code, _error_text(data), response)

    def classify(self, code: int, text: str, response: httpx.Response) -> DeliveryError:
        """The error for an envelope ``code`` (the platform's own codes, whatever the HTTP status);
        a non-2xx answer without a code goes to the shared :meth:`Driver.classify_status`."""
        message = f"{self.name} code {code}: {text}" if text else f"{self.name} code {code}"
        kind = self.codes.get(code)
        if kind is ThrottledError:
            return ThrottledError(
                message,
                provider=self.name,
                status_code=response.status_code,
                provider_code=code,
                retry_after_s=self.retry_after_s(response) or 60.0,
            )
        if kind is DeferredError:
            return DeferredError(
                message,
                not_before=next_marketing_slot(time.time(), code),
                provider=self.name,
                status_code=response.status_code,
                provider_code=code,
            )
        if kind is None:
            # Unknown codes are treated as permanent: resending an unexplained refusal in a loop
            # costs money and hides the problem; operators see the code in the result.
            kind = TransientError if response.status_code >= 500 else PermanentError
        return kind(
            message, provider=self.name, status_code=response.status_code, provider_code=code
        )

    # -- native scheduling and cancel (docs/providers/smspartner.md §1.2.2, §1.2.6,
    # docs/providers/mailpartner.md §2.2) ----------------------------------------------------------

    # A send can be cancelled until 5 minutes before its time (docs/providers/smspartner.md §1.2.6,
    # docs/providers/mailpartner.md §2.2 code 6). A send_at nearer than 6 minutes is held by the
    # worker instead, which can cancel it to the last moment; further ahead it is handed over at
    # once and survives our own downtime.
    native_schedule_min_lead_s: ClassVar[float | None] = 6 * 60.0

    @classmethod
    def native_schedule_fits(cls, when: datetime) -> bool:
        """``scheduledDeliveryDate`` (dd/mm/YYYY) + ``time`` (hour) + ``minute`` (0-55, steps of
        5) express whole 5-minute marks only (docs/providers/smspartner.md §1.2.2,
        docs/providers/mailpartner.md §2.2), in Paris time (PROVIDER_TZ, [INFERRED]). A local time
        that occurs twice (the autumn DST change) is ambiguous on the wire, so such a message is
        held by the worker instead (the safe side)."""
        local = when.astimezone(PROVIDER_TZ)
        if local.second or local.microsecond or local.minute % 5:
            return False
        naive = local.replace(tzinfo=None)
        first = naive.replace(tzinfo=PROVIDER_TZ, fold=0).timestamp()
        second = naive.replace(tzinfo=PROVIDER_TZ, fold=1).timestamp()
        return first == second == when.timestamp()

    def schedule_fields(self, when: datetime) -> dict[str, Any]:
        local = when.astimezone(PROVIDER_TZ)
        return {
            "scheduledDeliveryDate": local.strftime("%d/%m/%Y"),
            "time": local.hour,
            "minute": local.minute,
        }

    def cancel_scheduled(self, provider_message_id: str) -> CancelAtProvider:
        """``GET /message-cancel?apiKey=…&messageId=…`` (docs/providers/smspartner.md §1.2.6,
        docs/providers/mailpartner.md §2.2): code 200 cancelled, 5 already cancelled, 6 less than 5
        minutes before the time, 7 already sent, 4 not found; anything else (a key problem, a
        transport error) is an error to report."""
        try:
            request = self.get_request("message-cancel", messageId=provider_message_id)
            response = self.transmit(request)
            self.envelope(response)
        except DeliveryError as exc:
            outcome = {"5": "cancelled", "6": "too_late", "7": "already_sent", "4": "not_found"}
            if exc.provider_code in outcome:
                return CancelAtProvider(outcome[exc.provider_code], exc.message)
            return CancelAtProvider("error", exc.message)
        return CancelAtProvider("cancelled")

    def check_balance(self) -> Balance | None:
        """``GET /me?apiKey=…`` (docs/providers/smspartner.md §1.2.1,
        docs/providers/mailpartner.md §2.2)."""
        response = self.transmit(self.get_request("me"))
        data = self.envelope(response)
        credits = data.get("credits")
        if not isinstance(credits, dict):
            raise TransientError(f"{self.name} /me answer has no credits", provider=self.name)
        count = as_float(credits.get(self.balance_field))
        currency = credits.get("currency") if isinstance(credits.get("currency"), str) else None
        if count is None:
            count = as_float(credits.get("balance"))  # a string in the doc example
        return Balance(
            provider=self.name,
            has_credit=count is not None and count > 0,
            credits=count,
            currency=currency,
        )


# [INFERRED] The platform is French (api.smspartner.fr, api.mailpartner.fr) and its docs state the
# legal window and the schedule fields without a time zone (docs/providers/smspartner.md §1.2.2,
# docs/providers/mailpartner.md §2.2): both are read in Paris time, the zone the same company's
# Voice Partner API names in its own answers (docs/providers/voicepartner.md §3.2, audio files'
# created_at: "timezone":"Europe/Paris").
PROVIDER_TZ = ZoneInfo("Europe/Paris")
MARKETING_WINDOW_OPENS_HOUR = 8
"""The legal window for marketing messages opens at 08:00 (docs/providers/smspartner.md §1.2.2, §1.3
code 22)."""


def next_marketing_slot(now: float, code: int) -> float:
    """When a marketing message refused with code 22 or 23 may be sent again (epoch seconds).

    Marketing sends are "held until the next business day at 08:00"
    (docs/providers/smspartner.md §1.2.2). Code 22 (outside the hours): the next 08:00, Paris time.
    Code 23 (Sunday or a public holiday): 08:00 on the next day that is not a Sunday. Sundays are
    never allowed, so code 22 skips them too. Public holidays are unknown here: if the provider
    refuses again on one, the next slot is simply computed again from that refusal.
    """
    local = datetime.fromtimestamp(now, PROVIDER_TZ)
    day = local.date()
    opens = datetime.combine(day, datetime.min.time(), tzinfo=PROVIDER_TZ).replace(
        hour=MARKETING_WINDOW_OPENS_HOUR
    )
    if code != 22 or opens <= local:
        day += timedelta(days=1)  # code 23: today is refused; code 22: today's 08:00 is past
    while day.weekday() == 6:  # Sunday
        day += timedelta(days=1)
    slot = datetime.combine(day, datetime.min.time(), tzinfo=PROVIDER_TZ).replace(
        hour=MARKETING_WINDOW_OPENS_HOUR
    )
    return slot.timestamp()


def _error_text(data: Mapping[str, Any]) -> str:
    """A readable summary of ``error``/``errors`` lists or a plain ``message``."""
    items = data.get("error", data.get("errors"))
    parts: list[str] = []
    if isinstance(items, list):
        for item in items[:10]:
            if isinstance(item, dict):
                field = item.get("elementId")
                text = item.get("message")
                if isinstance(text, str):
                    parts.append(f"{field}: {text}" if isinstance(field, str) else text)
            elif isinstance(item, str):
                parts.append(item)
    elif isinstance(items, str):
        parts.append(items)
    message = data.get("message")
    if isinstance(message, str) and not parts:
        parts.append(message)
    return "; ".join(p[:200] for p in parts)
