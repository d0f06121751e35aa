"""SMS Partner: send, bulk send, balance, status (single, multi, bulk, by tag), cancel, STOP list.

Wire format in docs/providers/smspartner.md §1; the simulator contract is
docs/providers/smspartner.md §1.6. Sandbox rules ([INFERRED] where the docs are silent):
- field problems answer code 9 with the ``error`` list (HTTP 400), more than 500 numbers too;
- a STOP-listed number refuses the whole send with code 14: numbers added with
  ``/stop-sms/add``, and every number ending in ``0014``;
- ``+33600000500`` (or ``0600000500``) answers code 500 ("problem adding the SMS to the
  queue"), nothing is charged or recorded;
- ``+33600000022`` answers code 22 and ``+33600000023`` code 23 (a marketing SMS outside the
  legal hours / on a Sunday or holiday, docs/providers/smspartner.md §1.2.2, §1.3), nothing is
  charged or recorded: how a marketing account's refusals look, whatever the time;
- billing (docs/providers/smspartner.md §1.6): a message of up to 160 characters is 1 SMS, longer
  ones 1 per 153; in Unicode 70 / 67 counted in UTF-16 code units (an emoji counts 2) [67 is
  INFERRED]; ``:br:`` and ``:euro:`` count 2 characters (1 for ``:euro:`` in Unicode); more
  than 10 SMS is code 52; Low Cost (``gamme: 2``) over 160 characters is code 42. Each SMS of
  each number costs one credit (0.038 EUR, the doc example);
- status is ``Waiting`` until ``sms_delivery_delay_s`` after the send (or its scheduled time),
  then ``Delivered`` (docs/providers/smspartner.md §1.4, §1.6 "Waiting → Delivered | Not delivered,
  with a configurable delay"); a number ending in ``0404`` (e.g. ``+33600000404``) ends ``Not
  delivered`` instead; a cancelled send is ``Cancelled``. Each number's statuses are its timeline
  (``delivery_sandbox.timeline``): lookups read it, ``POST /_admin/status`` forces it;
- ``/bulk-send`` (docs/providers/smspartner.md §1.2.3): up to 500 ``SMSList`` entries, each checked
  and billed on its own (per-item ``success``/``code``; item failures use the
  docs/providers/smspartner.md §1.3 codes [INFERRED]); the top level says ``nbSMS``, items
  ``nbSms``; when no entry is accepted the whole request answers the first entry's code [INFERRED];
- status lookups answer the documented shapes only (docs/providers/smspartner.md §1.2.7-§1.2.10):
  ``/bulk-status`` items carry no ``messageId``; ``/bulk-status-by-tag`` answers every recipient of
  every accepted send with that tag, on one page (the pagination parameter is [NOT FOUND]), with the
  first send's ``message_id``; an unknown tag gives an empty list.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from delivery_sandbox.providers.base import Env
from delivery_sandbox.providers.partner import (
    PROVIDER_TZ,
    Invalid,
    PartnerProvider,
    Schedule,
    check_schedule,
    check_tag,
    provider_now,
)
from delivery_sandbox.ratelimit import Window
from delivery_sandbox.wire import AcceptedMessage, Reply, Request

__all__ = ["SmsPartnerProvider", "normalize_number", "segments"]

MAX_NUMBERS = 500
MAX_SEGMENTS = 10
QUEUE_FAILURE_NUMBER = "+33600000500"
MARKETING_REFUSALS = {
    "+33600000022": (22, "Envoi marketing : l'heure d'envoi doit être comprise entre 8h et 22h"),
    "+33600000023": (23, "Envoi marketing : pas d'envoi le dimanche ni les jours fériés"),
}
STOP_SUFFIX = "0014"
NOT_DELIVERED_SUFFIX = "0404"
PRICE_EUR = 0.038  # per SMS, from the send example (docs/providers/smspartner.md §1.2.2)
SENDER_RE = re.compile(r"^[A-Za-z0-9]+$")
CANCEL_MARGIN_S = 5 * 60


def normalize_number(raw: str) -> str | None:
    """E.164 form of a French national (``06…``) or international number; None if invalid."""
    compact = re.sub(r"[\s.\-()]", "", raw)
    if re.fullmatch(r"0[1-9]\d{8}", compact):
        return "+33" + compact[1:]
    if re.fullmatch(r"\+[1-9]\d{7,14}", compact):
        return compact
    if re.fullmatch(r"00[1-9]\d{7,14}", compact):
        return "+" + compact[2:]
    return None


def segments(text: str, *, unicode: bool) -> int:
    """SMS billed for one recipient of ``text`` (docs/providers/smspartner.md §1.2.2 and §1.6)."""
    plain = text.replace(":br:", "\n\n").replace(":euro:", "€" if unicode else "€€")
    # UCS-2 counts UTF-16 code units: a character outside the BMP (an emoji) takes two.
    length = len(plain.encode("utf-16-le", "surrogatepass")) // 2 if unicode else len(plain)
    single, multi = (70, 67) if unicode else (160, 153)
    return 1 if length <= single else math.ceil(length / multi)


class SmsPartnerProvider(PartnerProvider):
    name = "smspartner"
    price_eur = PRICE_EUR

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self._messages: dict[int, dict[str, Any]] = {}
        self._stops: dict[str, tuple[int, str]] = {}
        self._message_ids = itertools.count(1001)
        self._stop_ids = itertools.count(1)

    def reset(self) -> None:
        with self.lock:
            self._messages.clear()
            self._stops.clear()

    def windows(self, request: Request) -> Sequence[Window]:
        return (Window("requests-1m", self.env.config.limits.smspartner_per_min, 60.0),)

    def routes(self) -> dict[tuple[str, str], Any]:
        return {
            ("POST", "/send"): self._send,
            ("POST", "/bulk-send"): self._bulk_send,
            ("GET", "/me"): self._me,
            ("GET", "/message-status"): self._message_status,
            ("POST", "/multi-status"): self._multi_status,
            ("GET", "/bulk-status"): self._bulk_status,
            ("GET", "/bulk-status-by-tag"): self._bulk_status_by_tag,
            ("GET", "/message-cancel"): self._cancel,
            ("POST", "/stop-sms/add"): self._stop_add,
            ("GET", "/stop-sms/list"): self._stop_list,
            ("GET", "/stop-sms/delete"): self._stop_delete,
        }

    # --- send -------------------------------------------------------------------------------

    def _send(self, request: Request, fields: dict[str, Any]) -> Reply:
        problems, numbers = _check_numbers(fields.get("phoneNumbers"))
        text = fields.get("message")
        if not isinstance(text, str) or not text.strip():
            problems.append(Invalid("message", "Le message est requis"))
        option_problems, schedule = _check_options(fields)
        problems += option_problems
        if problems:
            return self.invalid(problems)
        assert isinstance(text, str)
        unicode = fields.get("isUnicode") in (1, "1", True)
        per_number = segments(text, unicode=unicode)
        if str(fields.get("gamme", 1)) == "2" and per_number > 1:
            return self.fail(42, "Le SMS Low Cost est limité à 160 caractères")
        if per_number > MAX_SEGMENTS:
            return self.fail(52, f"{MAX_SEGMENTS} SMS concaténés maximum")
        sandboxed = fields.get("sandbox") in (1, "1", True)
        units = per_number * len(numbers)
        now = self.env.now()
        with self.lock:
            for number in numbers:
                if number in self._stops or number.endswith(STOP_SUFFIX):
                    return self.fail(14, f"Le numéro {number} est dans la liste STOP SMS")
            if QUEUE_FAILURE_NUMBER in numbers:
                return self.fail(500, "Problème lors de l'ajout du SMS dans la file d'attente")
            for number in numbers:
                if number in MARKETING_REFUSALS:
                    return self.fail(*MARKETING_REFUSALS[number])
            if not sandboxed and not self.env.accounts.try_charge(self.name, units):
                return self.fail(11, "Crédit insuffisant")
            message_id = next(self._message_ids)
            tag = fields.get("tag") or None
            self._messages[message_id] = {
                "numbers": numbers,
                "tag": tag,
                "time": now,
                "due": schedule.when.timestamp() if schedule else now,
                "segments": per_number,
                "units": 0 if sandboxed else units,
                "cancelled": False,
            }
        self._timeline(message_id, self._messages[message_id], fields)
        payload: dict[str, Any] = {
            "message_id": message_id,
            "nb_sms": units,
            "cost": round(units * PRICE_EUR, 3),
            "currency": "EUR",
        }
        if schedule is not None:
            payload["scheduledDeliveryDate"] = schedule.as_text()
        return self._accepted(payload, message_id, numbers, fields, units, sandboxed, {})

    def _accepted(
        self,
        payload: dict[str, Any],
        message_id: int,
        numbers: list[str],
        fields: dict[str, Any],
        units: int,
        sandboxed: bool,
        extra: dict[str, Any],
    ) -> Reply:
        """The success answer of ``/send`` and ``/bulk-send``, with the accepted message on
        record (a ``sandbox=1`` send is recorded but not billed)."""
        reply = self.ok(payload, outcome="accepted")
        reply.message_id = str(message_id)
        tag = fields.get("tag") or None
        reply.message = AcceptedMessage(
            message_id=str(message_id),
            recipients=numbers,
            fields=fields,
            units=0 if sandboxed else units,
            tag=tag if isinstance(tag, str) else None,
            extra={"sandbox": True} if sandboxed else extra,
        )
        return reply

    def _bulk_send(self, request: Request, fields: dict[str, Any]) -> Reply:
        """``POST /bulk-send``: a different text per number, each entry on its own
        (docs/providers/smspartner.md §1.2.3)."""
        entries = fields.get("SMSList")
        problems: list[Invalid] = []
        if not isinstance(entries, list) or not entries:
            problems.append(Invalid("SMSList", "La liste des SMS est requise"))
        elif len(entries) > MAX_NUMBERS:
            problems.append(Invalid("SMSList", f"{MAX_NUMBERS} SMS maximum par lot"))
        option_problems, schedule = _check_options(fields)
        problems += option_problems
        if problems:
            return self.invalid(problems)
        assert isinstance(entries, list)
        unicode = fields.get("isUnicode") in (1, "1", True)
        sandboxed = fields.get("sandbox") in (1, "1", True)
        results: list[dict[str, Any]] = []
        accepted: list[tuple[str, int]] = []  # (number, SMS billed) per accepted entry
        low_cost = str(fields.get("gamme", 1)) == "2"
        with self.lock:
            for entry in entries:
                result = self._bulk_entry(entry, unicode=unicode, low_cost=low_cost)
                number, units = result.pop("_number", None), result.pop("_units", 0)
                if result["success"]:
                    accepted.append((number, units))
                results.append(result)
            if not accepted:
                first = results[0]
                return self.fail(first["code"], first.get("message", "Aucun SMS envoyé"))
            total = sum(units for _, units in accepted)
            numbers = list(dict.fromkeys(number for number, _ in accepted))
            if not sandboxed and not self.env.accounts.try_charge(self.name, total):
                return self.fail(11, "Crédit insuffisant")
            message_id = next(self._message_ids)
            tag = fields.get("tag") or None
            now = self.env.now()
            self._messages[message_id] = {
                "numbers": numbers,
                "tag": tag,
                "time": now,
                "due": schedule.when.timestamp() if schedule else now,
                "segments": max(units for _, units in accepted),
                "per_number": dict(accepted),
                "units": 0 if sandboxed else total,
                "cancelled": False,
            }
        self._timeline(message_id, self._messages[message_id], fields)
        payload: dict[str, Any] = {
            "message_id": message_id,
            "currency": "EUR",
            "cost": round(total * PRICE_EUR, 3),
            # this casing at the top level, ``nbSms`` per item (docs/providers/smspartner.md §1.2.3)
            "nbSMS": total,
            "SMSResponse_List": results,
        }
        return self._accepted(
            payload, message_id, numbers, fields, total, sandboxed, {"bulk": True}
        )

    def _bulk_entry(self, entry: Any, *, unicode: bool, low_cost: bool) -> dict[str, Any]:
        """One ``SMSList`` item's result; ``_number``/``_units`` are removed by the caller."""
        raw = entry.get("phoneNumber") if isinstance(entry, dict) else None
        text = entry.get("message") if isinstance(entry, dict) else None
        number = normalize_number(raw) if isinstance(raw, str) else None
        shown = number or raw

        def refused(code: int, message: str) -> dict[str, Any]:
            return {"success": False, "code": code, "phoneNumber": shown, "message": message}

        if number is None:
            return refused(9, f"Ce numero de telephone n'est pas valide ({raw})")
        if not isinstance(text, str) or not text.strip():
            return refused(43, "Le message est requis")
        per_number = segments(text, unicode=unicode)
        if low_cost and per_number > 1:
            return refused(42, "Le SMS Low Cost est limité à 160 caractères")
        if per_number > MAX_SEGMENTS:
            return refused(52, f"{MAX_SEGMENTS} SMS concaténés maximum")
        if number in self._stops or number.endswith(STOP_SUFFIX):
            return refused(14, f"Le numéro {number} est dans la liste STOP SMS")
        if number == QUEUE_FAILURE_NUMBER:
            return refused(500, "Problème lors de l'ajout du SMS dans la file d'attente")
        if number in MARKETING_REFUSALS:
            return refused(*MARKETING_REFUSALS[number])
        return {
            "success": True,
            "code": 200,
            "nbSms": per_number,
            "cost": round(per_number * PRICE_EUR, 3),
            "phoneNumber": number,
            "_number": number,
            "_units": per_number,
        }

    # --- account and status -----------------------------------------------------------------

    def _me(self, request: Request, fields: dict[str, Any]) -> Reply:
        balance = self.env.accounts.balance(self.name)
        credits = {
            "creditSms": balance,
            "creditSmsECO": balance,
            "creditHlr": 0,
            "toSend": 0,
            "balance": self.credits_text(),
            "currency": "EUR",
        }
        return self.ok({"user": {"username": "sandbox@sandbox.test"}, "credits": credits})

    def _timeline(self, message_id: int, message: dict[str, Any], fields: dict[str, Any]) -> None:
        """Each number: ``Waiting`` from its due time, then ``Delivered`` (or ``Not delivered``
        for a number ending in ``0404``) after ``sms_delivery_delay_s``
        (docs/providers/smspartner.md §1.4, §1.6)."""
        due = message["due"]
        done_at = due + self.env.config.sms_delivery_delay_s
        record = {
            "provider": self.name,
            "message_id": str(message_id),
            "fields": fields,
            "tag": message["tag"],
            "recipients": list(message["numbers"]),
        }
        for number in message["numbers"]:
            final = "Not delivered" if number.endswith(NOT_DELIVERED_SUFFIX) else "Delivered"
            self.env.timeline.accept(
                self.name,
                str(message_id),
                number,
                [(due, "Waiting", None), (done_at, final, None)],
                record,
            )

    def _status(self, message_id: int, message: dict[str, Any], number: str) -> str:
        if message["cancelled"]:
            return "Cancelled"
        step = self.env.timeline.status(self.name, str(message_id), number)
        return "Waiting" if step is None else step[1]

    def _lookup(self, raw_id: Any) -> tuple[int, dict[str, Any]] | None:
        try:
            message_id = int(raw_id)
        except (TypeError, ValueError):
            return None
        with self.lock:
            found = self._messages.get(message_id)
        return None if found is None else (message_id, found)

    def _message_status(self, request: Request, fields: dict[str, Any]) -> Reply:
        if not fields.get("messageId"):
            return self.fail(3, "L'identifiant du message est requis")
        if not fields.get("phoneNumber"):
            return self.fail(2, "Le numéro de téléphone est requis")
        found = self._lookup(fields["messageId"])
        number = normalize_number(str(fields["phoneNumber"]))
        if found is None or number not in found[1]["numbers"]:
            return self.fail(4, "Message introuvable")
        message_id, message = found
        return self.ok(
            {
                "number": number,
                "messageId": str(message_id),
                "stopSms": False,
                # Paris wall-clock time, whatever the host's zone: the platform is French
                # and the driver reads this form as Europe/Paris (PROVIDER_TZ).
                "date": datetime.fromtimestamp(message["time"], PROVIDER_TZ).strftime(
                    "%Y-%m-%d %H:%M:%S"
                ),
                "statut": self._status(message_id, message, number or ""),
                "cost": round(
                    message.get("per_number", {}).get(number, message["segments"]) * PRICE_EUR, 3
                ),
                "countryCode": "FR" if number and number.startswith("+33") else "",
                "currency": "EUR",
            }
        )

    def _multi_status(self, request: Request, fields: dict[str, Any]) -> Reply:
        items = fields.get("SMSStatut_List")
        if not isinstance(items, list) or not items:
            return self.invalid([Invalid("SMSStatut_List", "La liste est requise")])
        if len(items) > MAX_NUMBERS:
            return self.invalid([Invalid("SMSStatut_List", "500 éléments maximum")])
        out: list[dict[str, Any]] = []
        for item in items:
            item = item if isinstance(item, dict) else {}
            number = normalize_number(str(item.get("phoneNumber", "")))
            found = self._lookup(item.get("messageId"))
            base = {"phoneNumber": item.get("phoneNumber"), "messageId": item.get("messageId")}
            if found is None or number not in found[1]["numbers"]:
                out.append({"success": False, "code": 4, **base, "status": "Numéro introuvable"})
                continue
            message_id, message = found
            out.append(
                {
                    "success": True,
                    "code": 200,
                    **base,
                    "status": self._status(message_id, message, number or ""),
                    "date": str(int(message["time"])),
                    "stopSms": "0",
                    "isSpam": "0",
                }
            )
        return self.ok({"StatutResponse_List": out})

    def _recipients(self, message_id: int, message: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            # docs/providers/smspartner.md §1.2.9: exactly these fields; the id is the answer's
            # top-level message_id.
            {
                "phoneNumber": number,
                "status": self._status(message_id, message, number),
                "stopSMS": False,
                "date": str(int(message["time"])),
            }
            for number in message["numbers"]
        ]

    def _bulk_status(self, request: Request, fields: dict[str, Any]) -> Reply:
        if not fields.get("messageId"):
            return self.fail(3, "L'identifiant du message est requis")
        found = self._lookup(fields["messageId"])
        if found is None:
            return self.fail(4, "Message introuvable")
        message_id, message = found
        items = self._recipients(message_id, message)
        return self.ok({"message_id": str(message_id), "StatutResponse_List": items})

    def _bulk_status_by_tag(self, request: Request, fields: dict[str, Any]) -> Reply:
        tag = fields.get("tag")
        if not tag:
            return self.invalid([Invalid("tag", "Le tag est requis")])
        with self.lock:
            tagged = [(i, m) for i, m in self._messages.items() if m["tag"] == tag]
        items = [item for i, m in tagged for item in self._recipients(i, m)]
        payload: dict[str, Any] = {
            "StatutResponse_List": items,
            "currentPage": 1,
            "total": len(items),
        }
        if tagged:
            payload = {"message_id": str(tagged[0][0]), **payload}
        return self.ok(payload)

    def _cancel(self, request: Request, fields: dict[str, Any]) -> Reply:
        if not fields.get("messageId"):
            return self.fail(3, "L'identifiant du message est requis")
        found = self._lookup(fields["messageId"])
        if found is None:
            return self.fail(4, "Message introuvable")
        with self.lock:
            message = found[1]
            if message["cancelled"]:
                return self.fail(5, "L'envoi a déjà été annulé")
            left_s = message["due"] - self.env.now()
            if left_s <= 0:
                return self.fail(7, "Le SMS a déjà été envoyé")
            if left_s < CANCEL_MARGIN_S:
                return self.fail(6, "Annulation impossible moins de 5 minutes avant l'envoi")
            message["cancelled"] = True
            # Nothing more happens to it: no delivery, no push saying it was delivered.
            self.env.timeline.cancel(self.name, str(found[0]))
            if message["units"]:
                self.env.accounts.refund(self.name, message["units"])
        return self.ok({"message": "L'envoi du SMS a été annulé."})

    # --- STOP list --------------------------------------------------------------------------

    def _stop_add(self, request: Request, fields: dict[str, Any]) -> Reply:
        # The doc and the Go client say phoneNumber; the official Python sample sends
        # phoneNumbers (docs/providers/smspartner.md §1.2.12). Both are read.
        raw = fields.get("phoneNumber", fields.get("phoneNumbers"))
        if not raw:
            return self.fail(2, "Le numéro de téléphone est requis")
        number = normalize_number(str(raw))
        if number is None:
            return self.fail(9, f"Ce numero de telephone n'est pas valide ({raw})")
        with self.lock:
            if number in self._stops:
                return self.fail(15, "Le numéro est déjà dans la liste")
            stop_id = next(self._stop_ids)
            self._stops[number] = (stop_id, provider_now().strftime("%Y-%m-%d %H:%M:%S"))
        return self.ok({"stopId": stop_id})

    def _stop_list(self, request: Request, fields: dict[str, Any]) -> Reply:
        with self.lock:
            data = [
                {"id": stop_id, "phoneNumber": number, "createdAt": created}
                for number, (stop_id, created) in self._stops.items()
            ]
        return self.ok({"nbData": len(data), "data": data})

    def _stop_delete(self, request: Request, fields: dict[str, Any]) -> Reply:
        raw_id = fields.get("id")
        if not raw_id:
            return self.fail(3, "L'identifiant est requis")
        with self.lock:
            for number, (stop_id, _) in list(self._stops.items()):
                if str(stop_id) == str(raw_id):
                    del self._stops[number]
                    return self.ok({})
        return self.fail(4, "Identifiant introuvable")


def _check_numbers(value: Any) -> tuple[list[Invalid], list[str]]:
    if value is None or value == "":
        return [Invalid("phoneNumbers", "Le numéro de téléphone est requis")], []
    if not isinstance(value, str):
        # Numbers are one comma-separated string (docs/providers/smspartner.md §1.2.2); a JSON list
        # is a client bug.
        return [Invalid("phoneNumbers", "Cette valeur doit être de type string.")], []
    raw_numbers = [part.strip() for part in value.split(",") if part.strip()]
    if len(raw_numbers) > MAX_NUMBERS:
        return [Invalid("phoneNumbers", f"{MAX_NUMBERS} numéros maximum par envoi")], []
    problems: list[Invalid] = []
    numbers: list[str] = []
    for raw in raw_numbers:
        number = normalize_number(raw)
        if number is None:
            problems.append(
                Invalid("phoneNumbers", f"Ce numero de telephone n'est pas valide ({raw})")
            )
        else:
            numbers.append(number)
    if not raw_numbers:
        problems.append(Invalid("phoneNumbers", "Le numéro de téléphone est requis"))
    return problems, list(dict.fromkeys(numbers))


def _check_sender(value: Any) -> list[Invalid]:
    if value is None or value == "":
        return []  # an operator short code is used (docs/providers/smspartner.md §1.2.2)
    if not isinstance(value, str) or not SENDER_RE.match(value):
        return [Invalid("sender", "L'emetteur ne doit pas contenir de caracteres speciaux")]
    if len(value) < 3:
        return [Invalid("sender", "L'emetteur doit contenir au moins 3 caracteres")]
    if len(value) > 11:
        return [Invalid("sender", "L'emetteur ne peut pas etre plus long que 11 caracteres")]
    return []


def _check_options(fields: dict[str, Any]) -> tuple[list[Invalid], Schedule | None]:
    """The optional fields ``/send`` and ``/bulk-send`` share (docs/providers/smspartner.md §1.2.2,
    §1.2.3): sender, tag, gamme, the 0/1 flags and the schedule; returns the problems and the parsed
    schedule."""
    problems = _check_sender(fields.get("sender"))
    problems += check_tag(fields.get("tag"), min_chars=1)
    gamme = fields.get("gamme", 1)
    if gamme not in (1, 2, "1", "2"):
        problems.append(Invalid("gamme", "La gamme doit valoir 1 (Premium) ou 2 (Low Cost)"))
    for flag in ("isUnicode", "isStopSms", "sandbox"):
        if fields.get(flag) not in (None, 0, 1, "0", "1", True, False):
            problems.append(Invalid(flag, "La valeur doit être 0 ou 1"))
    schedule_problems, schedule = check_schedule(fields, provider_now())
    return problems + schedule_problems, schedule
