"""Mail Partner: ``POST /send``, ``GET /me``, ``GET /bulk-status``, ``GET /message-cancel``,
the unsubscribe list.

Wire format in docs/providers/mailpartner.md §2. Sandbox rules ([INFERRED] where the docs are
silent):
- recipients only as ``params.to[]`` (the seed's and every example's shape,
  docs/providers/mailpartner.md §2.2); a top-level ``to`` (the field table's wording, never shown in
  an example) is refused with code 22, so a client that sends it cannot pass here and fail against
  the real API;
- each field problem answers its documented code (docs/providers/mailpartner.md §2.3) as ``{success,
  code, message}``, the first failing check only, in this order: 2 content (``htmlContent``; a
  missing ``subject`` too, as no code of its own exists), 22 recipient list, 50 more than 500
  recipients (the platform's "max 500" code; 17 "too many recipients" is never produced,
  its limit being undocumented), 18/19/21 recipient email required / invalid / name empty
  (a ``name`` key present but empty), 23/24/25 reply-to email required / invalid / name empty,
  16 attachment name empty, 8 attachment content missing (the closest documented code,
  "attachment URL required"), 45-49 schedule (45 date required, 46 time, 47 minute missing or
  not a number, 48 minute not 0-55 in steps of 5, 49 date invalid or past);
- other constraints (more than 3 attachments, over 5 MB, bad base64, a content type whose
  extension is not allowed - code 9 "attachment extension not allowed" -, tag, variables)
  answer code 9 with the platform's ``error`` list of ``{elementId, message}``
  (docs/providers/smspartner.md §1.2.2);
- codes 4/5 (sender) are not produced: the sender is not a request field
  (docs/providers/mailpartner.md §2.2 [NOT FOUND]), it belongs to the account;
- an address on the unsubscribe list - added with ``/unsubscribe/add``, or any address whose
  local part starts with ``unsubscribed`` - refuses the whole send with code 14;
- one credit per recipient; ``cost`` is in credits, as in the doc example (``"cost":1`` for one
  mail); ``sandbox: 1`` sends are recorded but not charged (docs/providers/mailpartner.md §2.2);
- a scheduled mail can be cancelled until 5 minutes before its time
  (docs/providers/mailpartner.md §2.2 ``message-cancel``); its credits are refunded. ``bulk-status``
  says ``Pending`` until the mail is due (plus the delivery delay, ``sms_delivery_delay_s``), then
  ``Delivered``; an address whose local part starts with ``bounce`` says ``Bounced`` instead; a
  cancelled mail says ``Cancelled`` (status values are [NOT FOUND],
  docs/providers/mailpartner.md §2.2; these are the ones S-MIS assumes). Each address's statuses are
  its timeline (``delivery_sandbox.timeline``): lookups read it, ``POST /_admin/status`` forces it.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import secrets
from collections.abc import Sequence
from typing import Any

from delivery_sandbox.providers.base import EMAIL_RE, Env, local_part
from delivery_sandbox.providers.partner import (
    Invalid,
    PartnerProvider,
    check_schedule,
    check_tag,
    provider_now,
)
from delivery_sandbox.ratelimit import Window
from delivery_sandbox.wire import AcceptedMessage, Reply, Request

__all__ = ["MailPartnerProvider"]

MAX_RECIPIENTS = 500
MAX_ATTACHMENTS = 3
MAX_ATTACHMENT_BYTES = 5 * 1024 * 1024
MAX_VARIABLES = 8
# docs/providers/mailpartner.md §2.2: code 6, less than 5 minutes before the scheduled time
CANCEL_MARGIN_S = 5 * 60
# Content types whose file extension Mail Partner would refuse (code 9,
# docs/providers/mailpartner.md §2.3). The list itself is [NOT FOUND]; these are executables and
# scripts, which mail providers refuse alike.
FORBIDDEN_CONTENT_TYPES = frozenset(
    {
        "application/x-msdownload",
        "application/x-msdos-program",
        "application/x-dosexec",
        "application/x-executable",
        "application/x-sh",
        "application/x-bat",
        "application/javascript",
        "text/javascript",
        "application/vnd.microsoft.portable-executable",
        "application/java-archive",
    }
)


class MailPartnerProvider(PartnerProvider):
    name = "mailpartner"
    price_eur = 1.0

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self._messages: dict[str, dict[str, Any]] = {}
        self._unsubscribed: dict[str, tuple[int, str]] = {}
        self._stop_ids = itertools.count(1)

    def reset(self) -> None:
        with self.lock:
            self._messages.clear()
            self._unsubscribed.clear()

    def windows(self, request: Request) -> Sequence[Window]:
        # "Too many requests in one minute (limit 2000 requests/minute/IP)"
        # (docs/providers/mailpartner.md §2.3).
        return (Window("requests-1m", self.env.config.limits.mailpartner_per_min, 60.0),)

    def routes(self) -> dict[tuple[str, str], Any]:
        return {
            ("POST", "/send"): self._send,
            ("GET", "/me"): self._me,
            ("GET", "/bulk-status"): self._bulk_status,
            ("GET", "/message-cancel"): self._cancel,
            ("POST", "/unsubscribe/add"): self._unsubscribe_add,
            ("GET", "/unsubscribe/list"): self._unsubscribe_list,
        }

    def _send(self, request: Request, fields: dict[str, Any]) -> Reply:
        failure = _first_failure(fields)
        if failure is not None:
            return self.fail(*failure)
        problems = _check_attachments(fields.get("attachments"))
        problems += _check_variables(fields.get("variables"))
        problems += check_tag(fields.get("tag"), min_chars=3)
        if problems:
            return self.invalid(problems)
        _, schedule = check_schedule(fields, provider_now())  # checked by _first_failure
        recipients = list(dict.fromkeys(e["email"] for e in fields["params"]["to"]))
        sandboxed = fields.get("sandbox") in (1, "1", True)
        now = self.env.now()
        with self.lock:
            for address in recipients:
                if address.lower() in self._unsubscribed or local_part(address).startswith(
                    "unsubscribed"
                ):
                    return self.fail(14, f"L'adresse {address} est dans la liste des désabonnés")
            if not sandboxed and not self.env.accounts.try_charge(self.name, len(recipients)):
                return self.fail(11, "Crédit insuffisant")
            message_id = secrets.token_hex(12)
            self._messages[message_id] = {
                "recipients": recipients,
                "time": now,
                "due": schedule.when.timestamp() if schedule else now,
                "units": 0 if sandboxed else len(recipients),
                "cancelled": False,
            }
        due = self._messages[message_id]["due"]
        done_at = due + self.env.config.sms_delivery_delay_s
        record = {
            "provider": self.name,
            "message_id": message_id,
            "fields": fields,
            "recipients": recipients,
        }
        for address in recipients:
            final = "Bounced" if local_part(address).startswith("bounce") else "Delivered"
            self.env.timeline.accept(
                self.name,
                message_id,
                address,
                [(now, "Pending", None), (done_at, final, None)],
                record,
            )
        payload: dict[str, Any] = {
            "messageId": message_id,
            "nbMail": len(recipients),
            "cost": float(len(recipients)) * self.price_eur,
            "currency": "EUR",
        }
        if schedule is not None:
            payload["scheduledDeliveryDate"] = schedule.as_text()
        reply = self.ok(payload, outcome="accepted")
        reply.message_id = message_id
        tag = fields.get("tag")
        reply.message = AcceptedMessage(
            message_id=message_id,
            recipients=recipients,
            fields=fields,
            units=0 if sandboxed else len(recipients),
            tag=tag if isinstance(tag, str) and tag else None,
            extra={"sandbox": True} if sandboxed else {},
        )
        return reply

    def _cancel(self, request: Request, fields: dict[str, Any]) -> Reply:
        """``GET /message-cancel?apiKey=&messageId=`` (docs/providers/mailpartner.md §2.2): codes 3,
        4, 5, 6, 7, 200."""
        message_id = fields.get("messageId")
        if not message_id:
            return self.fail(3, "L'identifiant du message est requis")
        with self.lock:
            message = self._messages.get(str(message_id))
            if message is None:
                return self.fail(4, "Message introuvable")
            if message["cancelled"]:
                return self.fail(5, "L'envoi a déjà été annulé")
            left_s = message["due"] - self.env.now()
            if left_s <= 0:
                return self.fail(7, "L'email a déjà été envoyé")
            if left_s < CANCEL_MARGIN_S:
                return self.fail(6, "Annulation impossible moins de 5 minutes avant l'envoi")
            message["cancelled"] = True
            # Nothing more happens to it: no delivery, no push saying it was delivered.
            self.env.timeline.cancel(self.name, str(message_id))
            if message["units"]:
                self.env.accounts.refund(self.name, message["units"])
        return self.ok({"message": "The email has been canceled."})

    def _me(self, request: Request, fields: dict[str, Any]) -> Reply:
        credits = {
            "creditMail": self.env.accounts.balance(self.name),
            "currency": "EUR",
            "balance": self.credits_text(),
        }
        return self.ok({"user": {"username": "sandbox@sandbox.test"}, "credits": credits})

    def _bulk_status(self, request: Request, fields: dict[str, Any]) -> Reply:
        message_id = fields.get("messageId")
        if not message_id:
            return self.fail(3, "L'identifiant du message est requis")
        with self.lock:
            found = self._messages.get(str(message_id))
        if found is None:
            return self.fail(4, "Message introuvable")
        # docs/providers/mailpartner.md §2.2 StatutResponseList items: email, token, status, cost,
        # stopMail, date - no more.
        items = [
            {
                "email": address,
                "token": f"{message_id}-{index}",
                "status": self._status(str(message_id), found, address),
                "cost": self.price_eur,
                "stopMail": False,
                "date": str(int(found["time"])),
            }
            for index, address in enumerate(found["recipients"])
        ]
        return self.ok({"messageId": message_id, "StatutResponseList": items})

    def _status(self, message_id: str, found: dict[str, Any], address: str) -> str:
        if found["cancelled"]:
            return "Cancelled"
        step = self.env.timeline.status(self.name, message_id, address)
        return "Pending" if step is None else step[1]

    def _unsubscribe_add(self, request: Request, fields: dict[str, Any]) -> Reply:
        email = fields.get("email")
        if not isinstance(email, str) or not email:
            return self.fail(2, "L'email est requis")
        if not EMAIL_RE.match(email):
            return self.fail(9, "L'email n'est pas valide")
        with self.lock:
            if email.lower() in self._unsubscribed:
                return self.fail(3, "L'email est déjà dans la liste")
            stop_id = next(self._stop_ids)
            created = provider_now().strftime("%Y-%m-%d %H:%M:%S")
            self._unsubscribed[email.lower()] = (stop_id, created)
        return self.ok({"stopId": stop_id})

    def _unsubscribe_list(self, request: Request, fields: dict[str, Any]) -> Reply:
        with self.lock:
            data = [
                {"id": stop_id, "email": email, "createdAt": created}
                for email, (stop_id, created) in self._unsubscribed.items()
            ]
        return self.ok({"nbData": len(data), "data": data})


Failure = tuple[int, str]


def _first_failure(fields: dict[str, Any]) -> Failure | None:
    """The first documented field code that applies (docs/providers/mailpartner.md §2.3), in the
    order of the module doc."""
    for check in (_check_content, _check_recipients, _check_reply_to, _check_attachment_fields):
        failure = check(fields)
        if failure is not None:
            return failure
    return _check_schedule_codes(fields)


def _blank(value: Any) -> bool:
    return not isinstance(value, str) or not value.strip()


def _check_content(fields: dict[str, Any]) -> Failure | None:
    if _blank(fields.get("htmlContent")):
        return 2, "Le contenu du mail est requis"
    if _blank(fields.get("subject")):
        return 2, "Le sujet du mail est requis"
    return None


def _check_recipients(fields: dict[str, Any]) -> Failure | None:
    if "to" in fields:
        # docs/providers/mailpartner.md §2.2 and the seed: recipients are nested as params.to, never
        # top-level.
        return 22, "La liste des destinataires est requise dans params.to (pas de champ to)"
    params = fields.get("params")
    to = params.get("to") if isinstance(params, dict) else None
    if not isinstance(to, list) or not to:
        return 22, "La liste des destinataires est requise"
    if len(to) > MAX_RECIPIENTS:
        return 50, f"{MAX_RECIPIENTS} mails maximum par envoi"
    for entry in to:
        if not isinstance(entry, dict) or _blank(entry.get("email")):
            return 18, "L'email du destinataire est requis"
        if not EMAIL_RE.match(entry["email"]):
            return 19, f"L'email du destinataire n'est pas valide ({entry['email']})"
        if "name" in entry and _blank(entry["name"]):
            return 21, "Le nom du destinataire ne peut pas être vide"
    return None


def _check_reply_to(fields: dict[str, Any]) -> Failure | None:
    if "replyTo" not in fields:
        return None
    value = fields["replyTo"]
    if not isinstance(value, dict) or _blank(value.get("email")):
        return 23, "L'email de réponse est requis"
    if not EMAIL_RE.match(value["email"]):
        return 24, "L'email de réponse n'est pas valide"
    if "name" in value and _blank(value["name"]):
        return 25, "Le nom de réponse ne peut pas être vide"
    return None


def _check_attachment_fields(fields: dict[str, Any]) -> Failure | None:
    value = fields.get("attachments")
    if not isinstance(value, list):
        return None  # not a list: code 9 (_check_attachments)
    for item in value:
        if not isinstance(item, dict) or _blank(item.get("filename")):
            return 16, "Le nom de la pièce jointe ne peut pas être vide"
        if _blank(item.get("base64Content")):
            return 8, "Le contenu de la pièce jointe est requis"
    return None


def _check_schedule_codes(fields: dict[str, Any]) -> Failure | None:
    """Codes 45-49 (docs/providers/mailpartner.md §2.2: the SMS schedule fields;
    docs/providers/smspartner.md §1.3 gives each code's meaning)."""
    date_given = fields.get("scheduledDeliveryDate") not in (None, "")
    if not date_given:
        if fields.get("time") not in (None, "") or fields.get("minute") not in (None, ""):
            return 45, "La date est requise"
        return None
    problems, _ = check_schedule(fields, provider_now())
    for problem in problems:
        if problem.field == "time":
            return 46, problem.message
        if problem.field == "minute":
            minute = fields.get("minute")
            numeric = not isinstance(minute, bool) and (
                isinstance(minute, int) or (isinstance(minute, str) and minute.isdigit())
            )
            return (48 if numeric else 47), problem.message
    if problems:
        return 49, problems[0].message
    return None


def _check_variables(value: Any) -> list[Invalid]:
    if value is None:
        return []
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return [Invalid("variables", "Les variables doivent être du texte")]
    if len(value) > MAX_VARIABLES:
        return [Invalid("variables", f"{MAX_VARIABLES} variables maximum")]
    return []


def _check_attachments(value: Any) -> list[Invalid]:
    if value is None:
        return []
    if not isinstance(value, list):
        return [Invalid("attachments", "Les pièces jointes doivent être une liste")]
    if len(value) > MAX_ATTACHMENTS:
        return [Invalid("attachments", f"{MAX_ATTACHMENTS} pièces jointes maximum")]
    problems: list[Invalid] = []
    for item in value:
        content_type = item.get("contentType")
        if not isinstance(content_type, str) or "/" not in content_type:
            problems.append(Invalid("attachments", "Le type de la pièce jointe est requis"))
            continue
        if content_type.split(";")[0].strip().lower() in FORBIDDEN_CONTENT_TYPES:
            problems.append(Invalid("attachments", "Extension de pièce jointe non autorisée"))
            continue
        try:
            data = base64.b64decode(str(item.get("base64Content", "")), validate=True)
        except (binascii.Error, ValueError):
            problems.append(Invalid("attachments", "Le contenu de la pièce jointe est invalide"))
            continue
        if not data:
            problems.append(Invalid("attachments", "Le contenu de la pièce jointe est requis"))
        elif len(data) > MAX_ATTACHMENT_BYTES:
            problems.append(Invalid("attachments", "Une pièce jointe ne peut dépasser 5 Mo"))
    return problems
