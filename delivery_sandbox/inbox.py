"""``/_inbox/``: a web page of what each simulated provider accepted, and its JSON API.

GET /_inbox/                         the page (HTML; its script and style are separate files)
GET /_inbox/inbox.js, /_inbox/inbox.css
GET /_inbox/api/messages?provider=&recipient=&limit=
                                     {"messages": [views], "total": N, "latest_seq": S}
                                     newest first; ``recipient`` matches part of an address or
                                     number, case-insensitively; ``limit`` at most 500 (100)
GET /_inbox/api/messages/<seq>       {"message": view}

A view is the provider's wire fields read back into one shape (``channel``, ``from``, ``to``,
``subject``, ``text``, ``html``, ``attachments`` by name, ``sender``, ``parts``, …) plus
``answer``: the HTTP status, outcome and message id the provider gave.

Safety: the page never inserts message content as markup. Text goes in with ``textContent``;
an HTML body goes into an ``<iframe sandbox srcdoc>`` without ``allow-scripts`` (nor
``allow-same-origin``), so no script in a mail runs, and the page carries a strict
Content-Security-Policy (scripts only from the page's own file, no inline script, no remote
images or connections), which a srcdoc frame inherits as a second wall.

Long fields: the request log keeps strings up to ``MAX_FIELD_CHARS`` (longer ones as a length
and digest); the inbox reads the Recorder's fuller in-memory copy of the newest messages
(``INBOX_FIELD_CHARS``, ``INBOX_KEEP``) and says plainly when a body was not kept
(``not_kept``: the field, its length and SHA-256).
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

from delivery_sandbox.accounts import PREFIXES
from delivery_sandbox.wire import Reply, json_reply

if TYPE_CHECKING:
    from delivery_sandbox.server import Sandbox

__all__ = ["CSP", "INBOX_PATH", "INBOX_PREFIX", "handle_inbox", "message_view"]

INBOX_PREFIX = "/_inbox"
INBOX_PATH = INBOX_PREFIX + "/"

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        # Mails style themselves inline; styles cannot run code, and the page's own text is
        # never parsed as markup.
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",  # no remote images: a mail's tracking pixel stays unloaded
        "connect-src 'self'",
        "frame-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

_STATIC = {
    "/": ("inbox.html", "text/html"),
    "/inbox.js": ("inbox.js", "text/javascript"),
    "/inbox.css": ("inbox.css", "text/css"),
}

_CHANNEL = {
    "postal": "email",
    "emailmassivo": "email",
    "mailpartner": "email",
    "smspartner": "sms",
    "voicepartner": "voice",
}

DEFAULT_LIMIT = 100
MAX_LIMIT = 500


def handle_inbox(sandbox: Sandbox, method: str, path: str, query: Mapping[str, list[str]]) -> Reply:
    route = path.removeprefix(INBOX_PREFIX) or "/"
    if method != "GET":
        return json_reply(405, {"error": "the inbox is read-only (GET)"})
    if route in _STATIC:
        name, content_type = _STATIC[route]
        body = resources.files("delivery_sandbox").joinpath("inbox_static", name).read_bytes()
        return _secured(Reply(status=200, body=body, content_type=content_type))
    if route.rstrip("/") == "/api/messages":
        return _secured(_list(sandbox, query))
    if route.startswith("/api/messages/"):
        seq = route.removeprefix("/api/messages/")
        if not seq.isdigit():
            return _secured(json_reply(404, {"error": "no such message"}))
        found = [m for m in sandbox.recorder.messages(since=int(seq) - 1) if m["seq"] == int(seq)]
        if not found:
            return _secured(json_reply(404, {"error": f"no message {seq}"}))
        return _secured(json_reply(200, {"message": _view(sandbox, found[0], {})}))
    return _secured(json_reply(404, {"error": f"no inbox page {route}"}))


def _secured(reply: Reply) -> Reply:
    reply.headers.update(
        {
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        }
    )
    return reply


def _arg(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0].strip() if values and values[0].strip() else None


def _list(sandbox: Sandbox, query: Mapping[str, list[str]]) -> Reply:
    provider = _arg(query, "provider")
    if provider is not None and provider not in PREFIXES:
        return json_reply(400, {"error": f"unknown provider {provider!r}"})
    recipient = (_arg(query, "recipient") or "").lower()
    raw_limit = _arg(query, "limit") or str(DEFAULT_LIMIT)
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        return json_reply(400, {"error": f"limit must be 1 to {MAX_LIMIT}"})
    messages = sandbox.recorder.messages(provider)
    if recipient:
        messages = [
            m for m in messages if any(recipient in str(r).lower() for r in m["recipients"])
        ]
    newest = messages[::-1][: int(raw_limit)]
    requests = {r["seq"]: r for r in sandbox.recorder.requests(provider)} if newest else {}
    return json_reply(
        200,
        {
            "messages": [_view(sandbox, m, requests) for m in newest],
            "total": len(messages),
            "latest_seq": newest[0]["seq"] if newest else 0,
        },
    )


def _view(sandbox: Sandbox, record: dict[str, Any], requests: dict[int, Any]) -> dict[str, Any]:
    request = requests.get(record["request_seq"])
    if request is None:
        found = sandbox.recorder.requests(since=record["request_seq"] - 1)
        request = next((r for r in found if r["seq"] == record["request_seq"]), {})
    fields = sandbox.recorder.full_fields(record["seq"]) or record["fields"]
    return message_view(record, fields, request)


def message_view(
    record: dict[str, Any], fields: dict[str, Any], request: dict[str, Any]
) -> dict[str, Any]:
    """One accepted message in the inbox's shape (see the module docstring)."""
    provider = str(record["provider"])
    view: dict[str, Any] = {
        "seq": record["seq"],
        "time": record["time"],
        "provider": provider,
        "channel": _CHANNEL.get(provider, "other"),
        "route": record["route"],
        "message_id": record["message_id"],
        "recipients": list(record["recipients"]),
        "tag": record.get("tag"),
        "units": record.get("units"),
        "answer": {
            "status": request.get("status"),
            "outcome": request.get("outcome"),
            "message_id": request.get("message_id", record["message_id"]),
            "duration_ms": request.get("duration_ms"),
        },
        "attachments": [],
        "not_kept": [],
    }
    reader = _READERS.get(provider)
    if reader is not None:
        reader(view, fields)
    for name in ("held", "additional_recipients", "sandbox", "mode"):
        if record.get(name):
            view.setdefault("extra", {})[name] = record[name]
    return view


def _text(view: dict[str, Any], name: str, value: Any) -> str | None:
    """A string field; one kept only as a digest is reported in ``not_kept``."""
    if isinstance(value, dict) and "chars" in value and "sha256" in value:
        view["not_kept"].append({"field": name, "chars": value["chars"], "sha256": value["sha256"]})
        return None
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _mailbox(value: Any) -> str:
    if isinstance(value, dict):
        addr = str(value.get("email", ""))
        name = value.get("name")
        return f"{name} <{addr}>" if name else addr
    return str(value)


def _mailboxes(value: Any) -> list[str]:
    if value is None:
        return []
    return [_mailbox(v) for v in (value if isinstance(value, list) else [value])]


def _size(content: Any) -> int | None:
    if isinstance(content, dict) and "chars" in content:
        return int(content["chars"]) * 3 // 4  # base64 length → bytes, roughly
    if isinstance(content, str):
        return len(content) * 3 // 4
    return None


def _postal(view: dict[str, Any], f: dict[str, Any]) -> None:
    # /send/raw (docs/providers/postal.md §4.3): a whole RFC 2822 message
    if "data" in f or "mail_from" in f:
        view["from"] = str(f.get("mail_from", ""))
        view["to"] = _mailboxes(f.get("rcpt_to"))
        raw = _text(view, "data", f.get("data"))
        if raw is not None:
            _read_raw(view, raw)
        return
    view["from"] = _mailbox(f.get("from", ""))
    view["to"] = _mailboxes(f.get("to"))
    view["cc"] = _mailboxes(f.get("cc"))
    view["bcc"] = _mailboxes(f.get("bcc"))
    view["reply_to"] = _mailbox(f["reply_to"]) if f.get("reply_to") else None
    view["subject"] = _text(view, "subject", f.get("subject"))
    view["text"] = _text(view, "plain_body", f.get("plain_body"))
    view["html"] = _text(view, "html_body", f.get("html_body"))
    view["headers"] = f.get("headers") or {}
    view["attachments"] = [
        {
            "name": str(a.get("name")),
            "content_type": a.get("content_type"),
            "size": _size(a.get("data")),
        }
        for a in f.get("attachments") or []
        if isinstance(a, dict)
    ]


def _read_raw(view: dict[str, Any], raw: str) -> None:
    try:
        parsed = email.message_from_bytes(base64.b64decode(raw), policy=email.policy.default)
    except (binascii.Error, ValueError):
        return
    view["subject"] = str(parsed.get("subject", "")) or None
    view["from"] = str(parsed.get("from", "")) or view.get("from")
    for part in parsed.walk():
        if part.is_multipart():
            continue
        filename = part.get_filename()
        if filename:
            payload = part.get_payload(decode=True)
            size = len(payload) if isinstance(payload, bytes) else None
            view["attachments"].append(
                {"name": filename, "content_type": part.get_content_type(), "size": size}
            )
        elif part.get_content_type() in ("text/plain", "text/html"):
            key = "text" if part.get_content_type() == "text/plain" else "html"
            try:
                view.setdefault(key, part.get_content())
            except (LookupError, ValueError):
                continue


def _emailmassivo(view: dict[str, Any], f: dict[str, Any]) -> None:
    mail = f.get("mail") if isinstance(f.get("mail"), dict) else {}
    assert isinstance(mail, dict)
    view["from"] = _mailbox(mail.get("from", ""))
    view["to"] = _mailboxes(mail.get("to"))
    view["cc"] = _mailboxes(mail.get("cc"))
    view["bcc"] = _mailboxes(mail.get("bcc"))
    view["subject"] = _text(view, "mail.subject", mail.get("subject"))
    view["text"] = _text(view, "mail.text", mail.get("text"))
    view["html"] = _text(view, "mail.html", mail.get("html"))
    view["headers"] = mail.get("headers") or {}
    if mail.get("idTemplateMailUser") is not None:
        view["template"] = {"id": mail["idTemplateMailUser"], "params": mail.get("params")}
    for item in mail.get("attachments") or []:
        # docs/providers/emailmassivo.md §5.2: [{"name.ext": "<base64>"}]
        if isinstance(item, dict):
            for name, content in item.items():
                view["attachments"].append(
                    {"name": name, "content_type": None, "size": _size(content)}
                )


def _mailpartner(view: dict[str, Any], f: dict[str, Any]) -> None:
    params = f.get("params") if isinstance(f.get("params"), dict) else {}
    assert isinstance(params, dict)
    # docs/providers/mailpartner.md §2.2: the sender is set on the account, not in the request
    view["from"] = None
    view["to"] = _mailboxes(params.get("to"))
    view["reply_to"] = _mailbox(f["replyTo"]) if f.get("replyTo") else None
    view["subject"] = _text(view, "subject", f.get("subject"))
    view["html"] = _text(view, "htmlContent", f.get("htmlContent"))
    view["attachments"] = [
        {
            # docs/providers/mailpartner.md §2.2: the file name travels without its extension.
            "name": str(a.get("filename")),
            "content_type": a.get("contentType"),
            "size": _size(a.get("base64Content")),
        }
        for a in f.get("attachments") or []
        if isinstance(a, dict)
    ]


def _numbers(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [n.strip() for n in str(value or "").split(",") if n.strip()]


def _smspartner(view: dict[str, Any], f: dict[str, Any]) -> None:
    view["to"] = _numbers(f.get("phoneNumbers"))
    view["text"] = _text(view, "message", f.get("message"))
    view["sender"] = f.get("sender")
    view["parts"] = view["units"]
    view["unicode"] = bool(f.get("isUnicode"))


def _voicepartner(view: dict[str, Any], f: dict[str, Any]) -> None:
    view["to"] = _numbers(f.get("phoneNumbers"))
    view["text"] = _text(view, "text", f.get("text"))
    view["sender"] = f.get("sender")
    view["lang"] = f.get("lang")
    view["audio_token"] = f.get("tokenAudio")
    view["notification_email"] = f.get("emailForNotification")
    view["parts"] = view["units"]


_READERS = {
    "postal": _postal,
    "emailmassivo": _emailmassivo,
    "mailpartner": _mailpartner,
    "smspartner": _smspartner,
    "voicepartner": _voicepartner,
}
