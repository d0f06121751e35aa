"""``delivery-worker send email|sms|voice``: one message from flags, a JSON file or stdin.

The message is validated by the producer's own rules (the same ``InvalidMessage`` an
application gets, each error naming its field), enqueued through the public producer API
(:class:`worker.producer.Producer`), and with ``--wait`` followed to its outcome.

Exit status (also in ``delivery-worker send --help``):

====  =============================================================================
0     enqueued (without ``--wait``), or sent; with ``--until delivered``: delivered, or
      sent to a provider without a status lookup (``sent (no lookup)``)
1     failed, expired or dead: the result's ``error`` says why; with ``--until
      delivered``, also bounced, failed or rejected after the send
2     invalid input: a bad flag, an unreadable JSON file, or a message the rules refuse
3     parked: the provider is paused (e.g. out of credit); resumed later, not failed
4     ``--wait`` timed out before the delivery settled (or, with ``--until delivered``,
      before tracking saw a final state); it goes on in the workers
69    Redis (broker or shared store) unreachable: nothing was enqueued (``EX_UNAVAILABLE``)
====  =============================================================================
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import sys
import time
from collections.abc import Callable
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from worker.stores.keys import keys_for

__all__ = [
    "EXIT_CODES",
    "add_send_parser",
    "build_message",
    "delivery_state",
    "has_status_lookup",
    "settled_state",
    "wait",
]

EXIT_SENT = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_PARKED = 3
EXIT_TIMEOUT = 4

EXIT_CODES = {
    "sent": EXIT_SENT,
    "failed": EXIT_FAILED,
    "expired": EXIT_FAILED,
    "dead": EXIT_FAILED,
    "parked": EXIT_PARKED,
}

_EPILOG = """\
exit status: 0 enqueued (or sent, with --wait; delivered, with --until delivered);
1 failed, expired or dead (or bounced, failed, rejected); 2 invalid input;
3 parked (provider paused, resumed later); 4 --wait timed out (the delivery goes on);
69 Redis unreachable (nothing enqueued).
Flags override the fields of a --json message."""

_DEFAULT_PROVIDER = {"sms": "smspartner", "voice": "voicepartner"}

_TIMEOUT_S = {"sent": 60.0, "delivered": 180.0}
"""``--wait``'s default bound. A delivery report comes from the provider's status lookup,
first asked ``DELIVERY_TRACKING_POLL_FIRST_S`` (60 s by default) after the send, or from a
push: the delivered wait must outlast that first lookup."""

_POLL_S = 0.1


class InputError(ValueError):
    """A command-line input that cannot become a message (exit status 2)."""


def add_send_parser(sub: Any) -> None:
    """Register ``send`` and its three channels on the CLI's subparsers."""
    send = sub.add_parser(
        "send",
        help="validate and enqueue one message (email, sms, voice); --wait for its outcome",
        description="Validate and enqueue one message; --wait prints its result.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    channels = send.add_subparsers(dest="channel", required=True)

    def common(name: str, help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = channels.add_parser(
            name, help=help_, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.add_argument(
            "--json",
            metavar="FILE",
            help="the message as a JSON object from FILE, or - for stdin (the task contract)",
        )
        p.add_argument("--provider", help="provider name (email: routed when left out)")
        p.add_argument("--idempotency-key", help="the same key never sends twice")
        p.add_argument("--deadline", help="ISO 8601 time after which the message expires")
        p.add_argument(
            "--priority",
            choices=["high", "normal", "bulk"],
            help="the lane: high (codes, resets), normal (the default), bulk (campaigns)",
        )
        p.add_argument("--tenant", help="the sender or customer key (fair shares between them)")
        p.add_argument("--queue", help="publish to this queue (default: the first DELIVERY_QUEUES)")
        p.add_argument("--wait", action="store_true", help="wait for the outcome and print it")
        p.add_argument(
            "--until",
            choices=["sent", "delivered"],
            default="sent",
            help="with --wait: the send outcome (default), or the delivery state tracking "
            "reports afterwards (delivered, bounced, failed, ...)",
        )
        p.add_argument(
            "--timeout",
            type=float,
            default=None,
            help=f"seconds --wait waits in all (default {_TIMEOUT_S['sent']:g}; "
            f"{_TIMEOUT_S['delivered']:g} with --until delivered)",
        )
        p.set_defaults(func=run_send)
        return p

    email = common("email", "an email (Postal, EmailMassivo, Mail Partner)")
    email.add_argument("--to", action="append", metavar="ADDR", help='"Name <a@b.c>" or a@b.c')
    email.add_argument("--cc", action="append", metavar="ADDR")
    email.add_argument("--bcc", action="append", metavar="ADDR")
    email.add_argument("--from", dest="from_", metavar="ADDR", help="the sender address")
    email.add_argument("--reply-to", metavar="ADDR")
    email.add_argument("--subject")
    email.add_argument("--text", help="the plain-text body")
    email.add_argument("--html", help="the HTML body")
    email.add_argument("--html-file", metavar="FILE", help="read the HTML body from FILE")
    email.add_argument("--attach", action="append", metavar="FILE", help="attach a file")
    email.add_argument("--header", action="append", metavar="NAME=VALUE", help="a custom header")
    email.add_argument("--tag")

    sms = common("sms", "an SMS (SMS Partner)")
    sms.add_argument("--to", action="append", metavar="NUMBER", help="E.164, e.g. +33612345678")
    sms.add_argument("--text")
    sms.add_argument("--sender", help="3-11 alphanumerics")
    sms.add_argument("--tag")

    voice = common("voice", "a voice call or voicemail drop (Voice Partner)")
    voice.add_argument("--to", action="append", metavar="NUMBER", help="E.164")
    voice.add_argument("--mode", choices=["tts", "voicemail"], help="default tts")
    voice.add_argument("--text", help="the text to speak")
    voice.add_argument("--audio-token", help="a prerecorded audio file's token")
    voice.add_argument("--lang", help="e.g. fr or en-GB")
    voice.add_argument("--sender", help="E.164 caller id")
    voice.add_argument("--notification-email", help="voicemail report address")
    voice.add_argument("--speech-rate", type=float)


def _address(raw: str) -> dict[str, str]:
    name, addr = parseaddr(raw)
    out = {"email": addr or raw}
    if name:
        out["name"] = name
    return out


def _read_json(source: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"--json: cannot read {source}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(f"--json: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError("--json: the message must be a JSON object")
    return data


def _attachment(path: str) -> dict[str, str]:
    try:
        content = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"--attach: cannot read {path}: {exc.strerror}") from None
    content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return {
        "filename": Path(path).name,
        "content_type": content_type,
        "content": base64.b64encode(content).decode("ascii"),
    }


def build_message(channel: str, args: argparse.Namespace) -> dict[str, Any]:
    """The message dict: ``--json`` first, then each given flag over it."""
    msg: dict[str, Any] = _read_json(args.json) if args.json else {}

    def put(field: str, value: Any) -> None:
        if value is not None:
            msg[field] = value

    put(
        "provider", args.provider or (None if "provider" in msg else _DEFAULT_PROVIDER.get(channel))
    )
    put("idempotency_key", args.idempotency_key)
    put("deadline", args.deadline)
    put("priority", args.priority)
    put("tenant", args.tenant)
    if channel == "email":
        put("to", [_address(a) for a in args.to] if args.to else None)
        put("cc", [_address(a) for a in args.cc] if args.cc else None)
        put("bcc", [_address(a) for a in args.bcc] if args.bcc else None)
        put("from", _address(args.from_) if args.from_ else None)
        put("reply_to", _address(args.reply_to) if args.reply_to else None)
        put("subject", args.subject)
        put("text", args.text)
        put("html", args.html)
        if args.html_file:
            try:
                msg["html"] = Path(args.html_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise InputError(
                    f"--html-file: cannot read {args.html_file}: {exc.strerror}"
                ) from None
        if args.attach:
            msg["attachments"] = [*msg.get("attachments", []), *map(_attachment, args.attach)]
        if args.header:
            headers = dict(msg.get("headers") or {})
            for item in args.header:
                name, sep, value = item.partition("=")
                if not sep or not name:
                    raise InputError(f"--header: expected NAME=VALUE, got {item!r}")
                headers[name] = value
            msg["headers"] = headers
        put("tag", args.tag)
    elif channel == "sms":
        put("to", args.to)
        put("text", args.text)
        put("sender", args.sender)
        put("tag", args.tag)
    else:
        put("to", args.to)
        put("mode", args.mode or (None if "mode" in msg else "tts"))
        put("text", args.text)
        put("audio_token", args.audio_token)
        put("lang", args.lang)
        put("sender", args.sender)
        put("notification_email", args.notification_email)
        put("speech_rate", args.speech_rate)
    return msg


def delivery_state(delivery_id: str) -> dict[str, Any] | None:
    """The delivery's state as tracking recorded it (delivered, bounced, …), or ``None``
    before the send is recorded (:func:`worker.tracking.status.delivery_status`)."""
    from worker.config import get_settings
    from worker.redis_client import shared_redis
    from worker.stores.tracking import RedisTrackingStore

    settings = get_settings()
    store = RedisTrackingStore(shared_redis(settings), keys=keys_for(settings))
    found = store.status(delivery_id)
    return None if found is None else found.as_dict()


def settled_state(tracked: dict[str, Any] | None) -> str | None:
    """The delivery's final state once every recipient has one, else ``None``.

    ``delivered`` when every recipient was delivered (engagement after it counts as
    delivered); otherwise the first failure (``bounced``, ``failed``, ``rejected``).
    """
    from worker.tracking import ENGAGEMENT_EVENTS, FINAL_EVENTS, EventType

    if not tracked or not tracked.get("recipients"):
        return None
    states = [EventType(r["state"]) for r in tracked["recipients"].values()]
    failures = [s for s in states if s in FINAL_EVENTS]
    done = all(
        s is EventType.DELIVERED or s in ENGAGEMENT_EVENTS or s in FINAL_EVENTS for s in states
    )
    if not done:
        return None
    return failures[0].value if failures else EventType.DELIVERED.value


def has_status_lookup(provider: str) -> bool:
    """Whether the poller asks this provider what became of a message."""
    from worker.providers import DRIVERS

    driver = DRIVERS.get(provider)
    return bool(driver and driver.status_lookup)


def run_send(args: argparse.Namespace) -> int:
    from worker.models import InvalidMessage
    from worker.producer import Producer

    channel: str = args.channel
    try:
        message = build_message(channel, args)
    except InputError as exc:
        print(f"invalid input: {exc}", file=sys.stderr)
        return EXIT_INVALID
    producer = Producer()
    try:
        producer.validate(channel, message)
    except InvalidMessage as exc:
        print(f"invalid {channel} message, nothing was enqueued:", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err['field']}: {err['message']}", file=sys.stderr)
        return EXIT_INVALID
    options = {"queue": args.queue} if args.queue else {}
    result = producer.enqueue(channel, message, **options)
    delivery_id = str(result.id)
    print(f"enqueued {channel} delivery {delivery_id}", file=sys.stderr)
    if not args.wait:
        print(delivery_id)
        return EXIT_SENT
    until: str = args.until
    timeout_s: float = args.timeout if args.timeout is not None else _TIMEOUT_S[until]
    return wait(
        result,
        delivery_id,
        timeout_s,
        producer.lookup,
        delivery_state,
        until=until,
        has_lookup=has_status_lookup,
    )


def wait(
    result: Any,
    delivery_id: str,
    timeout_s: float,
    lookup: Callable[[str], dict[str, Any] | None],
    state_of: Callable[[str], dict[str, Any] | None],
    *,
    until: str = "sent",
    has_lookup: Callable[[str], bool] = has_status_lookup,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Poll the result backend until the task is final or parked; print what it says.

    With ``until="delivered"`` a sent delivery is then followed in tracking until every
    recipient has a final state, within the same ``timeout_s``.
    """
    from tasks import PARKED

    deadline = time.monotonic() + timeout_s
    outcome: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        state = result.state
        if state == PARKED or result.ready():
            info = result.info if state == PARKED else result.result
            if isinstance(info, dict):
                outcome = info
            else:  # an exception or an unexpected payload: say what the backend holds
                outcome = {"status": "failed", "error": {"kind": "task", "message": repr(info)}}
            break
        sleep(_POLL_S)
    if outcome is None:
        record = lookup(delivery_id) or {}
        print(f"not settled after {timeout_s:g}s (ledger state: {record.get('state', 'unknown')})")
        print(f"follow it with: delivery-worker status {delivery_id}", file=sys.stderr)
        return EXIT_TIMEOUT
    status = str(outcome.get("status", "unknown"))
    if until == "delivered" and status == "sent":
        return _follow_tracking(
            outcome, delivery_id, deadline, timeout_s, state_of, has_lookup, sleep
        )
    _report(status, outcome, state_of(delivery_id))
    return EXIT_CODES.get(status, EXIT_FAILED)


def _report(first_line: str, outcome: dict[str, Any], tracked: dict[str, Any] | None) -> None:
    print(first_line)
    report: dict[str, Any] = {"result": outcome}
    if tracked is not None:
        report["delivery_state"] = tracked
    print(json.dumps(report, indent=2, sort_keys=True))


def _follow_tracking(
    outcome: dict[str, Any],
    delivery_id: str,
    deadline: float,
    timeout_s: float,
    state_of: Callable[[str], dict[str, Any] | None],
    has_lookup: Callable[[str], bool],
    sleep: Callable[[float], None],
) -> int:
    """After ``sent``: wait for tracking's final state (delivered, bounced, failed, ...)."""
    tracked = state_of(delivery_id)
    final = settled_state(tracked)
    provider = str(outcome.get("provider", ""))
    if final is None and not has_lookup(provider):
        # Nothing will ask this provider; a push (webhook, callback) may still come later.
        _report("sent (no lookup)", outcome, tracked)
        print(
            f"{provider} has no status lookup: follow pushes with "
            f"delivery-worker status {delivery_id}",
            file=sys.stderr,
        )
        return EXIT_SENT
    while final is None and time.monotonic() < deadline:
        sleep(_POLL_S * 5)
        tracked = state_of(delivery_id)
        final = settled_state(tracked)
    if final is None:
        states = sorted({r["state"] for r in (tracked or {}).get("recipients", {}).values()})
        print(
            f"sent, no final delivery state after {timeout_s:g}s "
            f"(tracking: {', '.join(states) or 'nothing recorded'})"
        )
        print(f"follow it with: delivery-worker status {delivery_id}", file=sys.stderr)
        return EXIT_TIMEOUT
    _report(final, outcome, tracked)
    return EXIT_SENT if final == "delivered" else EXIT_FAILED
