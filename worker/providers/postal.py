"""Postal (self-hosted): the legacy v1 HTTP API; docs/providers/postal.md §4.

Postal answers HTTP 200 for every outcome and puts it in the JSON ``status`` field
(``success`` | ``error`` | ``parameter-error``), so the body decides, never the status code
(docs/providers/postal.md §4.1). Postal has no idempotency and no search endpoint
(docs/providers/postal.md §4.7): an unknown outcome cannot be reconciled, only traced through the
``X-Delivery-Id`` header this driver adds.
"""

from __future__ import annotations

from email.utils import formataddr
from typing import Any

import httpx

from worker.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
)
from worker.models import Address, EmailMessage
from worker.providers._util import provider_id, short_text
from worker.providers.base import Driver, Gate, RuleViolation, SendContext, SendOutcome
from worker.providers.lookup import LookupTarget, lookup_event
from worker.redaction import scrub
from worker.stores.suppression import Reason
from worker.tracking.events import DeliveryEvent, EventType

__all__ = ["PostalDriver"]

DELIVERY_ID_HEADER = "X-Delivery-Id"
PREVIEW_TEXT_WARNING = (
    "preview_text: not sent; Postal has no preheader field (docs/providers/postal.md §4.2)"
)

# docs/providers/postal.md §4.1 (authentication errors) and docs/providers/postal.md §4.7
# (classification, [INFERRED]).
CONFIG_CODES = frozenset({"InvalidServerAPIKey", "AccessDenied", "ServerSuspended"})
# docs/providers/postal.md §4.2 validation codes and docs/providers/postal.md §4.4 MessageNotFound;
# docs/providers/postal.md §4.7 classes them permanent. Codes not listed here are permanent too (see
# _error).
PERMANENT_CODES = frozenset(
    {
        "NoRecipients",
        "TooManyToAddresses",
        "TooManyCCAddresses",
        "TooManyBCCAddresses",
        "NoContent",
        "FromAddressMissing",
        "UnauthenticatedFromAddress",
        "AttachmentMissingName",
        "AttachmentMissingData",
        "MessageNotFound",
    }
)


def _mailbox(address: Address) -> str:
    """``"Name" <addr>`` or the bare address (docs/providers/postal.md §4.2: entries may be ``Name
    <addr>``).

    ``formataddr`` quotes names with commas or specials and RFC 2047-encodes non-ASCII names,
    so one entry can never be read as two addresses when Postal joins them into a header.
    """
    if address.name:
        return formataddr((address.name, address.email), charset="utf-8")
    return address.email


class PostalDriver(Driver[EmailMessage]):
    name = "postal"
    channel = "email"
    default_base_url = None  # the operator's own server (docs/design.md §2.3)
    accepts_raw = True  # /send/raw (docs/providers/postal.md §4.3)
    # The operator's own server: no API rate limit (docs/providers/index.md §6).
    rate_limits = {"send": ()}
    status_lookup = True  # messages/message and messages/deliveries (docs/providers/postal.md §4.4)

    @classmethod
    def check_message(cls, message: EmailMessage) -> None:
        if message.raw is not None:
            # /send/raw (docs/providers/postal.md §4.3) takes rcpt_to, mail_from and data only: no
            # field limits
            return
        # docs/providers/postal.md §4.2: 50 each for To, CC and BCC; from is required; no templates.
        for name in ("to", "cc", "bcc"):
            if len(getattr(message, name)) > 50:
                raise RuleViolation(name, "postal accepts at most 50 addresses per field")
        if message.from_ is None:
            raise RuleViolation("from", "is required for postal")
        if message.template is not None:
            raise RuleViolation("template", "postal has no stored templates; send html/text")

    def build_request(self, message: EmailMessage, ctx: SendContext) -> httpx.Request:
        headers = {"X-Server-API-Key": self._api_key}
        if message.raw is not None:
            return self.post_json("api/v1/send/raw", self._raw_payload(message), headers)
        payload: dict[str, Any] = {
            "to": [_mailbox(a) for a in message.to],
            "subject": message.subject,
        }
        if message.cc:
            payload["cc"] = [_mailbox(a) for a in message.cc]
        if message.bcc:
            payload["bcc"] = [_mailbox(a) for a in message.bcc]
        if message.from_ is not None:
            payload["from"] = _mailbox(message.from_)
        if message.reply_to is not None:
            payload["reply_to"] = _mailbox(message.reply_to)
        if message.text is not None:
            payload["plain_body"] = message.text
        if message.html is not None:
            payload["html_body"] = message.html
        # preview_text is not sent: Postal has no preheader field (docs/providers/postal.md §4.2
        # parameter table). The result reports it (PREVIEW_TEXT_WARNING) rather than refusing it,
        # which would stop routing such messages to Postal.
        if message.tag is not None:
            payload["tag"] = message.tag
        # Postal stores custom headers (docs/providers/postal.md §4.2 "headers");
        # docs/providers/postal.md §4.7 suggests X-Delivery-Id so a send whose answer was lost can
        # be traced by hand. Ours replaces any caller-supplied copy.
        custom = {
            k: v for k, v in message.headers.items() if k.lower() != DELIVERY_ID_HEADER.lower()
        }
        custom[DELIVERY_ID_HEADER] = ctx.delivery_id
        payload["headers"] = custom
        if message.attachments:
            payload["attachments"] = [
                {"name": a.filename, "content_type": a.content_type, "data": a.content}
                for a in message.attachments
            ]
        return self.post_json("api/v1/send/message", payload, headers)

    def _raw_payload(self, message: EmailMessage) -> dict[str, Any]:
        """``/send/raw`` (docs/providers/postal.md §4.3): envelope sender, every recipient, and the
        base64 message.

        The raw message carries its own headers, so no X-Delivery-Id can be added here.
        """
        if message.from_ is None:
            raise PermanentError("postal /send/raw needs a from address", provider=self.name)
        rcpt_to: list[str] = []
        for address in [*message.to, *message.cc, *message.bcc]:
            if address.email not in rcpt_to:
                rcpt_to.append(address.email)
        return {"mail_from": message.from_.email, "rcpt_to": rcpt_to, "data": message.raw}

    def parse_response(
        self, response: httpx.Response, message: EmailMessage, ctx: SendContext
    ) -> SendOutcome:
        status_code = response.status_code
        if status_code != 200:
            raise self.classify_status(response, f"postal answered HTTP {status_code}")
        body = self.json_object(response)
        status = body.get("status")
        data = body.get("data")
        if not isinstance(data, dict):
            data = {}
        if status == "success":
            return self._success(data, status_code, message)
        if status == "error":
            raise self._error(data, status_code)
        if status == "parameter-error":
            raise PermanentError(
                f"postal parameter error: {short_text(data.get('message'))}",
                provider=self.name,
                status_code=status_code,
                provider_code="parameter-error",
            )
        # HTTP 200 without a recognisable status: Postal may have accepted the message.
        raise UnknownOutcomeError(
            "postal answer has no recognisable status", provider=self.name, status_code=status_code
        )

    def classify_status(
        self, response: httpx.Response, message: str, *, provider_code: str | None = None
    ) -> DeliveryError:
        # Postal itself always answers 200 (docs/providers/postal.md §4.1): any other status comes
        # from a proxy or a crash and is transient (docs/providers/postal.md §4.7 [INFERRED]),
        # except a 429, throttled as everywhere.
        if response.status_code == 429:
            return super().classify_status(response, message, provider_code=provider_code)
        return TransientError(
            message,
            provider=self.name,
            status_code=response.status_code,
            provider_code=provider_code,
            retry_after_s=self.retry_after_s(response),
        )

    def _success(
        self, data: dict[str, Any], status_code: int, message: EmailMessage
    ) -> SendOutcome:
        messages = data.get("messages")
        ids: dict[str, str] = {}
        if isinstance(messages, dict):
            for address, item in messages.items():
                if not isinstance(item, dict):
                    continue
                message_id = provider_id(item.get("id"))
                if message_id is not None:
                    ids[str(address)] = message_id
        if not ids:
            # "success" without per-recipient ids (docs/providers/postal.md §4.2): accepted, but
            # nothing to record.
            raise UnknownOutcomeError(
                "postal success answer has no message ids",
                provider=self.name,
                status_code=status_code,
            )
        warnings = (PREVIEW_TEXT_WARNING,) if message.preview_text is not None else ()
        return SendOutcome(provider=self.name, provider_message_ids=ids, warnings=warnings)

    def _error(self, data: dict[str, Any], status_code: int) -> DeliveryError:
        code = data.get("code")
        # DeliveryError scrubs its message but not provider_code: scrub it here.
        code_text = scrub(code[:100]) if isinstance(code, str) and code else "unknown"
        # ServerSuspended has no message (docs/providers/postal.md §4.1); the code alone is enough
        # then.
        text = short_text(data.get("message")) or code_text
        # PERMANENT_CODES and any unknown code are permanent: resending an unexplained refusal
        # would only repeat it (docs/providers/postal.md §4.7).
        error_type: type[DeliveryError] = (
            ConfigurationError if code_text in CONFIG_CODES else PermanentError
        )
        return error_type(
            f"postal error {code_text}: {text}",
            provider=self.name,
            status_code=status_code,
            provider_code=code_text,
        )

    # -- status lookup (docs/providers/postal.md §4.4) ---------------------------------------------

    def lookup_status(
        self, targets: list[LookupTarget], gate: Gate | None = None
    ) -> list[DeliveryEvent]:
        """``messages/message`` with the ``status`` expansion for each target (one per request,
        docs/providers/postal.md §4.4); for a status that is not a plain success,
        ``messages/deliveries`` too, whose last entry's ``details`` is the reason (a hold's reason,
        a bounce's SMTP answer)."""
        events: list[DeliveryEvent] = []
        for target in targets:
            message_id = _lookup_id(target.provider_message_id)
            if message_id is None:
                events.append(
                    lookup_event(
                        self.name, target, EventType.UNKNOWN, status="bad id", occurred_at=None
                    )
                )
                continue
            if gate is not None:
                gate()
            data = self._lookup_answer(
                self.transmit(self._lookup_request("message", message_id, ["status"]))
            )
            events.append(self._status_event(target, data, message_id, gate))
        return events

    def _lookup_request(
        self, what: str, message_id: int, expansions: list[str] | None = None
    ) -> httpx.Request:
        payload: dict[str, Any] = {"id": message_id}
        if expansions is not None:
            payload["_expansions"] = expansions
        headers = {"X-Server-API-Key": self._api_key}
        return self.post_json(f"api/v1/messages/{what}", payload, headers)

    def _lookup_answer(self, response: httpx.Response) -> Any:
        """The ``data`` of a lookup answer; ``None`` for ``MessageNotFound``; an error else."""
        if response.status_code != 200:
            raise self.classify_status(response, f"postal answered HTTP {response.status_code}")
        body = self.json_object(response)
        status = body.get("status")
        data = body.get("data")
        if status == "success":
            return data
        if status == "error" and isinstance(data, dict) and data.get("code") == "MessageNotFound":
            return None
        if status == "error":
            raise self._error(data if isinstance(data, dict) else {}, response.status_code)
        raise TransientError(
            "postal lookup answer has no recognisable status",
            provider=self.name,
            status_code=response.status_code,
        )

    @classmethod
    def suppression_reason(cls, event: DeliveryEvent) -> Reason | None:
        # Postal holds a message to a recipient on its own suppression list and says so only in
        # the Held delivery's details: "Recipient (…) is on the suppression list (reason: too
        # many hard fails)" (docs/providers/postal.md §4.5). It adds recipients there after hard
        # fails, so the hold is a hard bounce for every other provider. A send limit or a
        # holding credential is a hold too, and says nothing about the recipient.
        if event.type is EventType.HELD and SUPPRESSION_HOLD in (event.reason or "").lower():
            return "hard_bounce"
        return None

    def parse_status(self, target: LookupTarget, data: Any) -> tuple[EventType, Any, Any]:
        """(type, Postal's status word, its time) from a ``messages/message`` ``data``."""
        if data is None:
            return EventType.UNKNOWN, "MessageNotFound", None
        block = data.get("status") if isinstance(data, dict) else None
        if not isinstance(block, dict):
            return EventType.UNKNOWN, None, None
        word = block.get("status")
        kind = (
            POSTAL_STATUSES.get(word, EventType.UNKNOWN)
            if isinstance(word, str)
            else (EventType.UNKNOWN)
        )
        if kind is EventType.QUEUED and block.get("held") is True:
            kind = EventType.HELD
        return kind, word, block.get("last_delivery_attempt")

    def _status_event(
        self, target: LookupTarget, data: Any, message_id: int, gate: Gate | None
    ) -> DeliveryEvent:
        kind, word, when = self.parse_status(target, data)
        reason: str | None = None
        if kind in NEEDS_DETAILS:
            if gate is not None:
                gate()
            found = self._lookup_answer(
                self.transmit(self._lookup_request("deliveries", message_id))
            )
            reason, later = last_delivery(found)
            when = later if later is not None else when
        return lookup_event(
            self.name, target, kind, status=word, occurred_at=_time(when), reason=reason
        )


# docs/providers/postal.md §4.4 message statuses; the mapping follows django-anymail's for the
# webhook words (docs/providers/postal.md §4.6): Sent → delivered (handed to the recipient's
# server), SoftFail → deferred, HardFail → failed, Held → held. ``Error`` is an internal error
# Postal retries (deferred); ``HoldCancelled`` means it will never be sent (failed). Anything else
# is ``unknown``.
POSTAL_STATUSES: dict[str, EventType] = {
    "Pending": EventType.QUEUED,
    "Sent": EventType.DELIVERED,
    "SoftFail": EventType.DEFERRED,
    "HardFail": EventType.FAILED,
    "Held": EventType.HELD,
    "Bounced": EventType.BOUNCED,
    "HoldCancelled": EventType.FAILED,
    "Error": EventType.DEFERRED,
}
SUPPRESSION_HOLD = "is on the suppression list"
"""In a ``Held`` delivery's details: Postal's own suppression list holds the recipient."""
NEEDS_DETAILS = frozenset({EventType.DEFERRED, EventType.FAILED, EventType.HELD, EventType.BOUNCED})
MAX_DELIVERIES = 100


def last_delivery(data: Any) -> tuple[str | None, Any]:
    """The reason (``details``, scrubbed by the event) and time of the last delivery entry."""
    if not isinstance(data, list):
        return None, None
    for entry in reversed(data[:MAX_DELIVERIES]):
        if isinstance(entry, dict):
            details = entry.get("details")
            return (details if isinstance(details, str) else None), entry.get("timestamp")
    return None, None


def _lookup_id(value: str) -> int | None:
    """Postal's per-recipient message ids are integers (docs/providers/postal.md §4.2
    ``messages[rcpt].id``)."""
    return int(value) if value.isdigit() and len(value) < 19 else None


def _time(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


DRIVER = PostalDriver
"""This module's provider, as the registry (:mod:`worker.providers`) finds it."""
