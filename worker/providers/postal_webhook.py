"""Postal's webhooks (docs/providers/postal.md §4.6): signature check and envelope →
:class:`DeliveryEvent`.

The Postal provider's push side, beside its driver (``worker.providers.postal``): the receiver
(``worker.receiver``) calls :func:`verify_signature` on the raw body, then
:func:`parse_webhook`. Both take hostile input: anything unexpected is a
:class:`WebhookRejected` (a 4xx for the sender), never another exception.

Signatures [READ P-SRC ``lib/postal/signer.rb``, ``http.rb``; P-ANY]: Postal signs the raw
request body with its server key, RSA PKCS#1 v1.5: ``X-Postal-Signature-256`` (SHA-256,
current versions) and ``X-Postal-Signature`` (SHA-1, legacy; older versions send only it),
both base64. The public key is given the way Postal shows it: the base64 DER
SubjectPublicKeyInfo (the ``p=`` of ``postal default-dkim-record``), or a PEM block.

Envelope [READ ``webhook_delivery_service.rb#generate_payload``; P-ISS]:
``{"event", "timestamp", "payload", "uuid"}``; ``uuid`` is kept across Postal's retries and is
the event id (the receiver deduplicates on it).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import ValidationError

from worker.redaction import mask_email, scrub
from worker.tracking.events import DeliveryEvent, EventType

__all__ = [
    "EVENT_TYPES",
    "SIGNATURE_HEADER",
    "SIGNATURE_HEADER_SHA1",
    "PostalWebhook",
    "WebhookRejected",
    "load_public_key",
    "parse_webhook",
    "verify_signature",
]

PROVIDER = "postal"
SIGNATURE_HEADER = "x-postal-signature-256"
SIGNATURE_HEADER_SHA1 = "x-postal-signature"
_MAX_SIGNATURE_CHARS = 2048  # base64 of a 8192-bit RSA signature is 1368 characters

# docs/providers/postal.md §4.6 events → our event types. MessageSent is Postal's delivery to the
# recipient's mail server ("250 OK" in ``output``): delivered, as P-ANY maps it. Held is our own
# type (P-ANY has none and says queued). DomainDNSError, SendLimitApproaching/Exceeded are about the
# server, not a message: acknowledged and ignored.
EVENT_TYPES: dict[str, EventType] = {
    "MessageSent": EventType.DELIVERED,
    "MessageDelayed": EventType.DEFERRED,
    "MessageDeliveryFailed": EventType.FAILED,
    "MessageHeld": EventType.HELD,
    "MessageBounced": EventType.BOUNCED,
    "MessageLoaded": EventType.OPENED,
    "MessageLinkClicked": EventType.CLICKED,
}
_UUID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,99}")
_EVENT_NAME = re.compile(r"[A-Za-z]{1,64}")
_MAX_REASON = 1000


class WebhookRejected(ValueError):
    """A request the receiver refuses: ``status`` is the HTTP answer (401, 403 or 400)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class PostalWebhook:
    """One verified, parsed envelope: the events to apply (none for an ignored event)."""

    uuid: str
    event: str
    timestamp: float
    events: list[DeliveryEvent] = field(default_factory=list)
    ignored: str | None = None
    """Why the envelope yields no event (a server event, an incoming message), else None."""


# --- signature --------------------------------------------------------------------------------


def load_public_key(text: str) -> rsa.RSAPublicKey:
    """The server's public key as Postal shows it (base64 DER, ``p=…``) or as PEM.

    Raises ``ValueError`` for anything else (a setting error, reported at start).
    """
    cleaned = text.strip()
    try:
        if cleaned.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(cleaned.encode("ascii"))
        else:
            cleaned = cleaned.removeprefix("p=").strip().rstrip(";")
            der = base64.b64decode("".join(cleaned.split()), validate=True)
            key = serialization.load_der_public_key(der)
    except (ValueError, binascii.Error, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a Postal public key (base64 DER or PEM): {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the Postal webhook key must be an RSA public key")
    return key


def verify_signature(
    key: rsa.RSAPublicKey,
    body: bytes,
    headers: Any,
    *,
    allow_sha1: bool = True,
) -> str:
    """Check the body's signature; return the header that was verified.

    ``headers`` is any case-insensitive mapping with ``get`` (Starlette's, httpx's). With
    ``X-Postal-Signature-256`` present, it alone decides (a bad SHA-256 signature is not
    rescued by a SHA-1 one). Without it, the legacy SHA-1 header is checked unless
    ``allow_sha1`` is off. No signature: 401; a wrong one: 403.
    """
    for name, algorithm in (
        (SIGNATURE_HEADER, hashes.SHA256()),
        # Postal's legacy header (docs/providers/postal.md §4.6)
        (SIGNATURE_HEADER_SHA1, hashes.SHA1()),  # noqa: S303
    ):
        value = headers.get(name)
        if value is None:
            continue
        if name == SIGNATURE_HEADER_SHA1 and not allow_sha1:
            raise WebhookRejected(401, "only X-Postal-Signature-256 is accepted")
        if not isinstance(value, str) or len(value) > _MAX_SIGNATURE_CHARS:
            raise WebhookRejected(403, "signature does not verify")
        try:
            signature = base64.b64decode("".join(value.split()), validate=True)
            key.verify(signature, body, padding.PKCS1v15(), algorithm)
        except (InvalidSignature, binascii.Error, ValueError):
            raise WebhookRejected(403, "signature does not verify") from None
        return name
    raise WebhookRejected(401, "unsigned: X-Postal-Signature-256 or X-Postal-Signature needed")


# --- envelope ---------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON data")


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise WebhookRejected(400, "body is not a JSON document") from None


def _timestamp(value: Any) -> float | None:
    """A Unix time as Postal writes it (a float); None when absent or implausible."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    if not math.isfinite(number) or not 0 < number < 1e11:
        return None
    return number


def _text(value: Any, limit: int = _MAX_REASON) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return scrub(value.strip())[:limit]


def _masked_address(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    address = parseaddr(value)[1] or value.strip()
    return mask_email(address[:320]) if address else None


def _message_id(message: dict[str, Any]) -> str:
    """Postal's per-recipient message id (an integer, docs/providers/postal.md §4.2), as the driver
    records it."""
    value = message.get("id")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise WebhookRejected(400, "message.id missing")
    text = str(value).strip()
    if not text or len(text) > 200 or not text.isprintable():
        raise WebhookRejected(400, "message.id invalid")
    return text


def _message_raw(message: dict[str, Any]) -> dict[str, Any]:
    """The message object without its token, subject or full addresses."""
    raw: dict[str, Any] = {"id": message.get("id") if _scalar(message.get("id")) else None}
    for name in ("direction", "spam_status", "tag"):
        value = message.get(name)
        if isinstance(value, str):
            raw[name] = scrub(value)[:200]
    message_id = message.get("message_id")
    if isinstance(message_id, str):
        raw["message_id"] = scrub(message_id)[:300]
    timestamp = _timestamp(message.get("timestamp"))
    if timestamp is not None:
        raw["timestamp"] = timestamp
    for name in ("to", "from"):
        masked = _masked_address(message.get(name))
        if masked is not None:
            raw[name] = masked
    return raw


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WebhookRejected(400, f"{what} is not an object")
    return value


def parse_webhook(body: bytes) -> PostalWebhook:
    """Parse a *verified* body into events; :class:`WebhookRejected` (400) when malformed."""
    envelope = _object(_load_json(body), "the envelope")
    uuid = envelope.get("uuid")
    if not isinstance(uuid, str) or not _UUID.fullmatch(uuid):
        raise WebhookRejected(400, "envelope uuid missing or invalid")
    event = envelope.get("event")
    if not isinstance(event, str) or not _EVENT_NAME.fullmatch(event):
        raise WebhookRejected(400, "envelope event missing or invalid")
    sent_at = _timestamp(envelope.get("timestamp"))
    if sent_at is None:
        raise WebhookRejected(400, "envelope timestamp missing or invalid")
    payload = _object(envelope.get("payload"), "payload")
    kind = EVENT_TYPES.get(event)
    if kind is None:
        return PostalWebhook(uuid, event, sent_at, ignored=f"{event} is not about a message")

    raw: dict[str, Any] = {"event": event, "uuid": uuid, "timestamp": sent_at}
    if kind is EventType.BOUNCED:
        # The bounce is about the *original* message: that is the id the send recorded.
        message = _object(payload.get("original_message"), "payload.original_message")
        bounce = _object(payload.get("bounce"), "payload.bounce")
        raw["original_message"] = _message_raw(message)
        raw["bounce"] = _message_raw(bounce)
        reason: str | None = f"bounce message {raw['bounce'].get('id')} received"
        occurred_at = _timestamp(bounce.get("timestamp")) or sent_at
    else:
        message = _object(payload.get("message"), "payload.message")
        raw["message"] = _message_raw(message)
        for name in ("status", "details", "output"):
            text = _text(payload.get(name), 512)
            if text is not None:
                raw[name] = text
        if isinstance(payload.get("sent_with_ssl"), bool):
            raw["sent_with_ssl"] = payload["sent_with_ssl"]
        url = payload.get("url")
        if kind is EventType.CLICKED and isinstance(url, str):
            # The host only: a link's path and query may carry the recipient's own tokens.
            raw["url_host"] = (urlsplit(url[:2000]).hostname or "")[:253]
        reason = _text(payload.get("details")) or _text(payload.get("output"))
        occurred_at = _timestamp(payload.get("timestamp")) or sent_at
    if message.get("direction") == "incoming":
        # Only outgoing mail is ours (P-ANY ignores incoming too).
        return PostalWebhook(uuid, event, sent_at, ignored="incoming message")
    try:
        delivery_event = DeliveryEvent(
            event_id=uuid,
            type=kind,
            provider=PROVIDER,
            provider_message_id=_message_id(message),
            recipient=_masked_address(message.get("to")),
            occurred_at=occurred_at,
            reason=reason,
            source="webhook",
            raw=raw,
        )
    except ValidationError:
        raise WebhookRejected(400, "event fields invalid") from None
    return PostalWebhook(uuid, event, sent_at, events=[delivery_event])
