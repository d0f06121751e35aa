"""Benchmark: priority lanes and tenant fair shares (``worker.lanes``) on one provider budget.

Starts a private redis-server and the sandbox (EmailMassivo: 10 requests per second per IP,
429 beyond) and real ``celery -A worker worker`` processes, then per run:

1. **priority**: ``--bulk`` bulk mails queued, then ``--high`` ``high`` mails 0.5 s apart. Each
   high mail's time from its enqueue to its arrival at the sandbox (the sandbox's own clock,
   the same host). Target: p99 ≤ 1 s, 0 x 429.
2. **tenants**: tenant A queues ``--bulk`` bulk mails; 5 s after, tenant B queues ``--small``.
   The time from B's enqueue to B's last arrival, against its fair share (equal weights: half
   of 10/s, so ``--small`` / 5 s; target ≤ 1.2 times), and how many of A's mails arrived meanwhile
   (A keeps sending).
3. **anchor** (``--anchor-bulk`` bulk, default 400): the priority scenario with lanes off
   (``DELIVERY_LANES=0``: one FIFO broker line, as before), in the same run.

Also Redis commands per sent message (``INFO commandstats``, all clients, Lua inside
included) over 10 s of the priority scenario's backlog draining, lanes and anchor (the backlog
must outlast the window: ``--anchor-bulk`` at least 300). The backlogs are not drained: each
scenario stops its workers and flushes Redis once its figures are in. Medians over ``--runs``
(default 3).

    flock bench.lock python bench/lanes.py [--runs 3] [--quick] [--workers 2] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

from rate_limit import LIMIT_PER_S, Stack, wait_ready  # noqa: E402

from devstack.processes import sandbox_env, start_worker  # noqa: E402
from worker.app import client_app  # noqa: E402
from worker.producer import Producer  # noqa: E402
from worker.stores import RedisLedger  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"


def email(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "emailmassivo",
        "to": [{"email": f"reader{i}@example.com"}],
        "from": {"email": "news@example.org"},
        "subject": f"Lanes bench #{i}",
        "text": f"Message {i}",
        **extra,
    }


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


def commands(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


class Run:
    """Workers on the stack for one scenario, with lanes on or off."""

    def __init__(self, stack: Stack, args: argparse.Namespace, logdir: Path, *, lanes: bool):
        self.stack, self.args, self.logdir, self.lanes = stack, args, logdir, lanes
        broker, backend = stack.url(0), stack.url(1)
        self.env = {
            **sandbox_env(stack.sandbox_url),
            "DELIVERY_BROKER_URL": broker,
            "DELIVERY_RESULT_BACKEND": backend,
            "DELIVERY_REDIS_URL": broker,
            "DELIVERY_LOG_LEVEL": "WARNING",
            "DELIVERY_LANES": "1" if lanes else "0",
        }
        self.app = client_app(broker, backend, name="bench-lanes")
        self.shared = redis.Redis.from_url(broker)
        self.producer = Producer(app=self.app, ledger=RedisLedger(self.shared), lanes=lanes)

    def __enter__(self) -> Run:
        self.stack.flush()
        names = []
        for i in range(self.args.workers):
            names.append(f"lanes{i}")
            self.stack.workers.append(
                start_worker(
                    self.logdir,
                    self.env,
                    name=names[-1],
                    concurrency=self.args.concurrency,
                    events=False,
                )
            )
        wait_ready(self.app, self.stack, names)
        assert self.stack.admin is not None
        self.stack.admin.post("/_admin/reset").raise_for_status()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stack.stop_workers()
        finally:
            self.stack.flush()
            self.shared.close()
            self.app.close()

    def arrivals(self) -> dict[str, float]:
        """Delivery id → when its mail reached the sandbox (its idempotency key)."""
        assert self.stack.admin is not None
        data = self.stack.admin.get("/_admin/messages").raise_for_status().json()
        items = data["messages"] if isinstance(data, dict) else data
        return {str(m["idempotency_key"]): float(m["time"]) for m in items}

    def status_429(self) -> int:
        assert self.stack.admin is not None
        data = self.stack.admin.get("/_admin/requests").raise_for_status().json()
        items = data["requests"] if isinstance(data, dict) else data
        return sum(1 for r in items if r.get("status") == 429)


def wait_for(ids: Sequence[str], run: Run, timeout_s: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        arrived = run.arrivals()
        if all(d in arrived for d in ids) or time.monotonic() > deadline:
            return arrived
        run.stack.check_workers()
        time.sleep(0.5)


def steady_cost(run: Run, window_s: float = 10.0) -> float | None:
    """Redis commands (all clients, Lua inside included) per mail that reached the provider,
    over ``window_s`` of the backlog draining: dispatcher polls and takes included."""
    sent_before, calls_before = len(run.arrivals()), commands(run.shared)
    time.sleep(window_s)
    sent, calls = len(run.arrivals()) - sent_before, commands(run.shared) - calls_before
    return round(calls / sent, 1) if sent else None


def scenario_priority(run: Run, bulk: int, high: int) -> dict[str, Any]:
    for i in range(bulk):
        run.producer.enqueue("email", email(i, priority="bulk"))
    enqueued: dict[str, float] = {}
    for j in range(high):
        at = time.time()
        enqueued[run.producer.enqueue("email", email(100_000 + j, priority="high")).id] = at
        time.sleep(0.5)
    arrived = wait_for(list(enqueued), run, timeout_s=60 + bulk / LIMIT_PER_S * 1.5)
    waits = [arrived[d] - at for d, at in enqueued.items() if d in arrived]
    # How many high mails the limiter sent back to wait (its inline wait ran out): their time
    # is the limiter's, not the lanes'.
    pipe = run.shared.pipeline(transaction=False)
    for delivery_id in enqueued:
        pipe.hget(run.producer.ledger.keys.delivery(delivery_id), "throttled")  # type: ignore[attr-defined]
    throttled = sum(1 for v in pipe.execute() if int(v or 0) > 0)
    # Where a high mail's time goes: enqueue → its first attempt began in a pool process (lane,
    # dispatcher, broker, a free process), and its last attempt's start → the provider (the
    # limiter's slot and the request); sent back by the limiter, the rest is between attempts.
    for delivery_id in enqueued:
        pipe.hmget(
            run.producer.ledger.keys.delivery(delivery_id),  # type: ignore[attr-defined]
            ["first_attempt_at", "attempt_started_at"],
        )
    to_pool: list[float] = []
    at_gate: list[float] = []
    for (d, at), (first, last) in zip(enqueued.items(), pipe.execute(), strict=True):
        if first is not None and d in arrived:
            to_pool.append(float(first) - at)
        if last is not None and d in arrived:
            at_gate.append(arrived[d] - float(last))
    return {
        "high_p50_s": round(percentile(waits, 0.5), 3),
        "high_p99_s": round(percentile(waits, 0.99), 3),
        "high_max_s": round(max(waits) if waits else float("nan"), 3),
        "high_arrived": len(waits),
        "high_rescheduled_by_limiter": throttled,
        "high_waits_s": sorted(round(w, 2) for w in waits),
        "high_to_pool_p50_s": round(percentile(to_pool, 0.5), 3),
        "high_to_pool_max_s": round(max(to_pool, default=float("nan")), 3),
        "high_at_gate_p50_s": round(percentile(at_gate, 0.5), 3),
        "high_at_gate_max_s": round(max(at_gate, default=float("nan")), 3),
        "status_429": run.status_429(),
        "redis_cmds_per_sent": steady_cost(run),
    }


def scenario_tenants(run: Run, bulk: int, small: int) -> dict[str, Any]:
    big_ids = [
        run.producer.enqueue("email", email(i, priority="bulk", tenant="A")).id for i in range(bulk)
    ]
    time.sleep(5.0)
    b_start = time.time()
    small_ids = [
        run.producer.enqueue("email", email(200_000 + i, priority="bulk", tenant="B")).id
        for i in range(small)
    ]
    arrived = wait_for(small_ids, run, timeout_s=60 + small)
    b_last = max(arrived.get(d, float("inf")) for d in small_ids)
    b_s = b_last - b_start
    fair_s = small / (LIMIT_PER_S / 2)
    big = set(big_ids)
    a_meanwhile = sum(1 for d, t in arrived.items() if d in big and b_start <= t <= b_last)
    return {
        "b_last_s": round(b_s, 2),
        "b_fair_share_s": round(fair_s, 2),
        "b_ratio": round(b_s / fair_s, 2),
        "a_sent_meanwhile": a_meanwhile,
        "status_429": run.status_429(),
    }


def median_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in rows[0]:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        out[key] = statistics.median(values) if values else None
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="600 bulk, 10 high, B: 30 (~2 min/run)")
    p.add_argument("--bulk", type=int, default=5000)
    p.add_argument("--high", type=int, default=20)
    p.add_argument("--small", type=int, default=100)
    p.add_argument("--anchor-bulk", type=int, default=400)
    p.add_argument("--no-anchor", action="store_true")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=4)
    args = p.parse_args(argv)
    if args.quick:
        args.bulk, args.high, args.small, args.anchor_bulk = 600, 10, 30, 300
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows: dict[str, list[dict[str, Any]]] = {"priority": [], "tenants": [], "anchor": []}
    with tempfile.TemporaryDirectory(prefix="bench-lanes-") as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.start()
            for n in range(args.runs):
                logdir = Path(tmp) / f"run{n}"
                logdir.mkdir()
                with Run(stack, args, logdir, lanes=True) as run:
                    rows["priority"].append(scenario_priority(run, args.bulk, args.high))
                with Run(stack, args, logdir, lanes=True) as run:
                    rows["tenants"].append(scenario_tenants(run, args.bulk, args.small))
                if not args.no_anchor:
                    with Run(stack, args, logdir, lanes=False) as run:
                        rows["anchor"].append(
                            scenario_priority(run, args.anchor_bulk, min(args.high, 5))
                        )
                print(f"run {n + 1}: " + json.dumps({k: v[-1] for k, v in rows.items() if v}))
        finally:
            stack.stop()
    medians = {k: median_of(v) for k, v in rows.items() if v}
    print(
        f"\nmedians of {args.runs} run(s); {args.workers} workers x {args.concurrency}, "
        f"EmailMassivo at {LIMIT_PER_S}/s per IP"
    )
    pr, te = medians["priority"], medians["tenants"]
    print(
        f"priority  {args.bulk} bulk, then {args.high} high 0.5 s apart: high enqueue->provider "
        f"p50 {pr['high_p50_s']} s, p99 {pr['high_p99_s']} s (target <= 1 s), "
        f"429s {pr['status_429']} (target 0), Redis cmds/sent {pr['redis_cmds_per_sent']}"
    )
    print(
        f"          high: enqueue->first attempt p50 {pr['high_to_pool_p50_s']} s (max "
        f"{pr['high_to_pool_max_s']} s), last attempt->provider p50 {pr['high_at_gate_p50_s']} s "
        f"(max {pr['high_at_gate_max_s']} s), sent back by the limiter "
        f"{pr['high_rescheduled_by_limiter']}"
    )
    print(
        f"tenants   A {args.bulk} bulk, B {args.small} 5 s later: B's last after "
        f"{te['b_last_s']} s, fair share {te['b_fair_share_s']} s, ratio {te['b_ratio']} "
        f"(target <= 1.2), A sent meanwhile {te['a_sent_meanwhile']}, 429s {te['status_429']}"
    )
    if "anchor" in medians:
        an = medians["anchor"]
        print(
            f"anchor    lanes off (one FIFO line), {args.anchor_bulk} bulk then high: "
            f"high p50 {an['high_p50_s']} s, p99 {an['high_p99_s']} s, 429s "
            f"{an['status_429']}, Redis cmds/sent {an['redis_cmds_per_sent']}"
        )
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"lanes-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"args": vars(args), "runs": rows, "medians": medians}, indent=2))
    ok = (pr["high_p99_s"] or 99) <= 1.0 and pr["status_429"] == 0 and (te["b_ratio"] or 99) <= 1.2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
