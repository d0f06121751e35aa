"""EmailMassivo: ``POST /api/v1/external-mails/send[-by-template]``; providers.md §5.

EmailMassivo is the only provider with first-class idempotency (§5.5): every request carries
``idempotencyKey`` (stable across the attempts of one delivery), so a resend after an unknown
outcome returns the original ``uuid`` instead of sending again. Success is HTTP **200 or 201**
with ``{"uuid"}`` (§5.4 corrected: the EmailMassivo page lists "200 OK — Email accepted for
processing" and answers a repeat 200 with the first uuid; RuSender's examples show 201). A cc/bcc
adds ``additionalRecipients`` to the answer: accepted ones get their own uuid, refused ones are
reported in :attr:`SendOutcome.rejected_recipients`. Errors are ``{"message", "statusCode"}``,
classified by HTTP status and, where the page lists several meanings for one status (404, 422),
by the message text (English or Russian).
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from worker.errors import (
    AccountBlockedError,
    ConfigurationError,
    DeliveryError,
    PermanentError,
    RecipientDeferredError,
    RecipientRejectedError,
    ThrottledError,
    TransientError,
    UnknownOutcomeError,
)
from worker.http import parse_retry_after
from worker.models import Address, EmailMessage
from worker.providers.base import Driver, SendContext, SendOutcome

__all__ = ["EmailMassivoDriver"]

# providers.md §5.4; the "worker class" column there is [INFERRED]. 404 and 422 are refined by
# the message text in _by_message below.
STATUS_ERRORS: dict[int, type[DeliveryError]] = {
    400: PermanentError,  # bad request / attachments refused / "HTML template is not valid"
    401: ConfigurationError,  # invalid or missing API key
    402: AccountBlockedError,  # "not enough resource on user balance" (RuSender text)
    403: ConfigurationError,  # key not enabled, or sender domain not verified
    404: ConfigurationError,  # "ExternalMailApiKey not found", "User Domain not found"
    # 422 "data validation error" (EM-H). Text we do not recognise: the safe reading is a
    # permanent refusal of this message (no retry loop, nothing sent twice), but not a
    # suppression: we cannot tell the recipient opted out (§5.4).
    422: PermanentError,
}
# Seed 003 ("422 Unprocessable Entity / Possible messages"), matched on lower-cased text; the
# Russian stems cover RuSender's wording ("отписался", "пожаловался", "не существует",
# "недоступен", "шаблон").
_TEMPLATE_MISSING = ("templatemailuser not found", "template not found", "шаблон")
_SUPPRESSED = ("unsubscribed", "complained", "doesn't exist", "does not exist", "not exist")
_SUPPRESSED_RU = ("отпис", "жалоб", "пожаловал", "не существует")
_UNAVAILABLE = ("unavailable", "недоступ")


def _address(address: Address) -> dict[str, str]:
    # §5.2: {email, name}. Whether name may be omitted is not stated; it is sent when known.
    out = {"email": address.email}
    if address.name:
        out["name"] = address.name
    return out


class EmailMassivoDriver(Driver[EmailMessage]):
    name = "emailmassivo"
    channel = "email"
    default_base_url = "https://api.emailmassivo.com"
    supports_idempotency = True

    def build_request(self, message: EmailMessage, ctx: SendContext) -> httpx.Request:
        if len(message.to) != 1:
            raise PermanentError(
                "emailmassivo sends to exactly one `to` recipient (§5.2)", provider=self.name
            )
        if message.from_ is None:
            raise PermanentError("emailmassivo needs a from address", provider=self.name)
        mail: dict[str, Any] = {
            "to": _address(message.to[0]),
            "from": _address(message.from_),
            "subject": message.subject,
        }
        if message.preview_text:
            mail["previewTitle"] = message.preview_text
        if message.headers:
            mail["headers"] = dict(message.headers)
        for field, addresses in (("cc", message.cc), ("bcc", message.bcc)):
            if not addresses:
                continue
            if len(addresses) > 1:
                # §5.2: cc/bcc are single strings; a separator for several is not documented.
                raise PermanentError(
                    f"emailmassivo accepts at most one {field} address", provider=self.name
                )
            mail[field] = addresses[0].email
        if message.attachments:
            # §5.2: an array of single-key objects, {"name.ext": "<base64>"}.
            mail["attachments"] = [{a.filename: a.content} for a in message.attachments]
        if message.template is not None:
            # §5.3: the template replaces html/text.
            try:
                template_id = int(message.template.id)
            except ValueError:
                raise PermanentError(
                    "emailmassivo template ids are integers", provider=self.name
                ) from None
            mail["idTemplateMailUser"] = template_id
            mail["params"] = dict(message.template.params)
            path = "api/v1/external-mails/send-by-template"
        else:
            if message.html is not None:
                mail["html"] = message.html
            if message.text is not None:
                mail["text"] = message.text
            path = "api/v1/external-mails/send"
        # §5.5: always our own key (outside `mail`), the same on every attempt of a delivery.
        payload = {"idempotencyKey": ctx.idempotency_key, "mail": mail}
        return self.post_json(path, payload, headers={"X-Api-Key": self._api_key})

    def parse_response(
        self, response: httpx.Response, message: EmailMessage, ctx: SendContext
    ) -> SendOutcome:
        status = response.status_code
        if status in (200, 201):
            # §5.4 (seed 003): 200 "Email accepted for processing" (and 200 with the first uuid
            # for a repeat of the same key or content, §5.5); RuSender answers 201. Both are the
            # same delivery when a uuid is there.
            data = self.json_object(response)
            uuid = data.get("uuid")
            if not isinstance(uuid, str) or not uuid.strip():
                raise UnknownOutcomeError(
                    f"emailmassivo {status} answer has no uuid",
                    provider=self.name,
                    status_code=status,
                )
            ids = {message.to[0].email: uuid[:200]}
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
        raise self._status_error(response)

    def _status_error(self, response: httpx.Response) -> DeliveryError:
        status = response.status_code
        text = _error_message(response)
        message = f"emailmassivo HTTP {status}: {text}" if text else f"emailmassivo HTTP {status}"
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == 429:
            # §5.4: 10 requests/s per IP; EmailMassivo documents no Retry-After (the sandbox
            # sends none), so without one the wait is 1 s, the length of the provider's window.
            return ThrottledError(
                message, provider=self.name, status_code=status, retry_after_s=retry_after or 1.0
            )
        if status >= 500:
            # 500 / 503 "temporarily unavailable" (§5.4).
            return TransientError(
                message, provider=self.name, status_code=status, retry_after_s=retry_after
            )
        if 300 <= status < 400:
            return ConfigurationError(
                f"emailmassivo redirected (HTTP {status}); check the base URL",
                provider=self.name,
                status_code=status,
            )
        error_type = _by_message(status, text) or STATUS_ERRORS.get(status)
        if error_type is None:
            return self.http_status_error(response, message)
        return error_type(message, provider=self.name, status_code=status)


def _by_message(status: int, text: str) -> type[DeliveryError] | None:
    """The class a 404/422 message names (seed 003, §5.4), or ``None`` to go by status."""
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
    shape is otherwise [NOT FOUND] (§5.2). An item is matched to its address by an ``email``
    field when it has one equal to an address we sent, else by position in the order we sent
    them (cc, then bcc); positions are used only when the item count equals the address count.
    An address with no readable item is reported as not confirmed, never silently dropped. The
    message itself (to) was accepted either way: nothing here raises.
    """
    sent = [a.email for a in (*message.cc, *message.bcc)]
    if not sent:
        return {}
    results: dict[str, object] = {}
    listed = items if isinstance(items, list) else []
    unmatched = []
    for item in listed[:100]:
        email = item.get("email") if isinstance(item, dict) else None
        found = next(
            (a for a in sent if isinstance(email, str) and a.lower() == email.strip().lower()),
            None,
        )
        if found is not None and found not in results:
            results[found] = item
        else:
            unmatched.append(item)
    rest = [a for a in sent if a not in results]
    if unmatched and len(unmatched) == len(rest):
        results.update(zip(rest, unmatched, strict=True))
    rejected: dict[str, str] = {}
    for address in sent:
        item = results.get(address)
        uuid = item.get("uuid") if isinstance(item, dict) else None
        error = item.get("error") if isinstance(item, dict) else None
        if isinstance(uuid, str) and uuid.strip() and not error:
            ids.setdefault(address, uuid[:200])
        elif error:
            reason = error if isinstance(error, str) else json.dumps(error, default=str)[:200]
            rejected[address] = f"refused by emailmassivo: {reason[:200]}"
        else:
            rejected[address] = "not confirmed: no readable additionalRecipients item"
    return rejected


def _error_message(response: httpx.Response) -> str:
    """``message`` of the ``{"message", "statusCode"}`` error body (§5.4), if there is one."""
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(data, dict):
        return ""
    message = data.get("message")
    if isinstance(message, list):  # NestJS-style validation lists
        message = ", ".join(str(m) for m in message[:10])
    return message[:300] if isinstance(message, str) else ""
