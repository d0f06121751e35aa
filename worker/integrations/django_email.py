"""A Django email backend that enqueues through delivery-worker.

``settings.py``::

    EMAIL_BACKEND = "worker.integrations.django_email.EmailBackend"
    DELIVERY_WORKER_EMAIL_PROVIDER = "postal"   # optional: leave it out to route (docs/sending.md)
    DELIVERY_WORKER_QUEUE = None                # optional: a queue to publish to

The broker, result backend and Redis come from the usual ``DELIVERY_*`` environment variables.
``send_mail()``, ``EmailMessage`` and ``EmailMultiAlternatives`` then validate each message
with the producer's rules and enqueue it; the send itself happens in the workers. Mapping:

* ``from_email`` → ``from``, ``to``/``cc``/``bcc`` → lists of ``{email, name}``, the first
  ``reply_to`` → ``reply_to`` (the contract has one), ``extra_headers`` → ``headers``;
* the body is ``text``, or ``html`` when ``content_subtype == "html"``; a ``text/html``
  alternative becomes ``html`` (other alternative types are refused: no provider takes them);
* attachments (``attach()``, ``attach_file()``, MIME parts) → base64 ``attachments``.

Errors follow Django's ``fail_silently``: an invalid message raises
:class:`worker.models.InvalidMessage` (each error names its field) unless ``fail_silently``
is true, when it is skipped and not counted. ``send_messages`` returns how many it enqueued;
each enqueued message gets a ``delivery_id`` attribute (``delivery-worker status ID``).
"""

from __future__ import annotations

import base64
import mimetypes
from collections.abc import Sequence
from email.mime.base import MIMEBase
from email.utils import parseaddr
from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend

from worker.models import InvalidMessage

__all__ = ["EmailBackend", "to_message"]


def _address(raw: str) -> dict[str, str]:
    name, addr = parseaddr(raw)
    out = {"email": addr or raw}
    if name:
        out["name"] = name
    return out


def _attachment(item: Any) -> dict[str, str]:
    content_type: str | None
    if isinstance(item, MIMEBase):
        payload = item.get_payload(decode=True)
        content = payload if isinstance(payload, bytes) else b""
        filename = item.get_filename() or "attachment"
        content_type = item.get_content_type()
    else:
        filename, raw, mimetype = item
        content = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
        content_type = mimetype or mimetypes.guess_type(filename or "")[0]
        filename = filename or "attachment"
    return {
        "filename": str(filename),
        "content_type": content_type or "application/octet-stream",
        "content": base64.b64encode(content).decode("ascii"),
    }


def to_message(mail: EmailMessage, *, provider: str | None = None) -> dict[str, Any]:
    """The delivery-worker email message for one Django ``EmailMessage``."""
    msg: dict[str, Any] = {
        "to": [_address(a) for a in mail.to],
        "from": _address(mail.from_email),
        "subject": mail.subject,
    }
    if provider:
        msg["provider"] = provider
    if mail.cc:
        msg["cc"] = [_address(a) for a in mail.cc]
    if mail.bcc:
        msg["bcc"] = [_address(a) for a in mail.bcc]
    if mail.reply_to:
        msg["reply_to"] = _address(mail.reply_to[0])
    body_field = "html" if mail.content_subtype == "html" else "text"
    if mail.body:
        msg[body_field] = mail.body
    errors: list[dict[str, str]] = []
    for i, alternative in enumerate(getattr(mail, "alternatives", None) or []):
        content, mimetype = alternative[0], alternative[1]
        if mimetype == "text/html" and "html" not in msg:
            msg["html"] = content
        else:
            errors.append(
                {
                    "field": f"alternatives.{i}",
                    "message": f"{mimetype} alternative not supported (one text/html at most)",
                }
            )
    if len(mail.reply_to) > 1:
        errors.append({"field": "reply_to", "message": "one reply-to address at most"})
    if errors:
        raise InvalidMessage(errors)
    if mail.attachments:
        msg["attachments"] = [_attachment(a) for a in mail.attachments]
    if mail.extra_headers:
        msg["headers"] = {str(k): str(v) for k, v in mail.extra_headers.items()}
    return msg


class EmailBackend(BaseEmailBackend):  # type: ignore[misc]  # Django ships no type hints
    """Enqueue each message through :class:`worker.producer.Producer` (see the module doc)."""

    def __init__(self, fail_silently: bool = False, **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.provider: str | None = kwargs.get(
            "provider", getattr(settings, "DELIVERY_WORKER_EMAIL_PROVIDER", None)
        )
        self.queue: str | None = kwargs.get(
            "queue", getattr(settings, "DELIVERY_WORKER_QUEUE", None)
        )

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        from worker.producer import enqueue

        options = {"queue": self.queue} if self.queue else {}
        sent = 0
        for mail in email_messages:
            try:
                result = enqueue("email", to_message(mail, provider=self.provider), **options)
            except Exception:
                if not self.fail_silently:
                    raise
                continue
            mail.delivery_id = str(result.id)
            sent += 1
        return sent
