"""``delivery-worker metrics`` (the exporter) and ``delivery-worker top`` (the live view)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_commands"]


def _registry() -> Any:
    from worker.config import get_settings
    from worker.metrics.exporter import MULTIPROC_ENV, build_registry
    from worker.redis_client import shared_redis

    settings = get_settings()
    client = shared_redis(settings, health_check_interval=30)
    return build_registry(settings, client, os.environ.get(MULTIPROC_ENV))


def _cmd_metrics(args: argparse.Namespace) -> int:
    from worker.metrics.exporter import MULTIPROC_ENV, make_metrics_server

    if not os.environ.get(MULTIPROC_ENV):
        print(
            f"set {MULTIPROC_ENV} to the directory the workers of this host write their "
            "metrics to (the same value as theirs)",
            file=sys.stderr,
        )
        return 2
    server = make_metrics_server(_registry(), args.host, args.port)
    print(f"metrics at http://{args.host}:{server.server_port}/metrics", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _cmd_top(args: argparse.Namespace) -> int:
    from rich.console import Console

    from worker.metrics.exporter import render
    from worker.metrics.top import run

    if args.url:
        import httpx

        def fetch() -> str:
            return httpx.get(args.url, timeout=5).raise_for_status().text
    else:
        registry = _registry()

        def fetch() -> str:
            return render(registry)

    console = Console(record=bool(args.svg))
    run(fetch, interval_s=args.interval, once=args.once or bool(args.svg), console=console)
    if args.svg:
        console.save_svg(args.svg, title="delivery-worker top")
    return 0


def add_commands(sub: Any) -> None:
    metrics = sub.add_parser("metrics", help="serve Prometheus metrics at /metrics")
    metrics.add_argument("--host", default="127.0.0.1")
    metrics.add_argument("--port", type=int, default=9808)
    metrics.set_defaults(func=_cmd_metrics)

    top = sub.add_parser("top", help="live per-provider view of the metrics, every second")
    top.add_argument("--url", help="an exporter's /metrics URL (default: read them here)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--svg", help="print one frame and save it as SVG to this path")
    top.set_defaults(func=_cmd_top)
