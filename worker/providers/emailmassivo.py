"""EmailMassivo: ``POST /api/v1/external-mails/send[-by-template]``;
docs/providers/emailmassivo.md §5.

EmailMassivo is the only provider with first-class idempotency
(docs/providers/emailmassivo.md §5.5): every request carries ``idempotencyKey`` (stable across the
attempts of one delivery), so a resend after an unknown outcome returns the original ``uuid``
instead of sending again. Success is HTTP **200 or 201** with ``{"uuid"}``
(docs/providers/emailmassivo.md §5.4 corrected: the EmailMassivo page lists "200 OK — Email accepted
for processing" and answers a repeat 200 with the first uuid; RuSender's examples show 201). A
cc/bcc adds ``additionalRecipients`` to the answer: accepted ones get their own uuid, refused ones
are reported in :attr:`SendOutcome.rejected_recipients`. Errors are ``{"message", "statusCode"}``,
classified by HTTP status and, where the page lists several meanings for one status (404, 422), by
the message text (English or Russian).
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from worker.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentError,
    RecipientDeferredError,
    RecipientRejectedError,
    UnknownOutcomeError,
)
from worker.models import EmailMessage
from worker.providers._util import address_object, json_or_empty, provider_id, short_text
from worker.providers.base import Driver, RuleViolation, SendContext, SendOutcome
from worker.stores.limiter import Limit

__all__ = ["EmailMassivoDriver"]

MAX_REQUEST_BYTES = 5 * 1024 * 1024
"""docs/providers/emailmassivo.md §5.2: the whole request body, base64 attachments included."""

# docs/providers/emailmassivo.md §5.2 (RuSender limits, applied to EmailMassivo); one string keeps
# the list short.
FORBIDDEN_EXTENSIONS = frozenset(
    """ade adp apk appx appxbundle bat cab chm cmd com cpl diagcab diagcfg diagpack dll dmg ex ex_
    exe hta img ins iso isp jar jnlp js jse lib lnk mde msc msi msix msixbundle msp mst nsh pif ps1
    scr sct shb sys vb vbe vbs vhd vxd wsc wsf wsh xll""".split()  # noqa: SIM905
)

# Seed 003 ("422 Unprocessable Entity / Possible messages"), matched on lower-cased text; the
# Russian stems cover RuSender's wording ("отписался", "пожаловался", "не существует",
# "недоступен", "шаблон").
_TEMPLATE_MISSING = ("templatemailuser not found", "template not found", "шаблон")
_SUPPRESSED = ("unsubscribed", "complained", "doesn't exist", "does not exist", "not exist")
_SUPPRESSED_RU = ("отпис", "жалоб", "пожаловал", "не существует")
_UNAVAILABLE = ("unavailable", "недоступ")


class EmailMassivoDriver(Driver[EmailMessage]):
    name = "emailmassivo"
    channel = "email"
    default_base_url = "https://api.emailmassivo.com"
    supports_idempotency = True
    # docs/providers/emailmassivo.md §5.4: "no more than 10 requests per second from one IP", 429
    # beyond.
    rate_limits = {"send": (Limit(10, 1.0),)}

    @classmethod
    def check_message(cls, message: EmailMessage) -> None:
        # docs/providers/emailmassivo.md §5.2: a single `to` object; cc/bcc are single strings;
        # preheader <= 255.
        if len(message.to) != 1:
            raise RuleViolation("to", "emailmassivo sends to exactly one recipient per message")
        for name in ("cc", "bcc"):
            if len(getattr(message, name)) > 1:
                # The shape of several cc/bcc recipients is not documented
                # (docs/providers/emailmassivo.md §5.2, "strings, not arrays"): refuse rather than
                # guess a separator.
                raise RuleViolation(name, "emailmassivo accepts at most one address")
        if message.from_ is None:
            raise RuleViolation("from", "is required for emailmassivo")
        if message.template is not None:
            # docs/providers/emailmassivo.md §5.3: idTemplateMailUser is an integer. [0-9], not
            # str.isdigit(): "²" is a digit.
            tid = message.template.id
            if isinstance(tid, bool) or not re.fullmatch(r"[0-9]{1,18}", str(tid)) or not int(tid):
                raise RuleViolation(
                    "template.id", "emailmassivo template ids are positive integers"
                )
        _check_attachments(message)

    def build_request(self, message: EmailMessage, ctx: SendContext) -> httpx.Request:
        assert message.from_ is not None  # check_message (run by send) requires it
        mail: dict[str, Any] = {
            "to": address_object(message.to[0]),
            "from": address_object(message.from_),
            "subject": message.subject,
        }
        if message.preview_text:
            mail["previewTitle"] = message.preview_text
        if message.headers:
            mail["headers"] = dict(message.headers)
        for field, addresses in (("cc", message.cc), ("bcc", message.bcc)):
            # docs/providers/emailmassivo.md §5.2: single strings (check_message allows one)
            if addresses:
                mail[field] = addresses[0].email
        if message.attachments:
            # docs/providers/emailmassivo.md §5.2: an array of single-key objects, {"name.ext":
            # "<base64>"}.
            mail["attachments"] = [{a.filename: a.content} for a in message.attachments]
        if message.template is not None:
            # docs/providers/emailmassivo.md §5.3: the template replaces html/text; check_message
            # made sure the id is an integer.
            mail["idTemplateMailUser"] = int(message.template.id)
            mail["params"] = dict(message.template.params)
            path = "api/v1/external-mails/send-by-template"
        else:
            if message.html is not None:
                mail["html"] = message.html
            if message.text is not None:
                mail["text"] = message.text
            path = "api/v1/external-mails/send"
        # docs/providers/emailmassivo.md §5.5: always our own key (outside `mail`), the same on
        # every attempt of a delivery.
        payload = {"idempotencyKey": ctx.idempotency_key, "mail": mail}
        return self.post_json(path, payload, headers={"X-Api-Key": self._api_key})

    def parse_response(
        self, response: httpx.Response, message: EmailMessage, ctx: SendContext
    ) -> SendOutcome:
        status = response.status_code
        if status in (200, 201):
            # docs/providers/emailmassivo.md §5.4 (seed 003): 200 "Email accepted for processing"
            # (and 200 with the first uuid for a repeat of the same key or content,
            # docs/providers/emailmassivo.md §5.5); RuSender answers 201. Both are the same delivery
            # when a uuid is there.
            data = self.json_object(response)
            uuid = data.get("uuid")
            uuid = provider_id(uuid) if isinstance(uuid, str) else None
            if uuid is None:
                raise UnknownOutcomeError(
                    f"emailmassivo {status} answer has no uuid",
                    provider=self.name,
                    status_code=status,
                )
            ids = {message.to[0].email: uuid}
            rejected = _additional_recipients(data.get("additionalRecipients"), message, ids)
            return SendOutcome(
                provider=self.name, provider_message_ids=ids, rejected_recipients=rejected
            )
        if 200 <= status < 300:
            # Another 2xx may or may not mean accepted: the idempotency key makes a resend
            # safe, so report an unknown outcome rather than a success.
            raise UnknownOutcomeError(
                f"emailmassivo answered HTTP {status}, not 200/201",
                provider=self.name,
                status_code=status,
            )
        text = _error_message(response)
        message_ = f"emailmassivo HTTP {status}" + (f": {text}" if text else "")
        raise self.classify_status(response, message_)

    def classify_status(
        self, response: httpx.Response, message: str, *, provider_code: str | None = None
    ) -> DeliveryError:
        # docs/providers/emailmassivo.md §5.4 (seed 003): one status, several meanings for 404 and
        # 422, told apart by the message text; everything else (429 without Retry-After: 1 s, the
        # provider's window; 500/503; 401/403; 402 "not enough resource on user balance") is the
        # shared mapping.
        status = response.status_code
        if status not in (404, 422):
            return super().classify_status(response, message, provider_code=provider_code)
        # 404 "ExternalMailApiKey not found", "User Domain not found": configuration. 422 "data
        # validation error" (EM-H) with a text we do not recognise: the safe reading is a
        # permanent refusal of this message (no retry loop, nothing sent twice), but not a
        # suppression: we cannot tell the recipient opted out (docs/providers/emailmassivo.md §5.4).
        fallback = ConfigurationError if status == 404 else PermanentError
        error_type = _by_message(status, _error_message(response)) or fallback
        return error_type(message, provider=self.name, status_code=status)


def _by_message(status: int, text: str) -> type[DeliveryError] | None:
    """The class a 404/422 message names (seed 003, docs/providers/emailmassivo.md §5.4), or
    ``None`` to go by status."""
    lowered = text.lower()
    if status not in (404, 422) or not lowered:
        return None
    if any(stem in lowered for stem in _TEMPLATE_MISSING):
        # 404 "TemplateMailUser not found by id" / 422 "Template not found by templateId": this
        # message names a template that does not exist; the account is fine, no operator alarm.
        return PermanentError
    if status != 422:
        return None  # other 404s ("ExternalMailApiKey", "User Domain"): configuration
    if any(stem in lowered for stem in _SUPPRESSED + _SUPPRESSED_RU):
        return RecipientRejectedError  # unsubscribed / complained / doesn't exist
    if any(stem in lowered for stem in _UNAVAILABLE):
        # "Email receiver unavailable": "Recipient email is temporarily unavailable" (seed 003).
        return RecipientDeferredError
    return None


def _additional_recipients(
    items: object, message: EmailMessage, ids: dict[str, str]
) -> dict[str, str]:
    """Add accepted cc/bcc uuids to ``ids``; return the cc/bcc not accepted, with why.

    Seed 003: "Results for additional recipients from cc and bcc. Each item contains either uuid
    for a successfully accepted recipient or error for an invalid email address"; the item
    shape is otherwise [NOT FOUND] (docs/providers/emailmassivo.md §5.2). An item is matched to its
    address by an ``email`` field when it has one equal to an address we sent, else by position in
    the order we sent them (cc, then bcc); positions are used only when the item count equals the
    address count. An address with no readable item is reported as not confirmed, never silently
    dropped. The message itself (to) was accepted either way: nothing here raises.
    """
    sent = [a.email for a in (*message.cc, *message.bcc)]
    if not sent:
        return {}
    results: dict[str, object] = {}
    listed = items if isinstance(items, list) else []
    unmatched = []
    for item in listed[:100]:
        email = item.get("email") if isinstance(item, dict) else None
        if isinstance(email, str):
            # An item that names its address speaks for that address only: one we did not
            # send, or a repeat of one already matched, is never paired by position.
            found = next((a for a in sent if a.lower() == email.strip().lower()), None)
            if found is not None and found not in results:
                results[found] = item
            continue
        unmatched.append(item)
    rest = [a for a in sent if a not in results]
    if unmatched and len(unmatched) == len(rest):
        results.update(zip(rest, unmatched, strict=True))
    rejected: dict[str, str] = {}
    for address in sent:
        item = results.get(address)
        uuid = item.get("uuid") if isinstance(item, dict) else None
        error = item.get("error") if isinstance(item, dict) else None
        accepted = provider_id(uuid) if isinstance(uuid, str) else None
        if accepted is not None and not error:
            ids.setdefault(address, accepted)
        elif error:
            reason = error if isinstance(error, str) else json.dumps(error, default=str)[:200]
            rejected[address] = f"refused by emailmassivo: {reason[:200]}"
        else:
            rejected[address] = "not confirmed: no readable additionalRecipients item"
    return rejected


def _check_attachments(message: EmailMessage) -> None:
    # docs/providers/emailmassivo.md §5.2: <= 20 attachments, <= 5 MB in total, forbidden
    # extensions.
    if len(message.attachments) > 20:
        raise RuleViolation("attachments", "emailmassivo accepts at most 20 attachments")
    if sum(a.size_bytes for a in message.attachments) > 5 * 1024 * 1024:
        raise RuleViolation("attachments", "emailmassivo accepts at most 5 MB in total")
    for i, att in enumerate(message.attachments):
        if att.extension in FORBIDDEN_EXTENSIONS:
            raise RuleViolation(
                f"attachments.{i}.filename",
                f"extension .{att.extension} is forbidden by emailmassivo",
            )
    # docs/providers/emailmassivo.md §5.2: the whole request body is <= 5 MB, and attachments travel
    # in it as base64 (4/3 of their size): 4.5 MB of files pass the 5 MB attachment rule but not
    # this.
    body_bytes = sum(len(a.content) + len(a.filename) for a in message.attachments) + sum(
        len(v.encode("utf-8", "surrogatepass"))
        for v in (message.html, message.text, message.subject, message.preview_text)
        if v is not None
    )
    if body_bytes > MAX_REQUEST_BYTES:
        raise RuleViolation(
            "attachments" if message.attachments else "html",
            "emailmassivo requests are limited to 5 MB (body plus base64 attachments); "
            f"this one needs about {body_bytes / 1024 / 1024:.1f} MB",
        )


def _error_message(response: httpx.Response) -> str:
    """``message`` of the ``{"message", "statusCode"}`` error body
    (docs/providers/emailmassivo.md §5.4), if there is one."""
    message = json_or_empty(response).get("message")
    if isinstance(message, list):  # NestJS-style validation lists
        message = ", ".join(str(m) for m in message[:10])
    return short_text(message)


DRIVER = EmailMassivoDriver
"""This module's provider, as the registry (:mod:`worker.providers`) finds it."""
