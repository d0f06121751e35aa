"""Postal's legacy v1 HTTP API (docs/providers/postal.md §4): always HTTP 200, the outcome in
``status``.

Quirks reproduced from Postal's source (docs/providers/postal.md §4.1 to §4.4):
- every answer is ``{"status", "time", "flags", "data"}`` with HTTP 200, errors included;
- the key is the ``X-Server-API-Key`` header: ``AccessDenied`` without it,
  ``InvalidServerAPIKey`` (echoing ``token``) when unknown;
- parameters come as a JSON body, or form-encoded as one ``params`` field holding JSON;
  anything else reads as ``{}``;
- ``send/message`` validates in a fixed order and answers only the first error;
- one message (``id`` + 16-character ``token``) per recipient, keyed by the bare address.

Server settings (``SandboxConfig``, ``--postal-*`` flags, ``/_admin/settings``):
- authenticated domains: a From domain must be one of them, by exact name, case-insensitive
  (docs/providers/postal.md §4.2 "its domain must be an authenticated domain of the server"); any
  other domain is ``UnauthenticatedFromAddress``. Defaults: ``config.DEFAULT_POSTAL_DOMAINS``;
- ``send_limit``: messages created in the last 60 minutes (held ones included) beyond which new
  messages are accepted but **Held** (docs/providers/postal.md §4.5); ``None`` is no limit, Postal's
  default;
- the suppression list: a message to a suppressed address is accepted but **Held**
  (docs/providers/postal.md §4.5).
Held messages report ``status: Held`` through ``messages/message`` and ``messages/deliveries``
(docs/providers/postal.md §4.4) and expire after 7 days (``default_maximum_hold_expiry_days``,
docs/providers/postal.md §4.5).

Delivery timeline (``delivery_sandbox.timeline``; statuses of docs/providers/postal.md §4.4, webhook
events of docs/providers/postal.md §4.6): a message is ``Pending``, then ``Sent`` after
``postal_delivery_delay_s`` (0: at once). Magic recipients, by local part: ``hold…`` is ``Held`` at
once (as a suppressed address is); ``hardfail…`` ends ``HardFail``; ``softfail…`` is ``SoftFail``
and then ``Sent`` after Postal's retry (:data:`SOFT_RETRY_S`, shortened from
docs/providers/postal.md §4.5's 5 minutes); ``bounce…`` is ``Sent`` and then ``Bounced``
(:data:`BOUNCE_AFTER_S` later: a bounce received for it). ``messages/message`` shows the latest
status and ``messages/deliveries`` one record per status after ``Pending``; ``POST /_admin/status``
forces one.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import secrets
import string
import time
import uuid
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parseaddr
from typing import Any
from urllib.parse import parse_qs

from delivery_sandbox.providers.base import Env, Provider
from delivery_sandbox.wire import (
    AcceptedMessage,
    Reply,
    Request,
    html_reply,
    json_reply,
    phrase,
)

__all__ = ["PostalProvider"]

RETURN_PATH_DOMAIN = "rp.sandbox.test"
MAX_PER_FIELD = 50
TOKEN_ALPHABET = string.ascii_letters + string.digits

# send/message validation errors, in Postal's order (docs/providers/postal.md §4.2).
ERROR_MESSAGES = {
    "NoRecipients": "There are no recipients defined to receive this message",
    "TooManyToAddresses": "The maximum number of To addresses has been reached (maximum 50)",
    "TooManyCCAddresses": "The maximum number of CC addresses has been reached (maximum 50)",
    "TooManyBCCAddresses": "The maximum number of BCC addresses has been reached (maximum 50)",
    "NoContent": "There is no content defined for this e-mail",
    "FromAddressMissing": "The From address is missing and is required",
    "UnauthenticatedFromAddress": (
        "The From address is not authorised to send mail from this server"
    ),
    "AttachmentMissingName": "An attachment is missing a name",
    "AttachmentMissingData": "An attachment is missing data",
}
ALL_EXPANSIONS = (
    "status",
    "details",
    "inspection",
    "plain_body",
    "html_body",
    "attachments",
    "headers",
    "raw_message",
    "activity_entries",
)
SOFT_RETRY_S = 1.0
BOUNCE_AFTER_S = 0.5
METHODS = ("GET", "POST", "PATCH", "PUT")  # config/routes.rb: `match ... via: [...]`
# docs/providers/postal.md §4.5: `live_stats.total(60)`, the last 60 minutes
SEND_LIMIT_WINDOW_S = 3600.0
HOLD_EXPIRY_S = 7 * 86400.0  # docs/providers/postal.md §4.5: default_maximum_hold_expiry_days = 7
DEFAULT_SUPPRESSION_REASON = "added by the sandbox operator"


def is_authenticated_domain(domain: str) -> bool:
    """EmailMassivo's sandbox sender rule (imported from here): any domain but ``unverified.*``.

    Postal itself no longer uses it: its server has an explicit allow-list (module docstring).
    """
    domain = domain.lower().rstrip(".")
    return bool(domain) and not domain.startswith("unverified.")


def _normal_domain(domain: str) -> str:
    return domain.strip().lower().rstrip(".")


class PostalProvider(Provider):
    name = "postal"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self._messages: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(1)  # ids keep growing across resets, like a real database
        # creation times, for the send limit (docs/providers/postal.md §4.5)
        self._created: list[float] = []
        self._domains: set[str] = set()
        self._send_limit: int | None = None
        self._suppressed: dict[str, str] = {}
        self._load_settings()

    def _load_settings(self) -> None:
        config = self.env.config
        self._domains = {_normal_domain(d) for d in config.postal_domains if d.strip()}
        self._send_limit = config.postal_send_limit
        self._suppressed = {a.strip().lower(): r for a, r in config.postal_suppressed.items()}

    def reset(self) -> None:
        """Forget messages and restore the configured domains, send limit and suppressions."""
        with self.lock:
            self._messages.clear()
            self._created.clear()
            self._load_settings()

    def settings(self) -> dict[str, Any]:
        with self.lock:
            return {
                "domains": sorted(self._domains),
                "send_limit": self._send_limit,
                "suppressed": dict(self._suppressed),
            }

    def configure(self, changes: dict[str, Any]) -> None:
        """``{"domains": [...], "send_limit": N | null, "suppressed": {address: reason}}``.

        Each key given replaces that setting; ``suppressed`` may also be a list of addresses.
        """
        unknown = set(changes) - {"domains", "send_limit", "suppressed"}
        if unknown:
            raise ValueError(f"unknown postal settings: {', '.join(sorted(unknown))}")
        domains = changes.get("domains", sorted(self._domains))
        if not isinstance(domains, list) or not all(
            isinstance(d, str) and d.strip() for d in domains
        ):
            raise ValueError("postal domains must be a list of domain names")
        limit = changes.get("send_limit", self._send_limit)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise ValueError("postal send_limit must be a non-negative integer or null")
        if limit is not None and limit < 0:
            raise ValueError("postal send_limit must be a non-negative integer or null")
        suppressed = changes.get("suppressed", self._suppressed)
        if isinstance(suppressed, list):
            suppressed = {a: DEFAULT_SUPPRESSION_REASON for a in suppressed}
        if not isinstance(suppressed, dict) or not all(
            isinstance(a, str) and "@" in a and isinstance(r, str) for a, r in suppressed.items()
        ):
            raise ValueError("postal suppressed must map addresses to reasons (or list them)")
        with self.lock:
            self._domains = {_normal_domain(d) for d in domains}
            self._send_limit = limit
            self._suppressed = {a.strip().lower(): r for a, r in suppressed.items()}

    def _domain_allowed(self, domain: str) -> bool:
        domain = _normal_domain(domain)
        with self.lock:
            return bool(domain) and domain in self._domains

    def throttled(self, request: Request, retry_after: str) -> Reply:
        # Postal has no limit (docs/providers/postal.md §4.5); only reachable via a fault
        return self.fault_reply(429)

    def fault_reply(self, status: int) -> Reply:
        # Non-200 answers come only from the reverse proxy in front of Postal
        # (docs/providers/postal.md §4.1).
        reason = phrase(status)
        page = (
            f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
            f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
            "</body>\r\n</html>\r\n"
        )
        return html_reply(status, page, outcome="fault")

    def handle(self, request: Request) -> Reply:
        started = time.perf_counter()
        handler = {
            "/api/v1/send/message": self._send_message,
            "/api/v1/send/raw": self._send_raw,
            "/api/v1/messages/message": self._message,
            "/api/v1/messages/deliveries": self._deliveries,
        }.get(request.route.rstrip("/"))
        if handler is None or request.method not in METHODS:
            return html_reply(404, "<h1>Not Found</h1>", outcome="refused")
        key = request.header("x-server-api-key")
        if not key:
            return _error(started, "AccessDenied", message="Must be authenticated as a server.")
        if not self.env.accounts.key_is_valid(self.name, key):
            return _error(
                started,
                "InvalidServerAPIKey",
                message="The API token provided in X-Server-API-Key was not valid.",
                token=key,
            )
        return handler(request, _params(request), started)

    # --- send -------------------------------------------------------------------------------

    def _send_message(self, request: Request, params: dict[str, Any], started: float) -> Reply:
        to, cc, bcc = (_addresses(params.get(f)) for f in ("to", "cc", "bcc"))
        attachments = [a for a in _list(params.get("attachments")) if isinstance(a, dict)]
        sender = _str(params.get("from"))
        error: str | None = None
        if not (to or cc or bcc):
            error = "NoRecipients"
        elif len(to) > MAX_PER_FIELD:
            error = "TooManyToAddresses"
        elif len(cc) > MAX_PER_FIELD:
            error = "TooManyCCAddresses"
        elif len(bcc) > MAX_PER_FIELD:
            error = "TooManyBCCAddresses"
        elif not (_str(params.get("plain_body")).strip() or _str(params.get("html_body")).strip()):
            error = "NoContent"
        elif not sender.strip():
            error = "FromAddressMissing"
        elif not self._domain_allowed(_domain(sender)):
            error = "UnauthenticatedFromAddress"
        else:
            for attachment in attachments:
                if not _str(attachment.get("name")).strip():
                    error = "AttachmentMissingName"
                    break
                if not _str(attachment.get("data")).strip():
                    error = "AttachmentMissingData"
                    break
        if error is not None:
            return _error(started, error, message=ERROR_MESSAGES[error])

        message_id = f"{uuid.uuid4()}@{RETURN_PATH_DOMAIN}"
        recipients = list(dict.fromkeys(to + cc + bcc))  # duplicates collapse into one key
        details: dict[str, Any] = {
            "mail_from": parseaddr(sender)[1] or sender,
            "subject": _str(params.get("subject")),
            "tag": params.get("tag") if isinstance(params.get("tag"), str) else None,
            "plain_body": params.get("plain_body"),
            "html_body": params.get("html_body"),
            "headers": params.get("headers") if isinstance(params.get("headers"), dict) else {},
            "attachments": attachments,
            "bounce": bool(params.get("bounce")),
        }
        return self._accept(request, params, started, message_id, recipients, details)

    def _send_raw(self, request: Request, params: dict[str, Any], started: float) -> Reply:
        rcpt_to = params.get("rcpt_to")
        if not isinstance(rcpt_to, list):
            return _parameter_error(started, "`rcpt_to` parameter is required but is missing")
        mail_from = _str(params.get("mail_from"))
        if not mail_from.strip():
            return _parameter_error(started, "`mail_from` parameter is required but is missing")
        data = _str(params.get("data"))
        if not data.strip():
            return _parameter_error(started, "`data` parameter is required but is missing")
        try:
            raw = base64.b64decode(data)
        except (binascii.Error, ValueError):
            raw = b""
        headers = BytesHeaderParser().parsebytes(raw.split(b"\r\n\r\n", 1)[0])
        from_header = str(headers.get("From", ""))
        if not from_header or not self._domain_allowed(_domain(from_header)):
            # no message here (docs/providers/postal.md §4.3)
            return _error(started, "UnauthenticatedFromAddress")
        header_id = str(headers.get("Message-ID", "")).strip().strip("<>")
        message_id = header_id or f"{uuid.uuid4()}@{RETURN_PATH_DOMAIN}"
        recipients = list(dict.fromkeys(str(r) for r in rcpt_to))
        details: dict[str, Any] = {
            "mail_from": mail_from,
            "subject": str(headers.get("Subject", "")),
            "tag": None,
            "plain_body": None,
            "html_body": None,
            "headers": {k: str(v) for k, v in headers.items()},
            "attachments": [],
            "bounce": bool(params.get("bounce")),
            "raw_message": data,
        }
        return self._accept(request, params, started, message_id, recipients, details)

    def _accept(
        self,
        request: Request,
        params: dict[str, Any],
        started: float,
        message_id: str,
        recipients: list[str],
        details: dict[str, Any],
    ) -> Reply:
        now = self.env.now()
        created: dict[str, dict[str, Any]] = {}
        held: dict[str, str] = {}
        with self.lock:
            self._created = [t for t in self._created if t > now - SEND_LIMIT_WINDOW_S]
            for rcpt in recipients:
                entry: dict[str, Any] = {"id": next(self._ids), "token": _token()}
                hold = self._hold_reason(rcpt)
                if hold is None and _local(rcpt).startswith("hold"):
                    hold = f"Recipient ({rcpt}) is held by the sandbox (magic address)"
                # held messages count too (live stats, docs/providers/postal.md §4.5)
                self._created.append(now)
                self._messages[entry["id"]] = {
                    **details,
                    **entry,
                    "rcpt_to": rcpt,
                    "message_id": message_id,
                    "timestamp": now,
                    "held": hold,
                }
                created[rcpt] = entry
                if hold is not None:
                    held[rcpt] = hold
        record = {
            "provider": self.name,
            "message_id": message_id,
            "fields": params,
            "tag": details["tag"],
            "recipients": recipients,
        }
        for rcpt, entry in created.items():
            self.env.timeline.accept(
                self.name,
                str(entry["id"]),
                rcpt,
                self._steps(rcpt, now, held.get(rcpt)),
                {**record, "id": entry["id"], "token": entry["token"]},
            )
        reply = _success(started, {"message_id": message_id, "messages": created})
        reply.message_id = message_id
        if recipients:
            reply.outcome = "accepted"
            reply.message = AcceptedMessage(
                message_id=message_id,
                recipients=recipients,
                fields=params,
                units=len(recipients),
                tag=details["tag"],
                extra={"recipient_ids": {r: e["id"] for r, e in created.items()}, "held": held},
            )
        return reply

    def _steps(self, rcpt: str, now: float, hold: str | None) -> list[Any]:
        """The statuses a new message goes through (see the module docstring)."""
        if hold is not None:
            return [(now, "Held", hold)]
        at = now + self.env.config.postal_delivery_delay_s
        local = _local(rcpt)
        sent = (at, "Sent", f"Message for {rcpt} accepted by the sandbox")
        steps: list[Any] = [(now, "Pending", None)]
        if local.startswith("hardfail"):
            return [*steps, (at, "HardFail", f"550 5.1.1 <{rcpt}>: recipient unknown (sandbox)")]
        if local.startswith("softfail"):
            soft = (at, "SoftFail", f"451 4.7.1 <{rcpt}>: try again later (sandbox)")
            return [*steps, soft, (at + SOFT_RETRY_S, sent[1], sent[2])]
        if local.startswith("bounce"):
            bounced = (at + BOUNCE_AFTER_S, "Bounced", f"a bounce was received for {rcpt}")
            return [*steps, sent, bounced]
        return [*steps, sent]

    def _shown(self, found: dict[str, Any]) -> list[Any]:
        shown = self.env.timeline.history(self.name, str(found["id"]), found["rcpt_to"])
        if not shown:  # not on the timeline (cannot happen for an accepted message)
            shown = [(found["timestamp"], "Held" if found["held"] else "Sent", found["held"])]
        return shown

    def _hold_reason(self, rcpt: str) -> str | None:
        """Why a new message to ``rcpt`` is held (docs/providers/postal.md §4.5), or None; caller
        holds the lock.

        The API accepts it either way. Which check Postal runs first is [INFERRED]: the
        suppression list (about this recipient) before the server-wide send limit. The limit
        counts the messages of the last 60 minutes before this one, so the first ``N`` go out
        and the next ones are held ([INFERRED] from `send_volume >= send_limit`).
        """
        reason = self._suppressed.get(rcpt.strip().lower())
        if reason is not None:
            return f"Recipient ({rcpt}) is on the suppression list (reason: {reason})"
        if self._send_limit is not None and len(self._created) >= self._send_limit:
            return f"Message held because send limit ({self._send_limit}) has been reached."
        return None

    # --- lookups ----------------------------------------------------------------------------

    def _find(self, params: dict[str, Any], started: float) -> dict[str, Any] | Reply:
        raw_id = params.get("id")
        if raw_id is None or raw_id == "":
            return _parameter_error(started, "`id` parameter is required but is missing")
        message_id = _to_int(raw_id)
        with self.lock:
            found = self._messages.get(message_id) if message_id is not None else None
        if found is None:
            return _error(
                started,
                "MessageNotFound",
                message="No message found matching provided ID",
                id=raw_id,
            )
        return found

    def _message(self, request: Request, params: dict[str, Any], started: float) -> Reply:
        found = self._find(params, started)
        if isinstance(found, Reply):
            return found
        wanted = params.get("_expansions")
        if wanted is True:
            expansions: list[str] = list(ALL_EXPANSIONS)
        elif isinstance(wanted, list):
            expansions = [e for e in wanted if isinstance(e, str)]
        else:
            expansions = []
        data: dict[str, Any] = {"id": found["id"], "token": found["token"]}
        found = {**found, "shown": self._shown(found)}
        for name in ALL_EXPANSIONS:
            if name in expansions:
                data[name] = _expansion(name, found)
        return _success(started, data)

    def _deliveries(self, request: Request, params: dict[str, Any], started: float) -> Reply:
        found = self._find(params, started)
        if isinstance(found, Reply):
            return found
        # docs/providers/postal.md §4.4: [{id, status, details, output, sent_with_ssl, log_id, time,
        # timestamp}], one per delivery attempt (every status after Pending). A hold is a delivery
        # record with no SMTP exchange behind it: no output, log id or time.
        out = []
        for index, (at, status, details) in enumerate(self._shown(found)):
            if status == "Pending":
                continue
            smtp = status in ("Sent", "SoftFail", "HardFail")
            out.append(
                {
                    "id": found["id"] * 100 + index,
                    "status": status,
                    "details": details,
                    "output": ("250 2.0.0 OK (sandbox)" if status == "Sent" else details)
                    if smtp
                    else None,
                    "sent_with_ssl": smtp,
                    "log_id": f"S{found['id']:06d}" if smtp else None,
                    "time": 0.01 if smtp else None,
                    "timestamp": at,
                }
            )
        return _success(started, out)


def _expansion(name: str, m: dict[str, Any]) -> Any:
    # docs/providers/postal.md §4.4 {status, last_delivery_attempt, held, hold_expiry}
    if name == "status":
        at, status, _details = m["shown"][-1]
        held = status == "Held"
        return {
            "status": status,
            "last_delivery_attempt": at,
            "held": held,
            "hold_expiry": at + HOLD_EXPIRY_S if held else None,
        }
    if name == "details":
        return {
            "rcpt_to": m["rcpt_to"],
            "mail_from": m["mail_from"],
            "subject": m["subject"],
            "message_id": m["message_id"],
            "timestamp": m["timestamp"],
            "direction": "outgoing",
            "size": str(len(json.dumps(m, default=str))),
            "bounce": m["bounce"],
            "bounce_for_id": 0,
            "tag": m["tag"],
            "received_with_ssl": True,
        }
    if name == "inspection":
        return {
            "inspected": False,
            "spam": False,
            "spam_score": 0.0,
            "threat": False,
            "threat_details": None,
        }
    if name == "attachments":
        return [
            {
                "filename": a.get("name"),
                "content_type": a.get("content_type") or "application/octet-stream",
                "data": a.get("data"),
                "size": len(_b64(_str(a.get("data")))),
                "hash": None,
            }
            for a in m["attachments"]
        ]
    if name == "raw_message":
        if m.get("raw_message"):
            return m["raw_message"]
        text = f"From: {m['mail_from']}\r\nTo: {m['rcpt_to']}\r\nSubject: {m['subject']}\r\n"
        text += f"Message-ID: <{m['message_id']}>\r\n\r\n{m['plain_body'] or m['html_body'] or ''}"
        return base64.b64encode(text.encode("utf-8")).decode("ascii")
    if name == "activity_entries":
        return {"loads": [], "clicks": []}
    return m.get(name)  # plain_body, html_body, headers


def _params(request: Request) -> dict[str, Any]:
    """JSON body, or form field ``params`` holding JSON; anything else is ``{}``
    (docs/providers/postal.md §4.1)."""
    try:
        if request.content_type.startswith("application/json"):
            parsed = request.json()
        elif request.content_type == "application/x-www-form-urlencoded":
            form = parse_qs(request.body.decode("utf-8"), keep_blank_values=True)
            parsed = json.loads(form["params"][0]) if "params" in form else None
        else:
            parsed = None
    except (ValueError, UnicodeDecodeError):
        parsed = None
    return parsed if isinstance(parsed, dict) else {}


def _addresses(value: Any) -> list[str]:
    """Postal splits a string on ``,\\s*``; entries may be ``"Name <addr>"``; keys are bare."""
    if isinstance(value, str):
        items: list[Any] = re.split(r",\s*", value) if value.strip() else []
    elif isinstance(value, list):
        items = value
    else:
        items = []
    out: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            continue
        name_addr = getaddresses([item])
        address = name_addr[0][1] if name_addr and name_addr[0][1] else item.strip()
        out.append(address)
    return out


def _local(address: str) -> str:
    return address.partition("@")[0].strip().lower()


def _domain(address: str) -> str:
    bare = parseaddr(address)[1] or address
    return bare.rsplit("@", 1)[1] if "@" in bare else ""


def _success(started: float, data: Any) -> Reply:
    return _envelope(started, "success", data)


def _error(started: float, code: str, **data: Any) -> Reply:
    return _envelope(started, "error", {"code": code, **data}, outcome="refused")


def _parameter_error(started: float, message: str) -> Reply:
    return _envelope(started, "parameter-error", {"message": message}, outcome="refused")


def _envelope(started: float, status: str, data: Any, outcome: str = "ok") -> Reply:
    elapsed = round(time.perf_counter() - started, 3)
    payload = {"status": status, "time": elapsed, "flags": {}, "data": data}
    return json_reply(200, payload, outcome)


def _token() -> str:
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(16))


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _b64(data: str) -> bytes:
    try:
        return base64.b64decode(data)
    except (binascii.Error, ValueError):
        return b""
