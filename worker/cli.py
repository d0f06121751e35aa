"""``delivery-worker``: the operator's command line.

delivery-worker demo            run everything locally on the sandbox and send a demo batch
delivery-worker status ID       a delivery's ledger record
delivery-worker check-config    validate the environment the way a worker would at start
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _cmd_status(args: argparse.Namespace) -> int:
    import redis

    from worker.config import get_settings
    from worker.ledger import Ledger

    ledger = Ledger(redis.Redis.from_url(get_settings().shared_redis_url))
    record = ledger.get(args.delivery_id)
    if record is None:
        print(f"no delivery {args.delivery_id}", file=sys.stderr)
        return 1
    print(json.dumps(record.to_dict(), indent=2, sort_keys=True))
    return 0


def _cmd_check_config(_args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from worker.config import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            loc = ".".join(str(p) for p in err["loc"])
            where = f"DELIVERY_{loc.upper()}" if loc else "configuration"
            print(f"{where}: {str(err['msg']).removeprefix('Value error, ')}", file=sys.stderr)
        return 1
    enabled = settings.enabled_providers()
    print(f"broker: {settings.broker_url}")
    print(f"result backend: {settings.result_backend}")
    print(f"providers: {', '.join(enabled) if enabled else 'none (set DELIVERY_<NAME>_API_KEY)'}")
    for provider in enabled:
        print(f"  {provider}: {settings.base_url(provider)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from worker.demo import run_demo

    return run_demo(
        workdir=args.workdir,
        flower=not args.no_flower,
        flower_port=args.flower_port,
        stay=not args.exit,
        workers=args.workers,
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
    demo.set_defaults(func=_cmd_demo)

    status = sub.add_parser("status", help="show a delivery's ledger record")
    status.add_argument("delivery_id")
    status.set_defaults(func=_cmd_status)

    check = sub.add_parser("check-config", help="validate DELIVERY_* settings")
    check.set_defaults(func=_cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
