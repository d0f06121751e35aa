"""``python -m delivery_sandbox``: run the sandbox until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from delivery_sandbox.accounts import METERED
from delivery_sandbox.config import (
    DEFAULT_POSTAL_DOMAINS,
    DEFAULT_VOICEPARTNER_SENDERS,
    EMAILMASSIVO_SUCCESS_STATUSES,
    Limits,
    SandboxConfig,
)
from delivery_sandbox.faults import FaultPlan, FaultPlanError, FaultRule
from delivery_sandbox.providers.postal import DEFAULT_SUPPRESSION_REASON
from delivery_sandbox.server import Sandbox

__all__ = ["build_parser", "main"]

_RATE_FLAGS = {
    "emailmassivo_per_s": ("--emailmassivo-rate", "EmailMassivo requests per second per IP"),
    "mailpartner_per_min": ("--mailpartner-rate", "Mail Partner requests per minute per IP"),
    "smspartner_per_min": ("--smspartner-rate", "SMS Partner requests per minute per IP"),
    "voicepartner_campaign_per_min": (
        "--voicepartner-campaign-rate",
        "Voice Partner campaign/send per minute per IP",
    ),
    "voicepartner_per_hour": (
        "--voicepartner-hourly-rate",
        "Voice Partner tts/send and campaign/send per hour per IP (each)",
    ),
    "voicepartner_me_per_min": ("--voicepartner-me-rate", "Voice Partner /me per minute per IP"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m delivery_sandbox",
        description="Local simulator of Postal, EmailMassivo, Mail/SMS/Voice Partner.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025, help="0 picks a free port")
    parser.add_argument("--log-file", type=Path, help="append JSON lines of every request/message")
    parser.add_argument("--fault-plan", type=Path, help='JSON file: {"rules": [...]}')
    parser.add_argument(
        "--credits",
        action="append",
        default=[],
        metavar="PROVIDER=N",
        help=f"starting balance (repeatable); providers: {', '.join(METERED)}",
    )
    defaults = Limits()
    for attr, (flag, text) in _RATE_FLAGS.items():
        default = getattr(defaults, attr)
        parser.add_argument(
            flag,
            type=int,
            dest=attr,
            default=default,
            metavar="N",
            help=f"{text} (default {default}; 0 = off)",
        )
    parser.add_argument(
        "--idempotency-window",
        type=float,
        default=SandboxConfig().idempotency_window_s,
        metavar="SECONDS",
        help="EmailMassivo dedupe window",
    )
    parser.add_argument(
        "--sms-delivery-delay",
        type=float,
        default=SandboxConfig().sms_delivery_delay_s,
        metavar="SECONDS",
        help="time an accepted SMS stays 'Waiting' before 'Delivered'",
    )
    parser.add_argument(
        "--postal-delivery-delay",
        type=float,
        default=SandboxConfig().postal_delivery_delay_s,
        metavar="SECONDS",
        help="time an accepted Postal message stays 'Pending' before 'Sent' (delivered)",
    )
    parser.add_argument(
        "--postal-domain",
        action="append",
        dest="postal_domains",
        metavar="DOMAIN",
        help="a From domain Postal has authenticated (repeatable; replaces the default "
        f"{', '.join(DEFAULT_POSTAL_DOMAINS)})",
    )
    parser.add_argument(
        "--postal-send-limit",
        type=int,
        metavar="N",
        help="Postal send_limit: messages per 60 minutes before new ones are Held (default none)",
    )
    parser.add_argument(
        "--postal-suppress",
        action="append",
        default=[],
        metavar="ADDRESS[=REASON]",
        help="an address on Postal's suppression list: its messages are Held (repeatable)",
    )
    parser.add_argument(
        "--voicepartner-sender",
        action="append",
        dest="voicepartner_senders",
        metavar="NUMBER",
        help="a validated Voice Partner callback number (repeatable; replaces the default "
        f"{', '.join(DEFAULT_VOICEPARTNER_SENDERS)})",
    )
    parser.add_argument(
        "--emailmassivo-success-status",
        type=int,
        choices=EMAILMASSIVO_SUCCESS_STATUSES,
        default=SandboxConfig().emailmassivo_success_status,
        help="EmailMassivo status for a new send: 200 (its page) or 201 (RuSender); "
        "a repeat is always 200",
    )
    parser.add_argument(
        "--postal-webhook-url",
        metavar="URL",
        help="where Postal's signed webhooks go (docs/providers/postal.md §4.6); default none",
    )
    parser.add_argument("--quiet", action="store_true", help="no access log on stderr")
    return parser


def _suppressed(values: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        address, sep, reason = value.partition("=")
        if "@" not in address:
            parser.error("--postal-suppress takes ADDRESS[=REASON]")
        out[address.strip()] = (
            reason.strip() if sep and reason.strip() else DEFAULT_SUPPRESSION_REASON
        )
    return out


def _credits(values: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, int]:
    credits: dict[str, int] = {}
    for value in values:
        name, sep, amount = value.partition("=")
        if not sep or name not in METERED or not amount.strip().isdigit():
            parser.error(f"--credits takes PROVIDER=N with PROVIDER in {', '.join(METERED)}")
        credits[name] = int(amount)
    return credits


def _fault_rules(path: Path | None, parser: argparse.ArgumentParser) -> list[FaultRule]:
    if path is None:
        return []
    try:
        return FaultPlan.parse(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:  # FaultPlanError is a ValueError
        kind = "invalid fault plan" if isinstance(exc, FaultPlanError) else "cannot read"
        parser.error(f"{kind} {path}: {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    limits = Limits(**{attr: getattr(args, attr) for attr in _RATE_FLAGS})
    config = SandboxConfig(
        limits=limits,
        idempotency_window_s=args.idempotency_window,
        sms_delivery_delay_s=args.sms_delivery_delay,
        postal_delivery_delay_s=args.postal_delivery_delay,
        postal_domains=tuple(args.postal_domains or DEFAULT_POSTAL_DOMAINS),
        postal_send_limit=args.postal_send_limit,
        postal_suppressed=_suppressed(args.postal_suppress, parser),
        voicepartner_senders=tuple(args.voicepartner_senders or DEFAULT_VOICEPARTNER_SENDERS),
        emailmassivo_success_status=args.emailmassivo_success_status,
    )
    if args.postal_send_limit is not None and args.postal_send_limit < 0:
        parser.error("--postal-send-limit must be >= 0")
    sandbox = Sandbox(
        args.host,
        args.port,
        args.log_file,
        config=config,
        credits=_credits(args.credits, parser),
        fault_rules=_fault_rules(args.fault_plan, parser),
        quiet=args.quiet,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.postal_webhook_url is not None:
        try:
            sandbox.webhooks.set_postal_url(args.postal_webhook_url, starting=True)
        except ValueError as exc:
            parser.error(f"--postal-webhook-url: {exc}")
    sandbox.start()
    print(f"sandbox listening on {sandbox.url}", flush=True)
    print(f"postal webhook public key: {sandbox.webhooks.signer.public_key}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
