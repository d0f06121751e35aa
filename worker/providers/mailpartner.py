"""Mail Partner: ``POST /send`` on the Partner platform; docs/providers/mailpartner.md §2.

Same envelope as SMS Partner (``success``/``code``, ``apiKey`` in the body), see
:mod:`worker.providers.partner`. Differences that matter here: the body is ``htmlContent`` only,
recipients are nested under ``params.to``, attachment file names go without their extension,
and the success id is ``messageId`` in camelCase (docs/providers/mailpartner.md §2.2).
"""

from __future__ import annotations

import html
import posixpath
import re
from typing import Any, ClassVar

import httpx

from worker.errors import DeliveryError, PermanentError, ThrottledError
from worker.models import EmailMessage
from worker.providers._util import address_object
from worker.providers.base import Gate, RuleViolation, SendContext, SendOutcome
from worker.providers.lookup import LookupTarget, lookup_event, mask_recipient, status_type
from worker.providers.partner import COMMON_CODES, PartnerDriver
from worker.stores.limiter import Limit
from worker.tracking.events import DeliveryEvent, EventType

__all__ = ["MailPartnerDriver", "text_to_html", "unsent_fields"]

# docs/providers/mailpartner.md §2.3 "Email sending" codes, on top of the shared ones
# (1/3/10/20/30/40/96 configuration, 11 account, 14 unsubscribed, 500 queue problem). Classification
# [INFERRED]: 429/500 transient, 11 account, 14 a suppression, the rest permanent.
MAIL_CODES: dict[int, type[DeliveryError]] = {
    **COMMON_CODES,
    2: PermanentError,  # mail content required
    4: PermanentError,  # sender email required
    5: PermanentError,  # sender name empty
    8: PermanentError,  # attachment URL required
    9: PermanentError,  # attachment extension not allowed
    15: PermanentError,  # already in the sending list
    16: PermanentError,  # attachment name empty
    17: PermanentError,  # too many recipients
    18: PermanentError,  # recipient email required
    19: PermanentError,  # recipient email invalid
    21: PermanentError,  # recipient name empty
    22: PermanentError,  # recipient list required
    23: PermanentError,  # reply-to email required
    24: PermanentError,  # reply-to email invalid
    25: PermanentError,  # reply-to name empty
    45: PermanentError,  # date and time validation (45-49)
    46: PermanentError,
    47: PermanentError,
    48: PermanentError,
    49: PermanentError,
    50: PermanentError,  # max 500 mails
    55: PermanentError,  # no default price
    90: PermanentError,  # malformed JSON
    429: ThrottledError,  # 2000 requests/minute/IP; PartnerDriver.classify defaults to 60 s
}

TAG = re.compile(r"[a-z0-9_\-]{3,20}")
"""docs/providers/mailpartner.md §2.2: tags are lowercase, no spaces, 3-20 characters."""
MAX_ATTACHMENTS = 3
MAX_ATTACHMENT_BYTES = 5 * 1024 * 1024
"""docs/providers/mailpartner.md §2.2: at most 3 attachments of 5 MB each."""


def text_to_html(text: str) -> str:
    """A plain-text body as HTML: escaped, line breaks kept as ``<br>``.

    ``htmlContent`` is the only documented body field and it is required
    (docs/providers/mailpartner.md §2.2), so a text-only message must become HTML; escaping keeps
    ``<``/``&`` in the text from being read as markup.
    """
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    return html.escape(normalised).replace("\n", "<br>\n")


class MailPartnerDriver(PartnerDriver[EmailMessage]):
    name = "mailpartner"
    # No batching (Driver.batch_limit stays 0), though /send takes up to 500 recipients
    # (docs/providers/mailpartner.md §2.2): one subject and body for all (``variables`` are per
    # request), one ``messageId`` and no per-recipient answer, so one refused address (codes 14, 19)
    # refuses or hides the others; whether each recipient sees the others is not documented; and
    # there is no status by tag (docs/providers/mailpartner.md §2.4 [NOT FOUND]), so a lost answer
    # could not be reconciled per message.
    channel = "email"
    default_base_url = "https://api.mailpartner.fr/v1"
    codes: ClassVar = MAIL_CODES
    balance_field = "creditMail"
    # docs/providers/mailpartner.md §2.2: 2000 requests/minute/IP, code 429 beyond.
    rate_limits = {"send": (Limit(2000, 60.0),)}
    # docs/providers/mailpartner.md §2.2 "Status by message": GET /bulk-status?messageId= answers
    # every recipient of one send; the 2000/min of docs/providers/mailpartner.md §2.3 is per IP, so
    # lookups draw on the send bucket.
    status_lookup = True

    @classmethod
    def lookup_groups(cls, targets: list[LookupTarget]) -> list[list[LookupTarget]]:
        # one request per send (docs/providers/mailpartner.md §2.2)
        return lookup_groups_by_message(targets)

    def lookup_status(
        self, targets: list[LookupTarget], gate: Gate | None = None
    ) -> list[DeliveryEvent]:
        """``GET /bulk-status?messageId=`` (docs/providers/mailpartner.md §2.2): every recipient of
        one send."""
        if not targets:
            return []
        if gate is not None:
            gate()
        request = self.get_request("bulk-status", messageId=targets[0].provider_message_id)
        return self.parse_lookup(self.transmit(request), targets)

    def parse_lookup(
        self, response: httpx.Response, targets: list[LookupTarget]
    ) -> list[DeliveryEvent]:
        try:
            data = self.envelope(response)
        except PermanentError as exc:
            if exc.provider_code == "4":  # message not found (yet): ask again later
                return []
            raise
        return parse_bulk_status(self.name, data, targets)

    @classmethod
    def check_message(cls, message: EmailMessage) -> None:
        # docs/providers/mailpartner.md §2.2: params.to <= 500 (the channel shape); no documented
        # cc/bcc/headers/templates.
        for name in ("cc", "bcc"):
            if getattr(message, name):
                raise RuleViolation(name, "mailpartner has no cc/bcc; add the addresses to `to`")
        if message.template is not None:
            raise RuleViolation("template", "mailpartner has no stored templates; send html/text")
        if message.headers:
            raise RuleViolation("headers", "mailpartner does not accept custom headers")
        if len(message.attachments) > MAX_ATTACHMENTS:
            raise RuleViolation("attachments", "mailpartner accepts at most 3 attachments")
        for i, att in enumerate(message.attachments):
            if att.size_bytes > MAX_ATTACHMENT_BYTES:
                raise RuleViolation(f"attachments.{i}", "mailpartner accepts at most 5 MB each")
        if message.tag is not None and not TAG.fullmatch(message.tag):
            raise RuleViolation("tag", "mailpartner tags are 3-20 lowercase chars, no spaces")

    def build_request(self, message: EmailMessage, ctx: SendContext) -> httpx.Request:
        if message.html:
            body = message.html
        elif message.text:
            body = text_to_html(message.text)
        else:
            raise PermanentError("mailpartner needs html or text content", provider=self.name)
        payload: dict[str, Any] = {
            "subject": message.subject,
            "htmlContent": body,
            # docs/providers/mailpartner.md §2.2: the field table says `to`, but every example nests
            # it under `params`.
            "params": {"to": [address_object(a) for a in message.to]},
        }
        # The sender is not a documented request field (docs/providers/mailpartner.md §2.2, [NOT
        # FOUND]): it is most likely configured on the account, so message.from_ is not sent, and
        # neither is preview_text (no field). Refusing them at enqueue would stop routing email to
        # Mail Partner, so the result reports each as a warning instead (unsent_fields). Custom
        # headers are refused at enqueue (check_message).
        if message.reply_to is not None:
            payload["replyTo"] = address_object(message.reply_to)
        if message.attachments:
            payload["attachments"] = [
                {
                    "base64Content": a.content,
                    "contentType": a.content_type,
                    # docs/providers/mailpartner.md §2.2: "the filename is given without extension".
                    "filename": posixpath.splitext(a.filename)[0],
                }
                for a in message.attachments
            ]
        # check_message refuses a tag outside TAG (the whole message would be refused,
        # docs/providers/mailpartner.md §2.2).
        if message.tag is not None:
            payload["tag"] = message.tag
        # docs/providers/mailpartner.md §2.2 schedule fields (worker.scheduling)
        payload.update(self.scheduled_payload(ctx))
        return self.post_json("send", self.auth_body(payload))

    def parse_response(
        self, response: httpx.Response, message: EmailMessage, ctx: SendContext
    ) -> SendOutcome:
        data = self.envelope(response)
        # docs/providers/mailpartner.md §2.2: camelCase `messageId` (unlike SMS Partner's
        # `message_id`); accept either.
        return self.one_id_outcome(
            response,
            data,
            data.get("messageId", data.get("message_id")),
            (a.email for a in message.to),
            id_field="messageId",
            warnings=unsent_fields(message),
        )


# docs/providers/mailpartner.md §2.2: the status values are [NOT FOUND]; S-MIS assumes these
# [READ-3P]. Anything else is ``unknown`` (kept in the history, never applied), so a new word cannot
# fail a delivery.
MAIL_STATUSES: dict[str, EventType] = {
    "delivered": EventType.DELIVERED,
    "bounced": EventType.BOUNCED,
    "opened": EventType.OPENED,
    "clicked": EventType.CLICKED,
    "failed": EventType.FAILED,
    "pending": EventType.QUEUED,
    # a cancelled scheduled mail (docs/providers/mailpartner.md §2.2 message-cancel)
    "cancelled": EventType.FAILED,
}
MAX_STATUS_ITEMS = 1000
"""A send has at most 500 recipients (docs/providers/mailpartner.md §2.2); a longer list is read no
further."""


def lookup_groups_by_message(targets: list[LookupTarget]) -> list[list[LookupTarget]]:
    groups: dict[str, list[LookupTarget]] = {}
    for t in targets:
        groups.setdefault(t.provider_message_id, []).append(t)
    return list(groups.values())


def parse_bulk_status(
    provider: str, data: dict[str, Any], targets: list[LookupTarget]
) -> list[DeliveryEvent]:
    """Events from a ``/bulk-status`` envelope (already checked) for one send's targets."""
    items = data.get("StatutResponseList")
    if not isinstance(items, list):
        return []
    by_recipient = {t.recipient: t for t in targets}
    events: list[DeliveryEvent] = []
    for item in items[:MAX_STATUS_ITEMS]:
        if not isinstance(item, dict):
            continue
        email = item.get("email")
        target = by_recipient.pop(mask_recipient(email), None) if isinstance(email, str) else None
        if target is None and len(targets) == 1 and len(items) == 1:
            target = by_recipient.pop(targets[0].recipient, None)
        if target is None:
            continue
        status = item.get("status")
        kind = status_type(MAIL_STATUSES, status)
        reason = status if kind in (EventType.BOUNCED, EventType.FAILED) else None
        events.append(
            lookup_event(
                provider,
                target,
                kind,
                status=status,
                occurred_at=_date(item.get("date")),
                reason=reason if isinstance(reason, str) else None,
            )
        )
    return events


def _date(value: Any) -> float | None:
    """``date`` is an epoch-seconds string in the example (docs/providers/mailpartner.md §2.2)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, str) and value.strip().isdigit() and len(value) < 16:
        return float(value)
    return None


def unsent_fields(message: EmailMessage) -> tuple[str, ...]:
    """The caller's fields Mail Partner does not receive, and why (reported in the result)."""
    warnings: list[str] = []
    if message.from_ is not None:
        warnings.append(
            "from: not sent; Mail Partner has no documented sender field "
            "(docs/providers/mailpartner.md §2.2), the sender configured on the account is used"
        )
    if message.html and message.text:
        warnings.append(
            "text: not sent; Mail Partner takes one HTML body "
            "(htmlContent, docs/providers/mailpartner.md §2.2) and html was given"
        )
    if message.preview_text is not None:
        warnings.append(
            "preview_text: not sent; Mail Partner has no preheader field "
            "(docs/providers/mailpartner.md §2.2)"
        )
    return tuple(warnings)


DRIVER = MailPartnerDriver
"""This module's provider, as the registry (:mod:`worker.providers`) finds it."""
