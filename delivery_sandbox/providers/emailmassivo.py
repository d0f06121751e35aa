"""EmailMassivo (a RuSender white label): ``/api/v1/external-mails/send[-by-template]``.

Wire format (docs/providers/emailmassivo.md §5, seed 003): ``X-Api-Key`` header; a new send is HTTP
**200** ``{"uuid"}`` ("200 OK — Email accepted for processing", seed 003), or **201** with
``--emailmassivo-success-status 201`` (RuSender, RS-DOC); plus ``warning`` when no
``idempotencyKey`` was sent and ``additionalRecipients`` when there is a cc/bcc (seed 003). A
repeat is answered **200 with the first uuid** (seed 003, docs/providers/emailmassivo.md §5.5).
Every error is ``{"message", "statusCode"}`` with the HTTP status
(docs/providers/emailmassivo.md §5.4); validation messages are joined with "," like the RS-DOC
example; 429 carries no ``Retry-After`` (none documented, docs/providers/emailmassivo.md §5.4).
Checks run in this order: 401 key, 400 JSON and fields, 400 attachments (parse, count, type, decoded
size), 413 body over 5 MB, 403 unverified From domain, 404 unknown template, idempotent replay (200,
same uuid), 422 receiver, 402 balance, 200/201.

Sandbox rules ([INFERRED] where the docs are silent):
- From domains whose first label is ``unverified`` are "not verified" → 403.
- Recipients whose local part starts with ``unsubscribed``, ``complained``, ``missing`` or
  ``unavailable`` get the four receiver 422s of seed 003 (checked on ``mail.to`` only);
  "Email receiver unavailable" is the temporary one.
- Template ids 1 to 999 exist; any other ``idTemplateMailUser`` is 404 "TemplateMailUser not
  found by id" (seed 003).
- Idempotency (docs/providers/emailmassivo.md §5.5): the same ``idempotencyKey`` within the window
  answers the first answer (uuid and additionalRecipients) and creates nothing; without a key, an
  equal (from, to, subject, html, text, attachments) - or (from, to, subject, template id, params,
  attachments) by template - within the window does the same. Keyed requests never match keyless
  ones.
- ``additionalRecipients``: one item per cc then bcc address (comma-separated lists are split),
  in that order, each either ``{"uuid"}`` or ``{"error"}`` for an invalid address. The seed
  gives no other field, so items carry no address: a client must match them by position.
- One unit per distinct valid address in to, cc and bcc.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import Any

from delivery_sandbox.providers.base import EMAIL_RE, Env, Provider, local_part
from delivery_sandbox.providers.postal import is_authenticated_domain
from delivery_sandbox.ratelimit import Window
from delivery_sandbox.wire import AcceptedMessage, Reply, Request, json_reply, phrase

__all__ = ["EmailMassivoProvider"]

SEND = "/api/v1/external-mails/send"
SEND_BY_TEMPLATE = "/api/v1/external-mails/send-by-template"
MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_ATTACHMENTS = 20
MAX_ATTACHMENT_BYTES = 5 * 1024 * 1024
MAX_FIELD_CHARS = 255
# RS-DOC's list of forbidden attachment extensions (docs/providers/emailmassivo.md §5.2).
FORBIDDEN_EXTENSIONS = frozenset(
    (  # noqa: SIM905 - RS-DOC's list, kept as it reads
        "ade adp apk appx appxbundle bat cab chm cmd com cpl diagcab diagcfg diagpack dll dmg ex "
        "ex_ exe hta img ins iso isp jar jnlp js jse lib lnk mde msc msi msix msixbundle msp mst "
        "nsh pif ps1 scr sct shb sys vb vbe vbs vhd vxd wsc wsf wsh xll"
    ).split()
)
# The four receiver 422s of seed 003 (docs/providers/emailmassivo.md §5.4), by the recipient's
# local-part prefix.
SUPPRESSED = {
    "unsubscribed": "Email receiver unsubscribed from this API key mails",
    "complained": "Email receiver complained from this API key mails",
    "missing": "Email receiver doesn't exist",
    "unavailable": "Email receiver unavailable",  # "temporarily unavailable" (seed 003)
}
KNOWN_TEMPLATES = range(1, 1000)  # [INFERRED] sandbox rule
# Seed 003: "warning — Returned if idempotencyKey was not provided"; the text is [INFERRED].
NO_KEY_WARNING = (
    "idempotencyKey was not provided: repeats are detected by content for one hour only, "
    "which does not guarantee the absence of missed or extra sends"
)
INVALID_ADDRESS = "Invalid email address"  # [INFERRED] text; seed 003: "error for an invalid..."


class EmailMassivoProvider(Provider):
    name = "emailmassivo"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        # lookup → (the first answer's payload, when), per idempotencyKey or content hash
        self._by_key: dict[str, tuple[dict[str, Any], float]] = {}
        self._by_content: dict[str, tuple[dict[str, Any], float]] = {}

    def reset(self) -> None:
        with self.lock:
            self._by_key.clear()
            self._by_content.clear()

    def windows(self, request: Request) -> Sequence[Window]:
        # 10 requests per second per IP, every request to the API
        # (docs/providers/emailmassivo.md §5.4).
        return (Window("requests-1s", self.env.config.limits.emailmassivo_per_s, 1.0),)

    def throttled(self, request: Request, retry_after: str) -> Reply:
        # docs/providers/emailmassivo.md §5.4: "429 Too Many Requests — request limit exceeded"; a
        # Retry-After header is not documented ([NOT FOUND]), so the strict sandbox sends none.
        return _error(429, "Too Many Requests")

    def fault_reply(self, status: int) -> Reply:
        reply = _error(status, phrase(status))
        reply.outcome = "fault"
        return reply

    def handle(self, request: Request) -> Reply:
        route = request.route.rstrip("/")
        if request.method != "POST" or route not in (SEND, SEND_BY_TEMPLATE):
            return _error(404, f"Cannot {request.method} {request.route}")
        if not self.env.accounts.key_is_valid(self.name, request.header("x-api-key")):
            # RS-DOC's exact text (docs/providers/emailmassivo.md §5.4)
            return _error(401, "Неверный ключ API")
        try:
            body = request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, "Body is not valid JSON")
        template = route == SEND_BY_TEMPLATE
        problems = _validate(body, template=template)
        if problems:
            return _error(400, ",".join(problems))
        assert isinstance(body, dict)
        mail: dict[str, Any] = body["mail"]
        attachment_problem = _check_attachments(mail.get("attachments"))
        if attachment_problem:
            return _error(400, attachment_problem)
        if len(request.body) > MAX_BODY_BYTES:
            # After the attachment checks, so their specific message wins when both apply.
            return _error(413, "request entity too large")
        if not is_authenticated_domain(mail["from"]["email"].rsplit("@", 1)[-1]):
            return _error(403, "User domain is not verified")
        if template and mail["idTemplateMailUser"] not in KNOWN_TEMPLATES:
            return _error(404, "TemplateMailUser not found by id")  # seed 003
        return self._accept(body, mail, template)

    def _accept(self, body: dict[str, Any], mail: dict[str, Any], template: bool) -> Reply:
        key = body.get("idempotencyKey")
        content = None if key else _content_hash(mail, template)
        additional = _additional(mail)
        recipients = _recipients(mail, additional)
        window_s = self.env.config.idempotency_window_s
        with self.lock:
            now = self.env.monotonic()
            cache, lookup = (self._by_key, key) if key else (self._by_content, content)
            assert lookup is not None
            earlier = cache.get(lookup)
            if earlier is not None and now - earlier[1] < window_s:
                # Seed 003 / docs/providers/emailmassivo.md §5.5: "API responds with code 200 and
                # returns the same email uuid as in the first request, repeated sending does not
                # create a new email".
                reply = json_reply(200, _answer(earlier[0], key), outcome="duplicate")
                reply.message_id = earlier[0]["uuid"]
                return reply
            to = mail["to"]["email"]
            for prefix, message in SUPPRESSED.items():
                if local_part(to).startswith(prefix):
                    return _error(422, message)
            if not self.env.accounts.try_charge(self.name, len(recipients)):
                # RS-DOC (docs/providers/emailmassivo.md §5.4)
                return _error(402, "Is not enough resource on user Balance")
            message_id = str(uuid.uuid4())
            first: dict[str, Any] = {"uuid": message_id}
            if additional:
                first["additionalRecipients"] = [item for _address, item in additional]
            cache[lookup] = (first, now)
        status = self.env.config.emailmassivo_success_status
        reply = json_reply(status, _answer(first, key), outcome="accepted")
        reply.message_id = message_id
        reply.message = AcceptedMessage(
            message_id=message_id,
            recipients=recipients,
            fields=body,
            units=len(recipients),
            idempotency_key=key,
            extra={"additional_recipients": first.get("additionalRecipients", [])},
        )
        return reply


def _answer(first: dict[str, Any], key: object) -> dict[str, Any]:
    """The 200/201 body: uuid, additionalRecipients, and warning without a key (seed 003)."""
    return first if key else {**first, "warning": NO_KEY_WARNING}


def _validate(body: Any, *, template: bool) -> list[str]:
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    problems: list[str] = []
    key = body.get("idempotencyKey")
    if key is not None and (not isinstance(key, str) or len(key) > MAX_FIELD_CHARS):
        problems.append("idempotencyKey must be a string shorter than or equal to 255 characters")
    mail = body.get("mail")
    if mail is None:
        return [*problems, "mail should not be null or undefined"]
    if not isinstance(mail, dict):
        return [*problems, "mail must be an object"]
    for side in ("to", "from"):
        problems += _check_party(mail.get(side), f"mail.{side}")
    subject = mail.get("subject")
    if not isinstance(subject, str):
        problems.append("mail.subject must be a string")
    elif not subject.strip():
        problems.append("mail.subject should not be empty")
    optional_strings = ["previewTitle", "cc", "bcc"] + ([] if template else ["html", "text"])
    for name in optional_strings:
        value = mail.get(name)
        if value is not None and not isinstance(value, str):
            problems.append(f"mail.{name} must be a string")
    preview = mail.get("previewTitle")
    if isinstance(preview, str) and len(preview) > MAX_FIELD_CHARS:
        problems.append("mail.previewTitle must be shorter than or equal to 255 characters")
    if mail.get("headers") is not None and not isinstance(mail.get("headers"), dict):
        problems.append("mail.headers must be an object")
    if template:
        template_id = mail.get("idTemplateMailUser")
        if isinstance(template_id, bool) or not isinstance(template_id, int):
            problems.append("mail.idTemplateMailUser must be an integer number")
        params = mail.get("params")
        if params is not None and (
            not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values())
        ):
            problems.append("mail.params must be an object of strings")
    elif not any(isinstance(mail.get(n), str) and mail.get(n) for n in ("html", "text")):
        problems.append("mail.html or mail.text must be provided")
    return problems


def _check_party(value: Any, where: str) -> list[str]:
    """``mail.to`` / ``mail.from``: one ``{email, name}`` object (a list is refused)."""
    if value is None:
        return [f"{where} should not be null or undefined"]
    if not isinstance(value, dict):
        return [f"{where} must be a single {{email, name}} object"]
    problems: list[str] = []
    email = value.get("email")
    if not isinstance(email, str) or not EMAIL_RE.match(email):
        problems.append(f"{where}.email must be an email")
    elif len(email) > MAX_FIELD_CHARS:
        problems.append(f"{where}.email must be shorter than or equal to 255 characters")
    name = value.get("name")
    if name is not None and not isinstance(name, str):
        problems.append(f"{where}.name must be a string")
    elif isinstance(name, str) and len(name) > MAX_FIELD_CHARS:
        problems.append(f"{where}.name must be shorter than or equal to 255 characters")
    return problems


def _check_attachments(value: Any) -> str | None:
    """RS-DOC's attachment refusals (docs/providers/emailmassivo.md §5.2, §5.4); the count message
    is [INFERRED]."""
    if value is None:
        return None
    if not isinstance(value, list):
        return "Attachments parse failed"
    total = 0
    names: list[str] = []
    decoded: list[bytes] = []
    for item in value:
        # Each attachment is a single-key object {"name.ext": "<base64>"} (EM-H; RS-GO).
        if not isinstance(item, dict) or len(item) != 1:
            return "Attachments parse failed"
        ((name, content),) = item.items()
        if not isinstance(content, str) or not name:
            return "Attachments parse failed"
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            return "Attachments parse failed"
        names.append(name)
        decoded.append(data)
        total += len(data)
    if len(value) > MAX_ATTACHMENTS:
        return "Attachments count more than allowed"
    for name in names:
        extension = name.rsplit(".", 1)[1].lower() if "." in name else ""
        if extension in FORBIDDEN_EXTENSIONS:
            return "Attachments type forbidden"
    if total > MAX_ATTACHMENT_BYTES:
        return "Attachments size more than allowed"
    return None


def _additional(mail: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """(address, ``additionalRecipients`` item) per cc then bcc address, in that order."""
    out: list[tuple[str, dict[str, str]]] = []
    for name in ("cc", "bcc"):
        value = mail.get(name)
        if not isinstance(value, str):
            continue
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            if EMAIL_RE.match(part) and len(part) <= MAX_FIELD_CHARS:
                out.append((part, {"uuid": str(uuid.uuid4())}))
            else:
                out.append((part, {"error": INVALID_ADDRESS}))
    return out


def _recipients(mail: dict[str, Any], additional: list[tuple[str, dict[str, str]]]) -> list[str]:
    out = [mail["to"]["email"]] + [address for address, item in additional if "uuid" in item]
    return list(dict.fromkeys(out))


def _content_hash(mail: dict[str, Any], template: bool) -> str:
    fields = ["from", "to", "subject", "attachments"]
    fields += ["idTemplateMailUser", "params"] if template else ["html", "text"]
    picked = {name: mail.get(name) for name in fields}
    picked["template"] = template
    canonical = json.dumps(picked, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _error(status: int, message: str, *, headers: dict[str, str] | None = None) -> Reply:
    return json_reply(
        status, {"message": message, "statusCode": status}, outcome="refused", headers=headers
    )
