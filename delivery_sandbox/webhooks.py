"""What the providers push: Postal's signed webhooks and SMS/Voice Partner callbacks.

Subscribed to the delivery timeline (:class:`~delivery_sandbox.lifecycle.Listeners`), each
:class:`StatusChange` becomes a push, queued and sent by background threads: a slow or dead
receiver never blocks a sandbox request or the timeline.

Postal (docs/providers/postal.md §4.6) [READ P-SRC ``webhook_delivery_service.rb``, ``http.rb``,
``signer.rb``]:

* the envelope ``{"event", "timestamp", "payload", "uuid"}``, compact JSON, ``uuid`` kept
  across retries; ``POST`` with ``Content-Type: application/json``, ``User-Agent:
  Postal/<version>``, ``X-Postal-Signature`` (RSA SHA-1, base64), ``X-Postal-Signature-256``
  (RSA SHA-256, base64) and ``X-Postal-Signature-KID``;
* success is a 2xx within 5 s; otherwise retried after 2, 3, 6, 10 and 15 minutes (6 attempts
  in all), then dropped. The delays can be shortened for tests (``/_admin/webhooks``).
* The server key is an RSA key pair made at start; its public half is shown the way Postal
  shows it (base64 DER, the ``p=`` of ``postal default-dkim-record``) on the startup line and
  at ``GET /_admin/webhooks``. The KID is [INFERRED]: the SHA-256 of that DER, in hex.

SMS Partner ``urlDlr`` (docs/providers/smspartner.md §1.4) and Voice Partner ``notifyUrl``
(docs/providers/voicepartner.md §3.3): the payloads are [NOT FOUND]. The sandbox sends a plausible
one, one attempt with a 5 s timeout (retries are not documented either): SMS Partner a form POST
with ``messageId``, ``phoneNumber``, ``status``, ``date`` and ``tag`` (the fields S-MIS guesses,
docs/providers/smspartner.md §1.4); Voice Partner a JSON POST for ``tts/send`` and a GET with query
parameters for ``campaign/send`` (the methods docs/providers/voicepartner.md §3.2 documents), with
``campaignId``, ``phoneNumber``, ``status`` and ``date``. The worker trusts none of it: a callback
is a hint, authenticated by its URL.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from delivery_sandbox.lifecycle import Listeners, StatusChange

__all__ = [
    "POSTAL_RETRY_DELAYS_S",
    "POSTAL_STATUS_EVENTS",
    "PostalSigner",
    "Webhooks",
]

log = logging.getLogger(__name__)

POSTAL_VERSION = "3.3.6"  # P-SRC @8ef8960
POSTAL_TIMEOUT_S = 5.0  # docs/providers/postal.md §4.6: timeout 5 s
# docs/providers/postal.md §4.6 RETRIES
POSTAL_RETRY_DELAYS_S: tuple[float, ...] = (120.0, 180.0, 360.0, 600.0, 900.0)
CALLBACK_TIMEOUT_S = 5.0  # SMS/Voice: [NOT FOUND]; the same as Postal's
MAX_ATTEMPT_RECORDS = 10_000
MAX_PENDING = 100_000

# A delivery status (Postal's event name, or its status word) → the webhook event
# (docs/providers/postal.md §4.6).
POSTAL_STATUS_EVENTS: dict[str, str] = {
    "MessageSent": "MessageSent",
    "Sent": "MessageSent",
    "MessageDelayed": "MessageDelayed",
    "SoftFail": "MessageDelayed",
    "MessageDeliveryFailed": "MessageDeliveryFailed",
    "HardFail": "MessageDeliveryFailed",
    "MessageHeld": "MessageHeld",
    "Held": "MessageHeld",
    "MessageBounced": "MessageBounced",
    "Bounced": "MessageBounced",
    "MessageLoaded": "MessageLoaded",
    "MessageLinkClicked": "MessageLinkClicked",
}
# The delivery ``status`` each message event carries (docs/providers/postal.md §4.6 table) and a
# plausible SMTP exchange.
_STATUS_OF_EVENT = {
    "MessageSent": ("Sent", "250 2.0.0 OK queued as 4BwW3x1mZ"),
    "MessageDelayed": ("SoftFail", "451 4.7.1 Greylisted, please try again later"),
    "MessageDeliveryFailed": ("HardFail", "550 5.1.1 The email account does not exist"),
    "MessageHeld": ("Held", ""),
}
_DEFAULT_DETAILS = {
    "MessageSent": "Message for {rcpt} accepted by mx.{domain} (192.0.2.25)",
    "MessageDelayed": "Message for {rcpt} was greylisted by mx.{domain}; will retry",
    "MessageDeliveryFailed": "Permanent SMTP delivery error for {rcpt} at mx.{domain}",
    "MessageHeld": "Message held",
}


class PostalSigner:
    """The Postal server's signing key (``Postal.signing_key``), made fresh at start."""

    def __init__(self, key_size: int = 2048) -> None:
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        der = self._private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode("ascii")
        """Base64 DER, as Postal shows it (``p=`` of its DKIM record)."""
        self.kid = hashlib.sha256(der).hexdigest()

    @property
    def public_key_pem(self) -> str:
        return (
            self._private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def headers(self, body: bytes) -> dict[str, str]:
        """The signing headers of one request body (signer.rb ``sign64`` / ``sha1_sign64``)."""
        sha256 = self._private_key.sign(body, padding.PKCS1v15(), hashes.SHA256())
        sha1 = self._private_key.sign(body, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303
        return {
            "X-Postal-Signature": base64.b64encode(sha1).decode("ascii"),
            "X-Postal-Signature-256": base64.b64encode(sha256).decode("ascii"),
            "X-Postal-Signature-KID": self.kid,
        }

    def signed_request(
        self,
        event: str,
        payload: dict[str, Any],
        *,
        webhook_uuid: str | None = None,
        created_at: float | None = None,
    ) -> tuple[str, bytes, dict[str, str]]:
        """An envelope for ``event``: (uuid, body, headers). ``created_at`` is the webhook
        request's creation time (the envelope ``timestamp``), now by default."""
        webhook_uuid = webhook_uuid or str(uuid.uuid4())
        envelope = {
            "event": event,
            "timestamp": time.time() if created_at is None else created_at,
            "payload": payload,
            "uuid": webhook_uuid,
        }
        body = json.dumps(envelope, separators=(",", ":")).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"Postal/{POSTAL_VERSION}",
            **self.headers(body),
        }
        return webhook_uuid, body, headers


@dataclass
class _Push:
    provider: str
    event: str
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None
    params: dict[str, str] | None = None
    uuid: str | None = None
    postal_payload: dict[str, Any] | None = None
    """A Postal payload not signed yet (the envelope is made on the first attempt)."""
    created_at: float = 0.0
    message_id: str = ""
    attempt: int = 0
    retries: Sequence[float] = ()


@dataclass
class _Queue:
    cond: threading.Condition = field(default_factory=threading.Condition)
    heap: list[tuple[float, int, _Push]] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)


class Webhooks:
    """The pushes of one sandbox: configuration, the send queue and a record of attempts."""

    def __init__(
        self,
        *,
        postal_url: str | None = None,
        retry_delays_s: Sequence[float] = POSTAL_RETRY_DELAYS_S,
        senders: int = 4,
        signer: PostalSigner | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._signer = signer
        self._signer_lock = threading.Lock()
        self._start = (postal_url, tuple(retry_delays_s))
        self.postal_url = postal_url
        self.retry_delays_s = tuple(retry_delays_s)
        self._senders = senders
        self._clock = clock
        self._queue = _Queue()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._generation = 0
        self._attempts: list[dict[str, Any]] = []
        self._attempt_seq = itertools.count(1)
        self._ids = itertools.count(1_000_001)  # ids of the sandbox's bounce messages
        self._http = httpx.Client(timeout=POSTAL_TIMEOUT_S, follow_redirects=False)

    @property
    def signer(self) -> PostalSigner:
        """The server key, made on first use (a key pair takes tens of milliseconds)."""
        with self._signer_lock:
            if self._signer is None:
                self._signer = PostalSigner()
            return self._signer

    def subscribe_to(self, listeners: Listeners) -> None:
        listeners.subscribe(self.on_change)

    # --- configuration (``/_admin/webhooks``) ----------------------------------------------

    def set_postal_url(self, url: str | None, *, starting: bool = False) -> None:
        """Where Postal webhooks go; ``starting``: also the value a reset restores."""
        if url is not None and not _is_http_url(url):
            raise ValueError("postal_url must be an http(s) URL or null")
        self.postal_url = url
        if starting:
            self._start = (url, self._start[1])

    def set_retry_delays(self, delays: Sequence[float]) -> None:
        values = tuple(float(d) for d in delays)
        if len(values) > 20 or any(not 0 <= d <= 86400 for d in values):
            raise ValueError("retry_delays_s: at most 20 numbers of seconds, 0 to 86400")
        self.retry_delays_s = values

    def describe(self) -> dict[str, Any]:
        with self._queue.cond:
            pending = len(self._queue.heap)
            attempts = list(self._attempts)
        return {
            "postal": {
                "url": self.postal_url,
                "public_key": self.signer.public_key,
                "kid": self.signer.kid,
                "retry_delays_s": list(self.retry_delays_s),
                "timeout_s": POSTAL_TIMEOUT_S,
            },
            "pending": pending,
            "attempts": attempts,
        }

    def reset(self) -> None:
        """Forget queued pushes and attempts; restore the starting URL and delays."""
        with self._queue.cond:
            self._queue.heap.clear()
            self._attempts.clear()
            self._generation += 1
        self.postal_url, self.retry_delays_s = self._start

    def close(self) -> None:
        with self._queue.cond:
            self._stopping = True
            self._queue.cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=POSTAL_TIMEOUT_S + 1)
        self._threads.clear()
        self._http.close()

    # --- status changes → pushes -----------------------------------------------------------

    def on_change(self, change: StatusChange) -> None:
        """The timeline's listener: build the push and queue it (never sends here)."""
        push: _Push | None = None
        if change.provider == "postal":
            push = self._postal_push(change)
        elif change.provider == "smspartner":
            push = _sms_push(change)
        elif change.provider == "voicepartner":
            push = _voice_push(change)
        if push is not None:
            self._enqueue(push, 0.0)

    def _postal_push(self, change: StatusChange) -> _Push | None:
        event = POSTAL_STATUS_EVENTS.get(change.status)
        url = self.postal_url
        if event is None or url is None:
            return None
        message = _postal_message(change)
        payload: dict[str, Any]
        if event == "MessageBounced":
            payload = {"original_message": message, "bounce": self._bounce_message(change)}
        elif event in ("MessageLoaded", "MessageLinkClicked"):
            payload = {"message": message, "ip_address": "192.0.2.80", "user_agent": "Mozilla/5.0"}
            if event == "MessageLinkClicked":
                payload.update(url="https://example.com/", token=_token(f"link:{message['id']}"))
        else:
            status, output = _STATUS_OF_EVENT[event]
            domain = change.recipient.rpartition("@")[2] or "example.com"
            details = change.detail or _DEFAULT_DETAILS[event].format(
                rcpt=change.recipient, domain=domain
            )
            payload = {
                "message": message,
                "status": status,
                "details": details,
                "output": output[:512],
                "sent_with_ssl": status == "Sent",
                "timestamp": change.at,
                "time": 0.42 if status != "Held" else None,
            }
        # Signed by the sender thread on its first attempt (RSA signing takes milliseconds:
        # not on the timeline's thread), then sent byte for byte the same on every retry.
        return _Push(
            provider="postal",
            event=event,
            method="POST",
            url=url,
            headers={},
            postal_payload=payload,
            created_at=time.time(),
            uuid=str(uuid.uuid4()),
            message_id=change.message_id,
            retries=self.retry_delays_s,
        )

    def _bounce_message(self, change: StatusChange) -> dict[str, Any]:
        bounce_id = next(self._ids)
        return {
            "id": bounce_id,
            "token": _token(f"bounce:{bounce_id}"),
            "direction": "incoming",
            "message_id": f"{uuid.uuid4()}@{change.recipient.rpartition('@')[2] or 'example.com'}",
            "to": _from_address(change.message) or "",
            "from": f"MAILER-DAEMON@{change.recipient.rpartition('@')[2] or 'example.com'}",
            "subject": "Mail delivery failed: returning message to sender",
            "timestamp": change.at,
            "spam_status": "NotChecked",
            "tag": None,
        }

    # --- the send queue --------------------------------------------------------------------

    def _enqueue(self, push: _Push, delay_s: float) -> None:
        with self._queue.cond:
            if self._stopping:
                return
            if len(self._queue.heap) >= MAX_PENDING:
                log.warning("webhook queue full; push dropped")
                return
            due = self._clock() + delay_s
            heapq.heappush(self._queue.heap, (due, next(self._queue.seq), push))
            if len(self._threads) < self._senders:
                thread = threading.Thread(
                    target=self._run, name=f"sandbox-webhooks-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._queue.cond.notify()

    def _next(self) -> tuple[_Push, int] | None:
        cond = self._queue.cond
        with cond:
            while not self._stopping:
                heap = self._queue.heap
                if heap:
                    wait = heap[0][0] - self._clock()
                    if wait <= 0:
                        return heapq.heappop(heap)[2], self._generation
                    cond.wait(timeout=min(wait, 1.0))
                else:
                    cond.wait(timeout=1.0)
            return None

    def _run(self) -> None:
        while True:
            found = self._next()
            if found is None:
                return
            push, generation = found
            try:
                self._send(push, generation)
            except Exception:  # a sender bug must not end the thread
                log.exception("webhook push failed")

    def _send(self, push: _Push, generation: int) -> None:
        if push.postal_payload is not None:
            _, push.body, push.headers = self.signer.signed_request(
                push.event, push.postal_payload, webhook_uuid=push.uuid, created_at=push.created_at
            )
            push.postal_payload = None
        push.attempt += 1
        code: int | None = None
        error: str | None = None
        try:
            response = self._http.request(
                push.method,
                push.url,
                headers=push.headers,
                content=push.body,
                params=push.params,
                timeout=POSTAL_TIMEOUT_S if push.provider == "postal" else CALLBACK_TIMEOUT_S,
            )
            code = response.status_code
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        ok = code is not None and 200 <= code < 300
        # docs/providers/postal.md §4.6: retry after RETRIES[attempts] while one is left (Postal
        # only).
        retry_in = (
            None if ok or push.attempt > len(push.retries) else push.retries[push.attempt - 1]
        )
        with self._queue.cond:
            if generation != self._generation:
                return  # reset since: forget it
            self._attempts.append(
                {
                    "seq": next(self._attempt_seq),
                    "provider": push.provider,
                    "event": push.event,
                    "uuid": push.uuid,
                    "message_id": push.message_id,
                    "method": push.method,
                    "target": urlsplit(push.url).netloc,  # never the path: hint tokens
                    "attempt": push.attempt,
                    "status": code,
                    "error": error,
                    "will_retry": retry_in is not None,
                    "at": round(time.time(), 6),
                }
            )
            del self._attempts[:-MAX_ATTEMPT_RECORDS]
        if retry_in is not None:
            self._enqueue(push, retry_in)


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _token(seed: str) -> str:
    """A 16-character alphanumeric token (Postal's message token shape,
    docs/providers/postal.md §4.2)."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    return "".join(alphabet[b % len(alphabet)] for b in digest[:16])


def _fields(message: dict[str, Any]) -> dict[str, Any]:
    fields = message.get("fields")
    return fields if isinstance(fields, dict) else {}


def _from_address(message: dict[str, Any]) -> str | None:
    fields = _fields(message)
    value = fields.get("from") or fields.get("mail_from")
    return parseaddr(value)[1] or None if isinstance(value, str) else None


def _postal_message(change: StatusChange) -> dict[str, Any]:
    """The ``message`` object of docs/providers/postal.md §4.6 for one recipient's message."""
    message = change.message
    ids = message.get("recipient_ids")
    raw_id: Any = change.message_id
    if not str(raw_id).isdigit() and isinstance(ids, dict):
        raw_id = ids.get(change.recipient, raw_id)
    message_id: int | str = int(raw_id) if str(raw_id).isdigit() else str(raw_id)
    subject = _fields(message).get("subject")
    recorded_at = message.get("time")
    return {
        "id": message_id,
        "token": _token(f"message:{message_id}"),
        "direction": "outgoing",
        "message_id": message.get("message_id")
        if isinstance(message.get("message_id"), str)
        else "",
        "to": change.recipient,
        "from": _from_address(message) or "",
        "subject": subject if isinstance(subject, str) else "",
        "timestamp": recorded_at if isinstance(recorded_at, (int, float)) else change.at,
        "spam_status": "NotChecked",
        "tag": message.get("tag") if isinstance(message.get("tag"), str) else None,
    }


def _date(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _callback_url(change: StatusChange, name: str) -> str | None:
    url = _fields(change.message).get(name)
    return url if _is_http_url(url) else None


def _sms_push(change: StatusChange) -> _Push | None:
    url = _callback_url(change, "urlDlr")
    if url is None:
        return None
    form = {
        "messageId": change.message_id,
        "phoneNumber": change.recipient,
        "status": change.status,
        "date": _date(change.at),
        "tag": str(change.message.get("tag") or ""),
    }
    body = urlencode(form)
    return _Push(
        provider="smspartner",
        event=change.status,
        method="POST",
        url=url,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        body=body.encode("ascii"),
        message_id=change.message_id,
    )


def _voice_push(change: StatusChange) -> _Push | None:
    url = _callback_url(change, "notifyUrl")
    if url is None:
        return None
    data = {
        "campaignId": change.message_id,
        "phoneNumber": change.recipient,
        "status": change.status,
        "date": _date(change.at),
    }
    if change.message.get("mode") == "campaign" or change.message.get("route") == "/campaign/send":
        # docs/providers/voicepartner.md §3.2: a voicemail drop's notifyUrl gets the campaign status
        # "via GET".
        return _Push(
            provider="voicepartner",
            event=change.status,
            method="GET",
            url=url,
            headers={},
            params=data,
            message_id=change.message_id,
        )
    # docs/providers/voicepartner.md §3.2: a tts/send notifyUrl gets "a POST with a JSON body".
    return _Push(
        provider="voicepartner",
        event=change.status,
        method="POST",
        url=url,
        headers={"Content-Type": "application/json"},
        body=json.dumps(data).encode("utf-8"),
        message_id=change.message_id,
    )
