"""Scheduling benchmark: how late scheduled messages leave, and what workers hold meanwhile.

Starts its own redis-server, sandbox and ``celery worker`` processes, then

1. enqueues ``--messages`` SMS (default 10,000) through the producer, each with a ``send_at``
   spread evenly over ``--spread`` seconds that start only once every message is enqueued, so
   all of them are pending at once;
2. reads the workers' resident memory (RSS, main process plus pool, from ``/proc``) before the
   first enqueue, when 1,000 are pending and when all are (while they wait: the schedule is in
   Redis, so this must not grow with the number of future messages);
3. waits for every delivery to finish and prints the lateness of each send against its
   ``send_at`` (p50, p99, max): from the time, to the send's gate (``first_attempt_at``, right
   before the request leaves) and to the provider's answer (``sent_at``).

    .venv/bin/python bench/scheduling.py                      # 10,000 over 300 s, 2 workers x 4
    .venv/bin/python bench/scheduling.py --messages 2000 --spread 60

It prints one JSON object (the figures) after a human summary. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack.processes import Proc, sandbox_env, start_redis, start_sandbox, start_worker
from worker.app import client_app
from worker.producer import Producer
from worker.stores import RedisLedger


def rss_kib(proc: Proc) -> int:
    """Resident memory of a worker: its main process and every child (the pool)."""
    pids = [proc.pid]
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--spread", type=float, default=300.0, help="seconds the times cover")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--producers", type=int, default=4, help="enqueueing threads")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-scheduling-"))
    redis_proc = start_redis(workdir / "redis", appendonly=False)
    sandbox = start_sandbox(workdir / "sandbox", extra_args=["--quiet"])
    url = str(redis_proc.extra["url"])
    env = {
        "DELIVERY_BROKER_URL": f"{url}/0",
        "DELIVERY_RESULT_BACKEND": f"{url}/1",
        "DELIVERY_LOG_LEVEL": "WARNING",
        **sandbox_env(str(sandbox.extra["url"])),
    }
    os.environ.update(env)
    workers: list[Proc] = []
    try:
        for i in range(args.workers):
            workers.append(start_worker(workdir, env, name=f"b{i}", concurrency=args.concurrency))
        client = client_app(env["DELIVERY_BROKER_URL"], env["DELIVERY_RESULT_BACKEND"])
        _wait_ready(client, workers)
        time.sleep(2.0)  # settle after start-up
        ledger = RedisLedger(redis.Redis.from_url(env["DELIVERY_BROKER_URL"]))
        rss: dict[str, int] = {"idle": sum(rss_kib(w) for w in workers)}
        # Every time lies after the enqueue phase (at least 60 enqueues a second with 4 threads
        # on a busy 2-core box; a message enqueued after its time is sent at once, and counted).
        start = time.time() + args.messages / 60 + 10
        due: dict[str, float] = {}
        lock = threading.Lock()
        counter = iter(range(args.messages))

        def produce() -> None:
            producer = Producer(app=client, ledger=ledger)
            for i in counter:
                at = start + args.spread * i / args.messages
                message = {
                    "provider": "smspartner",
                    "to": [f"+3367{i % 10000:04d}{i // 10000:03d}"],
                    "text": "Rappel",
                    "send_at": datetime.fromtimestamp(at, UTC).isoformat(),
                }
                delivery_id = producer.enqueue("sms", message).id
                with lock:
                    due[delivery_id] = at
                    if len(due) == min(1000, args.messages):
                        rss["pending_1000"] = sum(rss_kib(w) for w in workers)
            producer.close()

        began = time.time()
        threads = [threading.Thread(target=produce) for _ in range(args.producers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        enqueue_s = time.time() - began
        time.sleep(1.0)
        rss[f"pending_{args.messages}"] = sum(rss_kib(w) for w in workers)
        pending = ledger.schedule_size()
        if time.time() >= start:
            print(f"enqueueing took {enqueue_s:.0f} s, past the first time", file=sys.stderr)
        final: dict[str, Any] = {}
        deadline = start + args.spread + 300
        while len(final) < len(due) and time.time() < deadline:
            time.sleep(2.0)
            for delivery_id in due.keys() - final.keys():
                record = ledger.get(delivery_id)
                if record is not None and record.final:
                    final[delivery_id] = record
        rss["after"] = sum(rss_kib(w) for w in workers)
        sent = {i: r for i, r in final.items() if r.state == "sent"}
        gate = [float(r.fields["first_attempt_at"]) - due[i] for i, r in sent.items()]
        answer = [float(r.fields["sent_at"]) - due[i] for i, r in sent.items()]
        figures = {
            "messages": args.messages,
            "spread_s": args.spread,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "enqueue_s": round(enqueue_s, 1),
            "pending_on_schedule": pending,
            "sent": len(sent),
            "not_final": len(due) - len(final),
            "early": sum(1 for x in gate if x < 0),
            "lateness_to_gate_s": _stats(gate),
            "lateness_to_answer_s": _stats(answer),
            "worker_rss_kib": rss,
            "load_average": os.getloadavg(),
        }
        print(
            f"{len(sent)}/{args.messages} sent; lateness (send_at → provider's answer) "
            f"p50 {figures['lateness_to_answer_s']['p50']:.3f} s, "
            f"p99 {figures['lateness_to_answer_s']['p99']:.3f} s, "
            f"max {figures['lateness_to_answer_s']['max']:.3f} s; early {figures['early']}"
        )
        print(
            "worker RSS (KiB, all workers): "
            + ", ".join(f"{k} {v}" for k, v in rss.items())
            + f"; {pending} messages were pending on the schedule"
        )
        print(json.dumps(figures))
        return 0 if figures["not_final"] == 0 and figures["early"] == 0 else 1
    finally:
        for w in workers:
            w.stop()
        sandbox.stop()
        redis_proc.stop()


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    return {
        "p50": round(statistics.median(values), 4),
        "p99": round(percentile(values, 99), 4),
        "max": round(max(values), 4),
    }


def _wait_ready(app: Any, workers: list[Proc], timeout_s: float = 90.0) -> None:
    names = {w.name.removeprefix("worker-") for w in workers}
    end = time.monotonic() + timeout_s
    while names and time.monotonic() < end:
        for reply in app.control.ping(timeout=0.5) or []:
            for node in reply:
                names.discard(node.partition("@")[0])
    if names:
        raise RuntimeError(f"workers {sorted(names)} did not start")


if __name__ == "__main__":
    sys.exit(main())
