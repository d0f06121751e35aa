"""Benchmark: the producer side of a campaign alone, ``send_many`` of ``--messages`` SMS.

Starts a private redis-server (broker, results and shared state on one instance, AOF with
``appendfsync always``, as ``bench/campaign.py`` does) and no worker: what is measured is the
producer's own work, validation, the records' script calls and the chunk publishes. Per run,
``send_many("sms", ...)`` of ``--messages`` (100,000) single-number SMS, each with its own
text, as ``bench/campaign.py`` builds them; it prints the enqueue time, microseconds per
message and the process's peak RSS above what it held before the call (the input list
included in both). Medians of ``--runs``; each run in a fresh process. Target: at most 10 s
per 100,000.

    flock <lock> python bench/campaign_enqueue.py [--messages 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign import number

from devstack.processes import start_redis
from worker.app import client_app
from worker.producer import Producer
from worker.stores import RedisLedger


def one_run(messages: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dw-enqueue-") as workdir:
        server = start_redis(Path(workdir))
        try:
            url = f"{server.extra['url']}/0"
            client = redis.Redis.from_url(url)
            app = client_app(url, url, name="bench-enqueue")
            ledger = RedisLedger(client)
            producer = Producer(app=app, ledger=ledger)
            batch = [
                {"provider": "smspartner", "to": [number(i)], "text": f"Campaign 0 #{i}"}
                for i in range(messages)
            ]
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            started = time.perf_counter()
            ids = producer.send_many("sms", batch)
            seconds = time.perf_counter() - started
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            assert len(ids) == messages and client.zcard(ledger.keys.active) == messages
            return {
                "enqueue_s": round(seconds, 2),
                "us_per_msg": round(seconds / messages * 1e6, 1),
                "rss_peak_mb": round(peak, 1),
                "rss_added_mb": round(peak - before, 1),
            }
        finally:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.messages)))
        return 0
    runs = []
    for run in range(args.runs):
        out = subprocess.run(
            [sys.executable, __file__, "--one", "--messages", str(args.messages)],
            check=True,
            capture_output=True,
            text=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"run {run}: {runs[-1]}", flush=True)
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"send_many of {args.messages} SMS, medians of {args.runs} run(s): {median}")
    target = 10.0 * args.messages / 100_000
    if median["enqueue_s"] > target:
        print(f"MISSED: enqueue {median['enqueue_s']} s > {target:.1f} s")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
