"""Mail Partner: ``POST /send``, ``GET /me``, ``GET /bulk-status``, the unsubscribe list.

Wire format in providers.md §2. Sandbox rules ([INFERRED] where the docs are silent):
- recipients go in ``params.to`` (every example) or a top-level ``to`` (the field table);
- field problems answer code 9 with an ``error`` list, like SMS Partner, including more than
  500 recipients (the simulator contract of §1.6 prefers code 9 over the separate code 50);
- an address on the unsubscribe list - added with ``/unsubscribe/add``, or any address whose
  local part starts with ``unsubscribed`` - refuses the whole send with code 14;
- one credit per recipient; ``cost`` is in credits, as in the doc example (``"cost":1`` for one
  mail); ``sandbox: 1`` sends are recorded but not charged (§2.2).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from delivery_sandbox.providers.base import EMAIL_RE, Env, local_part
from delivery_sandbox.providers.partner import Invalid, PartnerProvider, check_schedule, check_tag
from delivery_sandbox.ratelimit import Window
from delivery_sandbox.wire import AcceptedMessage, Reply, Request

__all__ = ["MailPartnerProvider"]

MAX_RECIPIENTS = 500
MAX_ATTACHMENTS = 3
MAX_ATTACHMENT_BYTES = 5 * 1024 * 1024
MAX_VARIABLES = 8


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
        # "Too many requests in one minute (limit 2000 requests/minute/IP)" (§2.3).
        return (Window("requests-1m", self.env.config.limits.mailpartner_per_min, 60.0),)

    def routes(self) -> dict[tuple[str, str], Any]:
        return {
            ("POST", "/send"): self._send,
            ("GET", "/me"): self._me,
            ("GET", "/bulk-status"): self._bulk_status,
            ("POST", "/unsubscribe/add"): self._unsubscribe_add,
            ("GET", "/unsubscribe/list"): self._unsubscribe_list,
        }

    def _send(self, request: Request, fields: dict[str, Any]) -> Reply:
        params = fields.get("params")
        to = params.get("to") if isinstance(params, dict) else fields.get("to")
        problems, recipients = _check_recipients(to)
        for name, text in (
            ("subject", "Le sujet est requis"),
            ("htmlContent", "Le contenu est requis"),
        ):
            value = fields.get(name)
            if not isinstance(value, str) or not value.strip():
                problems.append(Invalid(name, text))
        problems += _check_reply_to(fields.get("replyTo"))
        problems += _check_variables(fields.get("variables"))
        problems += _check_attachments(fields.get("attachments"))
        problems += check_tag(fields.get("tag"), min_chars=3)
        schedule_problems, schedule = check_schedule(fields, datetime.now())
        problems += schedule_problems
        if problems:
            return self.invalid(problems)
        sandboxed = fields.get("sandbox") in (1, "1", True)
        with self.lock:
            for address in recipients:
                if address.lower() in self._unsubscribed or local_part(address).startswith(
                    "unsubscribed"
                ):
                    return self.fail(14, f"L'adresse {address} est dans la liste des désabonnés")
            if not sandboxed and not self.env.accounts.try_charge(self.name, len(recipients)):
                return self.fail(11, "Crédit insuffisant")
            message_id = secrets.token_hex(12)
            self._messages[message_id] = {"recipients": recipients, "time": self.env.now()}
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
        delivered = self.env.now() - found["time"] >= self.env.config.sms_delivery_delay_s
        items = [
            {
                "email": address,
                "token": f"{message_id}-{index}",
                "status": "Delivered" if delivered else "Pending",
                "cost": self.price_eur,
                "stopMail": False,
                "date": str(int(found["time"])),
            }
            for index, address in enumerate(found["recipients"])
        ]
        return self.ok({"messageId": message_id, "StatutResponseList": items})

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
            created = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
            self._unsubscribed[email.lower()] = (stop_id, created)
        return self.ok({"stopId": stop_id})

    def _unsubscribe_list(self, request: Request, fields: dict[str, Any]) -> Reply:
        with self.lock:
            data = [
                {"id": stop_id, "email": email, "createdAt": created}
                for email, (stop_id, created) in self._unsubscribed.items()
            ]
        return self.ok({"nbData": len(data), "data": data})


def _check_recipients(to: Any) -> tuple[list[Invalid], list[str]]:
    if to is None or to == []:
        return [Invalid("to", "Le destinataire est requis")], []
    if not isinstance(to, list):
        return [Invalid("to", "Les destinataires doivent être une liste de {email, name}")], []
    if len(to) > MAX_RECIPIENTS:
        return [Invalid("to", f"{MAX_RECIPIENTS} destinataires maximum par envoi")], []
    problems: list[Invalid] = []
    recipients: list[str] = []
    for entry in to:
        email = entry.get("email") if isinstance(entry, dict) else None
        if not isinstance(email, str) or not EMAIL_RE.match(email):
            problems.append(Invalid("to", f"L'adresse email n'est pas valide ({email})"))
        else:
            recipients.append(email)
    return problems, list(dict.fromkeys(recipients))


def _check_reply_to(value: Any) -> list[Invalid]:
    if value is None:
        return []
    email = value.get("email") if isinstance(value, dict) else None
    if not isinstance(email, str) or not EMAIL_RE.match(email):
        return [Invalid("replyTo", "L'adresse de réponse n'est pas valide")]
    return []


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
        if not isinstance(item, dict) or not item.get("filename"):
            problems.append(Invalid("attachments", "Le nom de la pièce jointe est requis"))
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
