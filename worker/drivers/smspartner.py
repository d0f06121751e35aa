"""SMS Partner: ``POST /send`` (one text, many numbers); providers.md §1."""

from __future__ import annotations

from typing import Any, ClassVar

import httpx

from worker.drivers.base import SendContext, SendOutcome
from worker.drivers.partner import COMMON_CODES, PartnerDriver, _as_float
from worker.errors import DeliveryError, PermanentError, ThrottledError, UnknownOutcomeError
from worker.models import SmsMessage

__all__ = ["SmsPartnerDriver"]

# providers.md §1.3, "SMS-send codes"; the class column there is [INFERRED].
SMS_CODES: dict[int, type[DeliveryError]] = {
    **COMMON_CODES,
    2: PermanentError,  # phoneNumbers required
    4: PermanentError,  # message not found
    9: PermanentError,  # validation constraints, details in error[]
    13: PermanentError,  # no default price: unroutable destination
    15: PermanentError,  # number already in the list
    # 22/23: marketing SMS outside 08:00-20:00 or on Sundays/holidays. The provider holds such
    # messages itself for marketing accounts; when it refuses instead, retrying within the hour
    # is the safe reading of "deferrable" (we do not know the account's time zone).
    22: ThrottledError,
    23: ThrottledError,
    42: PermanentError,
    43: PermanentError,
    44: PermanentError,
    45: PermanentError,
    46: PermanentError,
    47: PermanentError,
    48: PermanentError,
    49: PermanentError,
    50: PermanentError,
    51: PermanentError,
    52: PermanentError,
    55: PermanentError,
    90: PermanentError,
    992: PermanentError,  # unauthorized sender
    429: ThrottledError,  # documented for HLR/lookup only; honoured if /send ever answers it
}


def encode_text(text: str) -> str:
    """Apply the provider's in-band markup (providers.md §1.2.2).

    A line break is written ``:br:`` and the euro sign ``:euro:``; ``"`` is escaped by JSON.
    """
    return text.replace("\r\n", "\n").replace("\n", ":br:").replace("€", ":euro:")


class SmsPartnerDriver(PartnerDriver[SmsMessage]):
    name = "smspartner"
    channel = "sms"
    default_base_url = "https://api.smspartner.fr/v1"
    codes: ClassVar = SMS_CODES
    balance_field = "creditSms"
    supports_reconcile = True

    def build_request(self, message: SmsMessage, ctx: SendContext) -> httpx.Request:
        payload: dict[str, Any] = {
            "phoneNumbers": ",".join(message.to),
            "message": encode_text(message.text),
        }
        if message.sender:
            payload["sender"] = message.sender
        # The delivery's own tag wins: it makes an unknown outcome reconcilable (§1.5).
        tag = ctx.tag or message.tag
        if tag:
            payload["tag"] = tag
        return self.post_json(
            "send", self.auth_body(payload), headers={"Cache-Control": "no-cache"}
        )

    def parse_response(
        self, response: httpx.Response, message: SmsMessage, ctx: SendContext
    ) -> SendOutcome:
        data = self.envelope(response)
        message_id = data.get("message_id")
        if (
            not isinstance(message_id, (int, str))
            or isinstance(message_id, bool)
            or message_id == ""
        ):
            # Accepted (success/code 200) but unreadable: a blind resend could duplicate the
            # send, so let the service reconcile by tag first (providers.md §1.5).
            raise UnknownOutcomeError(
                "smspartner success answer has no message_id",
                provider=self.name,
                status_code=response.status_code,
            )
        currency = data.get("currency")
        return SendOutcome(
            provider=self.name,
            # One message_id covers every number of the send (§1.2.2).
            provider_message_ids={number: str(message_id) for number in message.to},
            cost=_as_float(data.get("cost")),
            currency=currency if isinstance(currency, str) else None,
        )

    def reconcile(self, message: SmsMessage, ctx: SendContext) -> SendOutcome | None:
        """``GET /bulk-status-by-tag``: did an earlier attempt with this tag get accepted? (§1.5)"""
        if not ctx.tag:
            return None
        response = self.transmit(self.get_request("bulk-status-by-tag", tag=ctx.tag))
        data = self.envelope(response)
        items = data.get("StatutResponse_List")
        if not isinstance(items, list) or not items:
            return None  # nothing accepted under this tag: a resend cannot duplicate
        message_id = data.get("message_id")
        ids: dict[str, str] = {}
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("phoneNumber"), str):
                item_id = item.get("messageId", message_id)
                if item_id is not None:
                    ids[item["phoneNumber"]] = str(item_id)
        if not ids and message_id is not None:
            ids = {number: str(message_id) for number in message.to}
        return SendOutcome(provider=self.name, provider_message_ids=ids)
