"""SMS Partner: ``POST /send`` (one text, many numbers); docs/providers/smspartner.md §1."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from datetime import datetime
from typing import Any, ClassVar

import httpx

from worker.errors import (
    DeferredError,
    DeliveryError,
    PermanentError,
    ThrottledError,
    UnknownOutcomeError,
)
from worker.models import SmsMessage, sms_units
from worker.providers._util import as_int, provider_id
from worker.providers.base import Gate, SendContext, SendOutcome
from worker.providers.lookup import LookupTarget, lookup_event, status_type
from worker.providers.partner import COMMON_CODES, PROVIDER_TZ, PartnerDriver
from worker.tracking.events import DeliveryEvent, EventType

__all__ = ["SmsPartnerDriver"]

# docs/providers/smspartner.md §1.3, "SMS-send codes"; the class column there is [INFERRED].
SMS_CODES: dict[int, type[DeliveryError]] = {
    **COMMON_CODES,
    2: PermanentError,  # phoneNumbers required
    4: PermanentError,  # message not found
    9: PermanentError,  # validation constraints, details in error[]
    13: PermanentError,  # no default price: unroutable destination
    15: PermanentError,  # number already in the list
    # 22/23: marketing SMS outside the legal window (docs/providers/smspartner.md §1.2.2) or on
    # Sundays/holidays (docs/providers/smspartner.md §1.3, "deferrable"). Only this message waits,
    # until the next allowed slot (partner.next_marketing_slot); it is not a provider-wide throttle.
    22: DeferredError,
    23: DeferredError,
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


MAX_BATCH = 500
"""Numbers per ``/send``, entries per ``/bulk-send`` (docs/providers/smspartner.md §1.2.2, §1.2.3;
code 50 beyond)."""

PER_NUMBER_CODES = frozenset({9, 13, 14, 22, 23, 500, 992})
"""Codes with which ``/send`` may refuse a whole request for one number's sake
(docs/providers/smspartner.md §1.3): a validation error, an unroutable number, a STOP-listed number,
a marketing refusal, the queue failure. ``992`` (unauthorized sender) concerns the sender, but
retrying per entry is harmless: nothing was accepted."""


def _number_key(value: Any) -> str | None:
    """A number compared by its digits, national French ``0X…`` as ``33X…``
    (docs/providers/smspartner.md §1.2.2 takes both forms); ``None`` when it is not a string of a
    number."""
    if not isinstance(value, str):
        return None
    digits = "".join(ch for ch in value[:40] if ch.isdigit())
    if not digits:
        return None
    if value.strip().startswith("0") and not value.strip().startswith("00") and len(digits) == 10:
        return "33" + digits[1:]
    return digits.removeprefix("00") if value.strip().startswith("00") else digits


def encode_text(text: str) -> str:
    """Apply the provider's in-band markup (docs/providers/smspartner.md §1.2.2).

    A line break is written ``:br:`` and the euro sign ``:euro:``; ``"`` is escaped by JSON.
    """
    return text.replace("\r\n", "\n").replace("\n", ":br:").replace("€", ":euro:")


MULTI_STATUS_MAX = 500
"""docs/providers/smspartner.md §1.2.8: multi-status takes at most 500 pairs."""

# docs/providers/smspartner.md §1.4: the status endpoints answer Delivered / Not delivered /
# Waiting; the error-code page lists the lower-case forms and ``ko`` ("not sent, contact support");
# S-MIS also maps ``Sent``; the operator DLR codes (DELIVRD, UNDELIV, EXPIRED, REJECTD...) may show
# through. Anything else (free text such as "Numéro introuvable") is ``unknown``: kept, never
# applied.
SMS_STATUSES: dict[str, EventType] = {
    "delivered": EventType.DELIVERED,
    "delivrd": EventType.DELIVERED,
    "not delivered": EventType.FAILED,
    "undeliv": EventType.FAILED,
    "expired": EventType.FAILED,
    "ko": EventType.FAILED,
    "rejectd": EventType.REJECTED,
    # the sandbox's word for a cancelled send (docs/providers/smspartner.md §1.2.6)
    "cancelled": EventType.FAILED,
    "waiting": EventType.QUEUED,
    "pending": EventType.QUEUED,
    "enroute": EventType.SENT,
    "acceptd": EventType.SENT,
    "sent": EventType.SENT,
}


class SmsPartnerDriver(PartnerDriver[SmsMessage]):
    name = "smspartner"
    channel = "sms"
    default_base_url = "https://api.smspartner.fr/v1"
    codes: ClassVar = SMS_CODES
    balance_field = "creditSms"
    supports_reconcile = True
    # No limit documented for /v1/send (429 is documented only for HLR/lookup,
    # docs/providers/smspartner.md §1.3); a 429 would still be honoured through the limiter's hold.
    rate_limits = {"send": ()}
    # Status lookups (docs/providers/smspartner.md §1.2.7, §1.2.8): up to 500 (number, message id)
    # pairs per /multi-status; no limit is documented for them (the 360/min of
    # docs/providers/smspartner.md §1.3 is HLR/number lookup), so they share the send bucket's
    # (empty) budget.
    status_lookup = True
    status_batch_size = MULTI_STATUS_MAX

    @classmethod
    def reconcile_tag(cls, message: SmsMessage, delivery_id: str) -> str | None:
        # Tags: <= 20 chars, lowercase, no spaces (docs/providers/smspartner.md §1.2.2). The
        # caller's tag reaches the provider as set (validated at enqueue); without one, a tag unique
        # per delivery makes an unknown outcome reconcilable by /bulk-status-by-tag
        # (docs/providers/smspartner.md §1.5).
        if message.tag is not None:
            return message.tag
        return "dw" + delivery_id.replace("-", "")[:18].lower()

    def build_request(self, message: SmsMessage, ctx: SendContext) -> httpx.Request:
        payload: dict[str, Any] = {
            "phoneNumbers": ",".join(message.to),
            "message": encode_text(message.text),
        }
        if message.sender:
            payload["sender"] = message.sender
        # The caller's tag reaches the provider as set (docs/providers/smspartner.md §1.2.2);
        # without one, the delivery's own tag; the same on every attempt, so a late acceptance is
        # found by tag (docs/providers/smspartner.md §1.5).
        tag = message.tag or ctx.tag
        if tag:
            payload["tag"] = tag
        if ctx.callback_url:
            # docs/providers/smspartner.md §1.4: the DLR callback; its payload is [NOT FOUND], so
            # the receiver takes it as a hint only (worker.tracking.callbacks) and the status lookup
            # decides.
            payload["urlDlr"] = ctx.callback_url
        if not sms_units(message.text)[1]:
            # Outside the GSM 7-bit alphabet: without the flag the provider substitutes
            # characters (docs/providers/smspartner.md §1.2.2); billed 70 per SMS, 67 per part
            # (models.sms_segments).
            payload["isUnicode"] = 1
        # docs/providers/smspartner.md §1.2.2 schedule fields (worker.scheduling)
        payload.update(self.scheduled_payload(ctx))
        return self.post_json(
            "send", self.auth_body(payload), headers={"Cache-Control": "no-cache"}
        )

    def parse_response(
        self, response: httpx.Response, message: SmsMessage, ctx: SendContext
    ) -> SendOutcome:
        data = self.envelope(response)
        # One message_id covers every number of the send (docs/providers/smspartner.md §1.2.2);
        # without it, the pipeline reconciles by tag before any resend
        # (docs/providers/smspartner.md §1.5).
        return self.one_id_outcome(
            response, data, data.get("message_id"), message.to, id_field="message_id"
        )

    # docs/providers/smspartner.md §1.2.2: /send takes up to 500 numbers for one text;
    # docs/providers/smspartner.md §1.2.3: /bulk-send up to 500 entries, each with its own text,
    # answered per entry (SMSResponse_List); docs/providers/smspartner.md §1.2.10 finds a lost
    # batch's numbers by its tag.
    batch_limit = MAX_BATCH

    @classmethod
    def batch_key(cls, message: SmsMessage) -> Hashable | None:
        """Single-number messages without the caller's tag batch together when sender and
        encoding match (the request-wide options, docs/providers/smspartner.md §1.2.2/§1.2.3). A
        message to several numbers is one ``/send`` already; a caller's tag must reach the provider
        as set, and one request carries one tag, so those go alone."""
        if len(message.to) != 1 or message.tag is not None:
            return None
        return (message.sender or "", not sms_units(message.text)[1])

    def build_batch_request(
        self, messages: Sequence[SmsMessage], tag: str, *, bulk: bool = False
    ) -> httpx.Request:
        """``/send`` when every message has the same text (one request, one ``message_id``),
        else ``/bulk-send`` (docs/providers/smspartner.md §1.2.3, one answer per entry).

        ``/send`` answers one envelope for all its numbers: when it refuses the request with a
        code one number can cause (a STOP number, docs/providers/smspartner.md §1.2.12 code 14; a
        marketing refusal 22/23; the queue failure 500; a validation code 9), nothing was accepted
        (``success`` false) and which number caused it is not machine-readable, so every entry
        answers ``None`` and the caller asks again through ``/bulk-send``, which answers per
        entry."""
        first = messages[0]
        payload: dict[str, Any] = {"tag": tag}
        if first.sender:
            payload["sender"] = first.sender
        if not sms_units(first.text)[1]:
            payload["isUnicode"] = 1
        numbers = [m.to[0] for m in messages]
        same_text = len({m.text for m in messages}) == 1
        if same_text and not bulk and len(messages) > 1:
            payload |= {"phoneNumbers": ",".join(numbers), "message": encode_text(first.text)}
            path = "send"
        else:
            entries = [
                {"phoneNumber": n, "message": encode_text(m.text)}
                for n, m in zip(numbers, messages, strict=True)
            ]
            payload["SMSList"] = entries
            path = "bulk-send"
        return self.post_json(path, self.auth_body(payload), headers={"Cache-Control": "no-cache"})

    def parse_batch_response(
        self, response: httpx.Response, messages: Sequence[SmsMessage], request: httpx.Request
    ) -> list[SendOutcome | DeliveryError | None]:
        numbers = [m.to[0] for m in messages]
        if request.url.path.endswith("/send"):
            return self._send_answer(response, numbers)
        return self._bulk_answer(response, numbers)

    def _send_answer(
        self, response: httpx.Response, numbers: list[str]
    ) -> list[SendOutcome | DeliveryError | None]:
        try:
            data = self.envelope(response)
        except DeliveryError as exc:
            if as_int(exc.provider_code) in PER_NUMBER_CODES:
                return [None] * len(numbers)
            raise
        whole = self.one_id_outcome(
            response, data, data.get("message_id"), numbers, id_field="message_id"
        )
        # One cost for the request: the same text per number, so an even share (destination
        # prices may differ; [INFERRED], docs/providers/smspartner.md §1.2.2 gives only the total).
        return list(self.per_number(whole, numbers))

    def _bulk_answer(
        self, response: httpx.Response, numbers: list[str]
    ) -> list[SendOutcome | DeliveryError | None]:
        """Per entry, matched by number (a batch never holds a number twice). An entry the
        answer does not account for exactly once is an unknown outcome for that message only
        (reconciled by tag); the others stand."""
        try:
            data = self.envelope(response)
        except DeliveryError as exc:
            # The sandbox (and, [INFERRED], the provider) answers the first entry's code when
            # no entry was accepted: nothing was, so each message is sent again on its own.
            if len(numbers) > 1 and as_int(exc.provider_code) in PER_NUMBER_CODES:
                return [None] * len(numbers)
            raise
        items = data.get("SMSResponse_List")
        message_id = provider_id(data.get("message_id"))
        currency = data.get("currency") if isinstance(data.get("currency"), str) else None
        by_number: dict[str, list[dict[str, Any]]] = {}
        if isinstance(items, list):
            for item in items[: 4 * MAX_BATCH]:
                if isinstance(item, dict):
                    key = _number_key(item.get("phoneNumber"))
                    if key is not None:
                        by_number.setdefault(key, []).append(item)
        out: list[SendOutcome | DeliveryError | None] = []
        for number in numbers:
            found = by_number.get(_number_key(number) or "", [])
            out.append(self._bulk_item(response, number, found, message_id, currency))
        return out

    def _bulk_item(
        self,
        response: httpx.Response,
        number: str,
        found: list[dict[str, Any]],
        message_id: str | None,
        currency: str | None,
    ) -> SendOutcome | DeliveryError:
        if len(found) != 1:
            return UnknownOutcomeError(
                f"smspartner bulk-send answer lists this number {len(found)} times",
                provider=self.name,
                status_code=response.status_code,
            )
        item = found[0]
        success, code = item.get("success"), as_int(item.get("code"))
        if success is True and code in (200, None):
            # The request's one message_id covers this entry, with the entry's own cost.
            priced = {"cost": item.get("cost"), "currency": currency}
            try:
                return self.one_id_outcome(
                    response, priced, message_id, [number], id_field="message_id"
                )
            except UnknownOutcomeError as exc:
                return exc
        if success is False and code is not None and code != 200:
            text = item.get("message")
            return self.classify(code, text[:200] if isinstance(text, str) else "", response)
        return UnknownOutcomeError(
            "smspartner bulk-send entry has no usable success/code",
            provider=self.name,
            status_code=response.status_code,
        )

    def _reconcile_batch(self, message: SmsMessage, tag: str) -> SendOutcome | None:
        """A batch request's tag is unique to that request and a batch never holds a number
        twice, so this message's number listed under the tag is this message's send; the one
        top-level ``message_id`` is that request's (docs/providers/smspartner.md §1.2.9,
        §1.2.10)."""
        try:
            response = self.transmit(self.get_request("bulk-status-by-tag", tag=tag))
            data = self.envelope(response)
        except PermanentError as exc:
            if exc.provider_code == "4":
                return None
            raise
        items = data.get("StatutResponse_List")
        if items is None:
            items = []
        if not isinstance(items, list):
            raise UnknownOutcomeError(
                "smspartner bulk-status-by-tag answer has no recipient list", provider=self.name
            )
        wanted = _number_key(message.to[0])
        for item in items:
            if isinstance(item, dict) and _number_key(item.get("phoneNumber")) == wanted:
                raw = item.get("messageId")
                text = provider_id(data.get("message_id") if raw is None else raw)
                ids = {message.to[0]: text} if text is not None else {}
                return SendOutcome(provider=self.name, provider_message_ids=ids)
        total = as_int(data.get("total"))
        if total is not None and total > len(items):
            raise UnknownOutcomeError(
                "smspartner bulk-status-by-tag answer has more pages", provider=self.name
            )
        return None

    def reconcile(self, message: SmsMessage, ctx: SendContext) -> SendOutcome | None:
        """``GET /bulk-status-by-tag``: did an earlier attempt of this delivery get accepted?
        (docs/providers/smspartner.md §1.5)

        The answer lists the recipients of every send under the tag, with one top-level
        ``message_id`` and no per-item id (docs/providers/smspartner.md §1.2.9, §1.2.10). With the
        delivery's own tag (unique per delivery) any listed number of this message is this
        delivery's send. A tag the caller chose may also name older or other sends
        (docs/providers/smspartner.md §1.5 wants a *unique* tag to reconcile), so a send counts as
        this delivery's only when it lists *every* number of the message (one ``/send`` covers them
        all) dated no earlier than the delivery's first attempt (``ctx.sent_after``, less a clock
        margin); an undated item cannot be attributed. The service additionally refuses to trust the
        lookup when another delivery of ours used the same tag for one of these numbers in that
        window. Wrongly "not found" means a resend (at most one more copy); wrongly "found" would
        report a message ``sent`` that was not.
        """
        for tag in reversed(ctx.batch_tags):
            batched = self._reconcile_batch(message, tag)
            if batched is not None:
                return batched
        if not ctx.tag:
            return None
        try:
            response = self.transmit(self.get_request("bulk-status-by-tag", tag=ctx.tag))
            data = self.envelope(response)
        except PermanentError as exc:
            if exc.provider_code == "4":
                return None  # "message not found": nothing was accepted under this tag
            raise
        items = data.get("StatutResponse_List")
        if items is None:
            items = []
        if not isinstance(items, list):
            raise UnknownOutcomeError(
                "smspartner bulk-status-by-tag answer has no recipient list", provider=self.name
            )
        wanted = set(message.to)
        matched, foreign = _ours(items, wanted, ctx)
        found = bool(matched) and (set(matched) == wanted or not ctx.tag_is_callers)
        if not found:
            total = as_int(data.get("total"))
            if total is not None and total > len(items):
                # More pages than we can read (the page parameter is [NOT FOUND],
                # docs/providers/smspartner.md §1.2.10): "not on the first page" is not "not sent".
                raise UnknownOutcomeError(
                    "smspartner bulk-status-by-tag answer has more pages", provider=self.name
                )
            return None
        # The one top-level id is this send's only when nothing else is listed under the tag.
        fallback = None if foreign else data.get("message_id")
        ids: dict[str, str] = {}
        for number, item_id in matched.items():
            # items: no id (docs/providers/smspartner.md §1.2.9)
            text = provider_id(fallback if item_id is None else item_id)
            if text is not None:
                ids[number] = text
        return SendOutcome(provider=self.name, provider_message_ids=ids)

    @classmethod
    def lookup_ref(cls, recipient: str) -> str | None:
        # both status endpoints ask by number (docs/providers/smspartner.md §1.2.7, §1.2.8)
        return recipient

    def lookup_status(
        self, targets: list[LookupTarget], gate: Gate | None = None
    ) -> list[DeliveryEvent]:
        """``GET /message-status`` for one recipient (docs/providers/smspartner.md §1.2.7, the field
        is ``statut``), else ``POST /multi-status`` with up to 500 pairs
        (docs/providers/smspartner.md §1.2.8, the field is ``status``)."""
        asked = [t for t in targets if t.lookup][:MULTI_STATUS_MAX]
        if not asked:
            return []
        if gate is not None:
            gate()
        if len(asked) == 1:
            (target,) = asked
            request = self.get_request(
                "message-status",
                messageId=target.provider_message_id,
                phoneNumber=target.lookup or "",
            )
            return self.parse_message_status(self.transmit(request), target)
        pairs = [
            {"phoneNumber": t.lookup, "messageId": _wire_id(t.provider_message_id)} for t in asked
        ]
        request = self.post_json("multi-status", self.auth_body({"SMSStatut_List": pairs}))
        return self.parse_multi_status(self.transmit(request), asked)

    def parse_message_status(
        self, response: httpx.Response, target: LookupTarget
    ) -> list[DeliveryEvent]:
        try:
            data = self.envelope(response)
        except PermanentError as exc:
            if exc.provider_code == "4":  # message not found (yet): ask again later
                return [self._event(target, EventType.UNKNOWN, "not found", None)]
            raise
        status = data.get("statut", data.get("status"))
        return [self._event(target, status_type(SMS_STATUSES, status), status, data.get("date"))]

    def parse_multi_status(
        self, response: httpx.Response, targets: list[LookupTarget]
    ) -> list[DeliveryEvent]:
        data = self.envelope(response)
        items = data.get("StatutResponse_List")
        if not isinstance(items, list):
            raise UnknownOutcomeError(
                "smspartner multi-status answer has no StatutResponse_List", provider=self.name
            )
        wanted = {(t.provider_message_id, _digits(t.lookup)): t for t in targets}
        events: list[DeliveryEvent] = []
        for item in items[: len(targets) * 2]:
            if not isinstance(item, dict):
                continue
            key = (provider_id(item.get("messageId")) or "", _digits(item.get("phoneNumber")))
            target = wanted.pop(key, None)
            if target is None:
                continue  # not a pair we asked about
            status = item.get("status", item.get("statut"))
            if item.get("success") is False:
                # e.g. code 4 "Numéro introuvable" (docs/providers/smspartner.md §1.2.8): not known
                # (yet), never a failure.
                events.append(self._event(target, EventType.UNKNOWN, status, None))
                continue
            kind = status_type(SMS_STATUSES, status)
            events.append(self._event(target, kind, status, item.get("date")))
        return events

    def _event(
        self, target: LookupTarget, kind: EventType, status: Any, date: Any
    ) -> DeliveryEvent:
        reason = status if kind in (EventType.FAILED, EventType.REJECTED) else None
        return lookup_event(
            self.name,
            target,
            kind,
            status=status,
            occurred_at=_safe_epoch(date),
            reason=reason if isinstance(reason, str) else None,
        )


def _safe_epoch(value: Any) -> float | None:
    try:
        return _epoch(value)
    except (OverflowError, ValueError):
        return None


def _wire_id(message_id: str) -> int | str:
    """The send answers ``message_id`` as an integer and the samples post it so
    (docs/providers/smspartner.md §1.2.8)."""
    return int(message_id) if message_id.isdigit() and len(message_id) < 19 else message_id


def _digits(number: Any) -> str:
    """The last nine digits of a number: the provider may answer ``06…`` for ``+336…``."""
    if not isinstance(number, str | int) or isinstance(number, bool):
        return ""
    return "".join(c for c in str(number)[:40] if c.isdigit())[-9:]


def _ours(items: list[Any], wanted: set[str], ctx: SendContext) -> tuple[dict[str, Any], bool]:
    """The listed items that are this delivery's send (number → item id), and whether anything
    else is listed under the tag. Under the caller's tag an item must also be dated no earlier
    than the delivery's first attempt (see :meth:`SmsPartnerDriver.reconcile`)."""
    matched: dict[str, Any] = {}
    foreign = False
    for item in items:
        number = item.get("phoneNumber") if isinstance(item, dict) else None
        ours = isinstance(number, str) and number in wanted
        if ours and ctx.tag_is_callers:
            when = _epoch(item.get("date"))
            ours = (
                when is not None
                and ctx.sent_after is not None
                and when >= ctx.sent_after - RECONCILE_CLOCK_MARGIN_S
            )
        if ours:
            assert isinstance(number, str) and isinstance(item, dict)
            matched[number] = item.get("messageId")
        else:
            foreign = True
    return matched, foreign


RECONCILE_CLOCK_MARGIN_S = 5.0
"""Tolerance between our clock and the provider's when dating a send found by tag; the dates
are whole seconds (docs/providers/smspartner.md §1.2.9)."""


def _epoch(value: Any) -> float | None:
    """A status ``date``: epoch seconds (a string or a number) or ``"Y-m-d H:i:s"``
    (docs/providers/smspartner.md §1.2.7).

    [INFERRED] The provider does not state the time zone of the second form; it is French, so
    Paris time is assumed.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        parsed = datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return parsed.replace(tzinfo=PROVIDER_TZ).timestamp()


DRIVER = SmsPartnerDriver
"""This module's provider, as the registry (:mod:`worker.providers`) finds it."""
