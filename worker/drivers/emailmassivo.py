"""EmailMassivo: ``POST /api/v1/external-mails/send[-by-template]``; providers.md §5.

EmailMassivo is the only provider with first-class idempotency (§5.5): every request carries
``idempotencyKey`` (stable across the attempts of one delivery), so a resend after an unknown
outcome returns the original ``uuid`` instead of sending again. Success is HTTP **201** with
``{"uuid"}`` (§5.4); errors are ``{"message", "statusCode"}`` and classified by HTTP status.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from worker.drivers.base import Driver, SendContext, SendOutcome
from worker.errors import (
    AccountBlockedError,
    ConfigurationError,
    DeliveryError,
    PermanentError,
    RecipientRejectedError,
    ThrottledError,
    TransientError,
    UnknownOutcomeError,
)
from worker.http import parse_retry_after
from worker.models import Address, EmailMessage

__all__ = ["EmailMassivoDriver"]

# providers.md §5.4; the "worker class" column there is [INFERRED].
STATUS_ERRORS: dict[int, type[DeliveryError]] = {
    400: PermanentError,  # bad request / attachments refused
    401: ConfigurationError,  # invalid or missing API key
    402: AccountBlockedError,  # "not enough resource on user balance" (RuSender text)
    403: ConfigurationError,  # key not enabled, or sender domain not verified
    404: ConfigurationError,  # user, domain or key not found
    # 422: unsubscribed / complained / nonexistent / unavailable receiver. §5.4 notes that
    # "unavailable" might be soft; treated as a suppression unless the provider says more.
    422: RecipientRejectedError,
}


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
        if status == 201:
            data = self.json_object(response)
            uuid = data.get("uuid")
            if not isinstance(uuid, str) or not uuid.strip():
                raise UnknownOutcomeError(
                    "emailmassivo 201 answer has no uuid", provider=self.name, status_code=status
                )
            return SendOutcome(
                provider=self.name, provider_message_ids={message.to[0].email: uuid[:200]}
            )
        if 200 <= status < 300:
            # §5.4: success is 201, not 200 (RuSender's Go client treats anything else as an
            # error). Another 2xx may or may not mean accepted: the idempotency key makes a
            # resend safe, so report an unknown outcome rather than a success.
            raise UnknownOutcomeError(
                f"emailmassivo answered HTTP {status}, not 201",
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
            # §5.4: 10 requests/s per IP; whether Retry-After is sent is [NOT FOUND], so 1 s.
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
        error_type = STATUS_ERRORS.get(status)
        if error_type is None:
            return self.http_status_error(response, message)
        return error_type(message, provider=self.name, status_code=status)


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
