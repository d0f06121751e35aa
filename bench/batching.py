"""Benchmark: SMS batching (``DELIVERY_BATCHING``) against the same worker with batching off.

Starts a private redis-server and the provider sandbox (SMS Partner answering after
``--latency-ms``, 50 ms by default) as real processes, then, in one run:

1. **anchor**: one ``celery -A worker worker`` (prefork, ``--concurrency``) with batching off;
   ``--anchor-messages`` single-number SMS, each its own ``/send``;
2. **batched**: the same worker command with ``DELIVERY_BATCHING=1``; ``--messages``
   single-number SMS (10,000 by default), coalesced into ``/bulk-send`` requests.

Each phase enqueues every message first (no worker running: the producer's speed is not
measured), then starts the worker and waits until every delivery is final in the ledger.
msgs/s = messages / (last ``sent_at`` - first ``first_attempt_at``) from the ledger, so worker
start-up is not counted for either. Provider requests are counted from the sandbox's own
request log. Prints the table and exits 1 when a target is missed: every message ``sent``, at
most ``--max-requests`` provider requests for the batched phase (25), and batched msgs/s at
least ``--min-speedup`` (20) times the anchor's.

    python bench/batching.py [--messages 10000] [--anchor-messages 600] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from devstack.processes import Proc, sandbox_env, start_redis, start_sandbox, start_worker
from worker.app import client_app
from worker.producer import Producer
from worker.stores import FINAL_STATES, RedisLedger
from worker.stores.keys import DEFAULT_KEYS

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


@dataclass
class Phase:
    name: str
    batching: bool
    messages: int
    sent: int = 0
    requests: int = 0
    routes: dict[str, int] | None = None
    seconds: float = 0.0
    msgs_per_s: float = 0.0
    enqueue_s: float = 0.0


def _workload(run: str, count: int) -> list[dict[str, Any]]:
    # Odd numbers from +33612000001: never a sandbox magic number (…0014 STOP, +336000000xx).
    return [
        {"provider": "smspartner", "to": [f"+336{12000001 + 2 * i:08d}"], "text": f"Code {run}{i}"}
        for i in range(count)
    ]


def _wait_ready(app: Any, proc: Proc, timeout_s: float = 90.0) -> None:
    name = proc.name.removeprefix("worker-")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"worker exited:\n{proc.log_tail()}")
        if any(name in next(iter(r)) for r in app.control.ping(timeout=0.5) or []):
            return
    raise RuntimeError("worker not ready")


def run_phase(
    phase: Phase, env: dict[str, str], sandbox_url: str, workdir: Path, concurrency: int
) -> Phase:
    admin = httpx.Client(base_url=sandbox_url, timeout=30)
    admin.post("/_admin/reset").raise_for_status()
    admin.post("/_admin/balance", json={"provider": "smspartner", "credits": 10**7})
    rule = {"provider": "smspartner", "action": "latency", "delay_ms": int(env["_LATENCY_MS"])}
    admin.post("/_admin/faults", json={"rules": [rule]}).raise_for_status()
    worker_env = {k: v for k, v in env.items() if not k.startswith("_")}
    worker_env["DELIVERY_BATCHING"] = "1" if phase.batching else "0"
    for url in (worker_env["DELIVERY_BROKER_URL"], worker_env["DELIVERY_RESULT_BACKEND"]):
        with redis.Redis.from_url(url) as r:
            r.flushdb()
    client = client_app(
        worker_env["DELIVERY_BROKER_URL"], worker_env["DELIVERY_RESULT_BACKEND"], name="bench"
    )
    r = redis.Redis.from_url(worker_env["DELIVERY_BROKER_URL"])
    ledger = RedisLedger(r)
    producer = Producer(app=client, ledger=ledger)
    started = time.monotonic()
    ids = [producer.enqueue("sms", m).id for m in _workload(phase.name, phase.messages)]
    phase.enqueue_s = time.monotonic() - started
    proc = start_worker(workdir, worker_env, name=phase.name, concurrency=concurrency)
    try:
        _wait_ready(client, proc)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            states = _fields(r, ids, "state")
            if all(s in FINAL_STATES for s in states):
                break
            time.sleep(0.5)
        states = _fields(r, ids, "state")
        phase.sent = sum(1 for s in states if s == "sent")
        first = min(float(x) for x in _fields(r, ids, "first_attempt_at") if x)
        last = max(float(x) for x in _fields(r, ids, "sent_at") if x)
        phase.seconds = last - first
        phase.msgs_per_s = phase.sent / phase.seconds if phase.seconds > 0 else 0.0
        sends = [
            q
            for q in admin.get("/_admin/requests", params={"provider": "smspartner"})
            .raise_for_status()
            .json()["requests"]
            if q["method"] == "POST"
        ]
        phase.requests = len(sends)
        phase.routes = dict(Counter(q["route"] for q in sends))
    finally:
        proc.stop(timeout_s=30)
        client.close()
        r.close()
        admin.close()
    return phase


def _fields(r: redis.Redis, ids: list[str], name: str) -> list[str]:
    pipe = r.pipeline(transaction=False)
    for delivery_id in ids:
        pipe.hget(DEFAULT_KEYS.delivery(delivery_id), name)
    return [v.decode() if isinstance(v, bytes) else "" for v in pipe.execute()]


def table(anchor: Phase, batched: Phase) -> str:
    rows = [
        "| | messages | provider requests | msgs/s | vs anchor |",
        "|---|---|---|---|---|",
    ]
    for p in (anchor, batched):
        ratio = p.msgs_per_s / anchor.msgs_per_s if anchor.msgs_per_s else 0.0
        label = "batching off (anchor)" if p is anchor else "batching on"
        rows.append(
            f"| {label} | {p.sent}/{p.messages} | {p.requests} | {p.msgs_per_s:.0f} | "
            f"{ratio:.1f}x |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--anchor-messages", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--linger-s", type=float, default=0.5)
    parser.add_argument("--max-requests", type=int, default=25)
    parser.add_argument("--min-speedup", type=float, default=20.0)
    parser.add_argument("--skip-anchor", action="store_true", help="batched phase only")
    parser.add_argument(
        "--no-aof",
        action="store_true",
        help="redis-server without its AOF (the stack's default is appendfsync always)",
    )
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    redis_proc = start_redis(workdir / "redis", appendonly=not args.no_aof)
    sandbox = start_sandbox(workdir, extra_args=["--quiet"])
    sandbox_url = str(sandbox.extra["url"])
    redis_url = str(redis_proc.extra["url"])
    env = {
        "DELIVERY_BROKER_URL": f"{redis_url}/0",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/1",
        "DELIVERY_BATCH_LINGER_S": f"{args.linger_s:g}",
        "DELIVERY_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        "DELIVERY_VOICEPARTNER_NOTIFICATION_EMAIL": "ops@example.org",
        "_LATENCY_MS": str(args.latency_ms),
        **sandbox_env(sandbox_url),
    }
    try:
        anchor = Phase("anchor", False, args.anchor_messages)
        if not args.skip_anchor:
            run_phase(anchor, env, sandbox_url, workdir, args.concurrency)
            print(f"anchor: {asdict(anchor)}", flush=True)
        batched = run_phase(
            Phase("batched", True, args.messages), env, sandbox_url, workdir, args.concurrency
        )
        print(f"batched: {asdict(batched)}", flush=True)
    finally:
        sandbox.stop()
        redis_proc.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs in {workdir}")
    print()
    print(
        f"SMS Partner with {args.latency_ms} ms latency, one worker (prefork, concurrency "
        f"{args.concurrency}), linger {args.linger_s:g} s, Redis "
        f"{'without AOF' if args.no_aof else 'AOF appendfsync always'}"
    )
    print(table(anchor, batched))
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = {"args": vars(args), "anchor": asdict(anchor), "batched": asdict(batched)}
    (RESULTS_DIR / f"batching-{stamp}.json").write_text(json.dumps(out, indent=2) + "\n")
    misses = []
    if batched.sent != batched.messages or (
        not args.skip_anchor and anchor.sent != anchor.messages
    ):
        misses.append("not every message was sent")
    if batched.requests > args.max_requests:
        misses.append(f"{batched.requests} provider requests > {args.max_requests}")
    speedup = batched.msgs_per_s / anchor.msgs_per_s if anchor.msgs_per_s else 0.0
    if not args.skip_anchor and speedup < args.min_speedup:
        misses.append(f"speed-up {speedup:.1f}x < {args.min_speedup:g}x")
    if misses:
        print("\nMISSED: " + "; ".join(misses))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
