"""``delivery-worker``: the operator's command line.

delivery-worker demo            run everything locally on the sandbox and send a demo batch
delivery-worker status ID       a delivery's ledger record, its recipients' states and history
delivery-worker send sms ...    validate and enqueue one message (--wait for its outcome)
delivery-worker check-config    validate the environment the way a worker would at start
delivery-worker suppression     list, add, remove, import or export suppressed recipients
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from worker.config import PROVIDERS
from worker.stores.keys import keys_for

if TYPE_CHECKING:
    from worker.config import Settings
    from worker.ops.operations import Operations
    from worker.runtime import Runtime

__all__ = ["EXIT_UNAVAILABLE", "main"]

EXIT_UNAVAILABLE = 69
"""Redis (the broker, the shared store) cannot be reached: ``EX_UNAVAILABLE`` of sysexits.h,
apart from 2 (invalid input), so a script can tell a bad message from a stack that is down."""


def _cmd_status(args: argparse.Namespace) -> int:
    from worker.config import get_settings
    from worker.redis_client import shared_redis
    from worker.stores import RedisLedger

    settings = get_settings()
    ledger = RedisLedger(shared_redis(settings), keys=keys_for(settings))
    record = ledger.get(args.delivery_id)
    if record is None:
        print(f"no delivery {args.delivery_id}", file=sys.stderr)
        return 1
    from worker.ops.tracking import show_tracking
    from worker.tracking.status import readable_record

    print(json.dumps(readable_record(record.to_dict(), utc=args.utc), indent=2, sort_keys=True))
    show_tracking(args.delivery_id, utc=args.utc)
    return 0


def _operations() -> tuple[Operations, Runtime]:
    from worker.app import app
    from worker.config import get_settings
    from worker.ops.operations import Operations
    from worker.runtime import Runtime

    rt = Runtime(get_settings())
    return Operations.for_runtime(rt, app), rt


def _cmd_providers(args: argparse.Namespace) -> int:
    ops, _rt = _operations()
    statuses = ops.status()
    if args.json:
        print(json.dumps([s.to_dict() for s in statuses], indent=2))
        return 0
    print(f"{'provider':<14}{'configured':<12}{'state':<22}{'breaker':<12}{'parked':>7}  counters")
    for s in statuses:
        state = f"PAUSED ({s.paused.reason[:12]})" if s.paused else "active"
        breaker = s.breaker.state + (
            f" {s.breaker.retry_in_s:.0f}s" if s.breaker.retry_in_s else ""
        )
        counters = " ".join(f"{k}={v}" for k, v in sorted(s.metrics.items()))
        configured = "yes" if s.configured else "no"
        print(f"{s.provider:<14}{configured:<12}{state:<22}{breaker:<12}{s.parked:>7}  {counters}")
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    ops, _rt = _operations()
    count = ops.resume(args.provider)
    print(f"{args.provider} resumed; {count} parked message(s) re-enqueued")
    return 0


def _cmd_pause(args: argparse.Namespace) -> int:
    ops, _rt = _operations()
    info = ops.pause(args.provider, args.reason)
    print(f"{args.provider} paused since {info.since:.0f} ({info.reason}); new messages are parked")
    return 0


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_s(value: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or plain seconds, as seconds (argparse type)."""
    match = _DURATION.fullmatch(value.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {value!r} (e.g. 30d, 12h, 90m)")
    return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]


def _human(seconds: float) -> str:
    """The largest unit that divides ``seconds`` whole: 2592000 -> ``30d``."""
    for unit in ("w", "d", "h", "m"):
        count = seconds / _UNIT_S[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{seconds:g}s"


def _cmd_dead(args: argparse.Namespace) -> int:
    ops, rt = _operations()
    if args.action == "purge":
        if args.older_than is None and not args.all:
            print("say what to purge: --older-than DURATION or --all", file=sys.stderr)
            return 1
        if args.older_than is not None and args.all:
            print("--older-than and --all exclude each other", file=sys.stderr)
            return 1
        purged = rt.dead_letters.purge_dead(None if args.all else args.older_than)
        left = len(rt.dead_letters.dead_letters())
        scope = "all" if args.all else f"set aside over {_human(args.older_than)} ago"
        print(f"purged {purged} dead letter{'s' if purged != 1 else ''} ({scope}); {left} left")
        return 0
    if args.action == "replay":
        ids = list(rt.dead_letters.dead_letters()) if args.all else args.ids
        if not ids:
            print("nothing to replay (give delivery ids or --all)", file=sys.stderr)
            return 1
        replayed = ops.replay_dead(ids)
        for delivery_id in ids:
            print(
                f"{delivery_id}: {'replayed' if delivery_id in replayed else 'not a dead letter'}"
            )
        return 0 if len(replayed) == len(ids) else 1
    letters = rt.dead_letters.dead_letters()
    if not letters:
        print("no dead letters")
    for delivery_id, entry in sorted(letters.items(), key=lambda kv: kv[1]["at"]):
        print(f"{delivery_id}  {entry['task_name']}  {entry['reason']}")
    return 0


def _cmd_sweep(_args: argparse.Namespace) -> int:
    ops, _rt = _operations()
    counts = ops.sweep()
    print(", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _cmd_check_balances(_args: argparse.Namespace) -> int:
    ops, rt = _operations()
    for provider, outcome in (
        ops.check_balances(rt.driver).items() or {"-": "nothing paused"}.items()
    ):
        print(f"{provider}: {outcome}")
    return 0


def _cmd_check_config(_args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from worker.config import Settings
    from worker.redaction import safe_url

    try:
        settings = Settings()
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            loc = ".".join(str(p) for p in err["loc"])
            where = f"DELIVERY_{loc.upper()}" if loc else "configuration"
            print(f"{where}: {str(err['msg']).removeprefix('Value error, ')}", file=sys.stderr)
        return 1
    enabled = settings.enabled_providers()
    print(f"broker: {safe_url(settings.broker_url)}")
    print(f"result backend: {safe_url(settings.result_backend)}")
    if settings.redis_url:
        print(f"shared state: {safe_url(settings.redis_url)}")
    if settings.redis_master_name:
        print(f"sentinel master: {settings.redis_master_name}")
    if settings.redis_wait_replicas:
        print(
            f"enqueue waits for {settings.redis_wait_replicas} replica(s), "
            f"up to {settings.redis_wait_timeout_ms} ms"
        )
    print(f"providers: {', '.join(enabled) if enabled else 'none (set DELIVERY_<NAME>_API_KEY)'}")
    for provider in enabled:
        print(f"  {provider}: {settings.base_url(provider)}")
    from worker.ops.egress import egress_notes

    print(
        f"egress: identity {settings.egress_identity!r}, "
        f"source address {settings.local_address or 'the route default'}"
    )
    for note in egress_notes(settings):
        print(f"warning: {note}", file=sys.stderr)
    return _check_redis_policy(settings)


def _check_redis_policy(settings: Settings) -> int:
    """Redis must not evict (``worker.redis_memory``): 1 when it may, unless opted in."""
    import redis

    from worker.errors import ConfigurationError
    from worker.redis_client import shared_redis
    from worker.redis_memory import check_eviction_policy

    client = shared_redis(settings, socket_timeout=10)
    try:
        check = check_eviction_policy(client, allow_eviction=settings.allow_eviction)
    except ConfigurationError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except (redis.RedisError, OSError) as exc:
        reason = type(exc).__name__
        print(f"warning: Redis unreachable, maxmemory-policy unchecked ({reason})", file=sys.stderr)
        return 0
    finally:
        client.close()
    if check.warning:
        print(f"warning: {check.warning}", file=sys.stderr)
    else:
        print(f"redis maxmemory-policy: {check.policy}")
    return 0


_LOCAL_STACK = ("devstack", "delivery_sandbox")
"""The demo's packages: local-stack tooling, outside the worker's import graph."""


def _cmd_receiver(args: argparse.Namespace) -> int:
    from worker.config import get_settings
    from worker.receiver import serve

    settings = get_settings()  # refuse a bad configuration before binding the port
    if not (settings.postal_webhook_public_key or settings.tracking_secret):
        print(
            "the receiver has nothing to receive: set DELIVERY_POSTAL_WEBHOOK_PUBLIC_KEY "
            "and/or DELIVERY_TRACKING_SECRET",
            file=sys.stderr,
        )
        return 2
    postal = "on" if settings.postal_webhook_public_key else "off (no public key)"
    hints = "on" if settings.tracking_secret else "off (no secret)"
    print(
        f"receiver listening on http://{args.host}:{args.port}: /hooks/postal {postal}, "
        f"/hooks/smspartner|voicepartner {hints}, /health",
        flush=True,
    )
    serve(args.host, args.port, workers=args.workers)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from devstack.demo import run_demo
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in _LOCAL_STACK:
            raise
        print(
            f"delivery-worker demo needs the local-stack tooling, but {exc.name!r} is not "
            "installed: install delivery-worker from a source checkout with its devstack and "
            "delivery_sandbox packages (./dev setup, or pip install -e . in the checkout)",
            file=sys.stderr,
        )
        return 2
    return run_demo(
        workdir=args.workdir,
        flower=not args.no_flower,
        flower_port=args.flower_port,
        stay=not args.exit,
        workers=args.workers,
        env_file=args.env_file or None,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="delivery-worker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run Redis, the sandbox, a worker and Flower; send a batch")
    demo.add_argument("--workdir", default=".demo", help="where logs and Redis data go")
    demo.add_argument("--exit", action="store_true", help="stop everything after the batch")
    demo.add_argument("--no-flower", action="store_true", help="do not start Flower")
    demo.add_argument("--flower-port", type=int, default=5555)
    demo.add_argument("--workers", type=int, default=2, help="worker processes (concurrency)")
    demo.add_argument(
        "--env-file",
        default=".demo.env",
        help="write the stack's environment here while it runs ('' to only print it)",
    )
    demo.set_defaults(func=_cmd_demo)

    status = sub.add_parser("status", help="show a delivery's ledger record")
    status.add_argument("delivery_id")
    status.add_argument(
        "--utc", action="store_true", help="show times in UTC (default: the local time zone)"
    )
    status.set_defaults(func=_cmd_status)

    check = sub.add_parser("check-config", help="validate DELIVERY_* settings")
    check.set_defaults(func=_cmd_check_config)

    receiver = sub.add_parser("receiver", help="serve provider webhooks/callbacks (tracking)")
    receiver.add_argument("--host", default="127.0.0.1")
    receiver.add_argument("--port", type=int, default=8030)
    receiver.add_argument("--workers", type=int, default=1, help="server processes")
    receiver.set_defaults(func=_cmd_receiver)

    providers = sub.add_parser("providers", help="pause, breaker, parked and counters per provider")
    providers.add_argument("--json", action="store_true")
    providers.set_defaults(func=_cmd_providers)

    resume = sub.add_parser("resume", help="lift a pause and re-enqueue parked messages")
    resume.add_argument("provider", choices=PROVIDERS)
    resume.set_defaults(func=_cmd_resume)

    pause = sub.add_parser("pause", help="pause a provider for every worker; messages are parked")
    pause.add_argument("provider", choices=PROVIDERS)
    pause.add_argument("--reason", default="paused by operator")
    pause.set_defaults(func=_cmd_pause)

    balances = sub.add_parser("check-balances", help="resume paused providers that have credit")
    balances.set_defaults(func=_cmd_check_balances)

    dead = sub.add_parser("dead", help="list dead letters, replay or purge them")
    dead.add_argument("action", nargs="?", choices=["list", "replay", "purge"], default="list")
    dead.add_argument("ids", nargs="*", help="delivery ids to replay")
    dead.add_argument("--all", action="store_true", help="replay (or purge) every dead letter")
    dead.add_argument(
        "--older-than",
        type=duration_s,
        default=None,
        metavar="DURATION",
        help="purge: only letters set aside longer ago than this (30d, 12h, 90m, 45s)",
    )
    dead.set_defaults(func=_cmd_dead)

    from worker.metrics.commands import add_commands as add_metrics_commands

    add_metrics_commands(sub)  # metrics, top

    sweep = sub.add_parser("sweep", help="re-enqueue deliveries stuck past their timeout")
    sweep.set_defaults(func=_cmd_sweep)

    from worker.ops.send import add_send_parser
    from worker.ops.send_many import add_send_many_parser

    add_send_parser(sub)
    add_send_many_parser(sub)

    from worker.ops import cancel as cancel_command

    cancel_command.register(sub)

    from worker.ops import suppression as suppression_command

    suppression_command.register(sub, duration_s)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import redis

    from worker.logs import configure_logging

    # Operator commands print their own lines; events below WARNING would only be noise
    # (the demo keeps even those quiet: its table says what happened).
    configure_logging("ERROR" if args.command == "demo" else "WARNING", "console")

    from kombu.exceptions import OperationalError

    try:
        code: int = args.func(args)
    except (redis.ConnectionError, OperationalError) as exc:
        from worker.config import get_settings
        from worker.redaction import safe_url

        settings = get_settings()
        urls = dict.fromkeys(
            safe_url(u) for u in (settings.shared_redis_url, settings.broker_url) if u
        )
        print(
            f"cannot reach Redis at {' or '.join(urls)} ({safe_url(str(exc))}); "
            "is it running? set DELIVERY_REDIS_URL or DELIVERY_BROKER_URL",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    return code


if __name__ == "__main__":
    sys.exit(main())
