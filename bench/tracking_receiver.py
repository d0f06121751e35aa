"""Benchmark: the tracking receiver's sustained Postal events/s, nothing lost, nothing twice.

Starts a private redis-server (AOF, ``appendfsync always``, as in production) and the receiver
as a real process (``delivery-worker receiver``, uvicorn), signs N Postal webhook envelopes
(docs/providers/postal.md §4.6) with a sandbox server key *before* the clock starts, then POSTs them
over keep-alive connections with C in flight at once (a thread each). Every envelope is verified
(RSA SHA-256), parsed, deduplicated in Redis and published as a ``delivery.track_events``
task. Then it
counts the tasks on the broker queue: each envelope's uuid must be there exactly once. A
second pass replays a sample of the same envelopes: each must be answered "duplicate" and add
nothing.

Prints the figures, writes them to ``bench/results/tracking_receiver-<timestamp>.json`` and
exits 1 if an event was lost, published twice, or refused.

    python bench/tracking_receiver.py [--events 10000] [--concurrency 16] [--workers 1]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from delivery_sandbox.webhooks import PostalSigner
from devstack.processes import start_redis
from devstack.receiver import queued_tasks, start_receiver
from worker.tasknames import TRACK_EVENTS_TASK

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
EVENTS = ("MessageSent", "MessageDelayed", "MessageDeliveryFailed", "MessageHeld")
STATUS = {
    "MessageSent": "Sent",
    "MessageDelayed": "SoftFail",
    "MessageDeliveryFailed": "HardFail",
    "MessageHeld": "Held",
}


def _signed(signer: PostalSigner, count: int) -> list[tuple[str, bytes, dict[str, str]]]:
    out = []
    for i in range(count):
        event = EVENTS[i % len(EVENTS)]
        payload = {
            "message": {
                "id": 100_000 + i,
                "token": "a4udnay1xY2bQ9mZ",
                "direction": "outgoing",
                "message_id": f"bench-{i}@rp.example.com",
                "to": f"user{i}@example.com",
                "from": "shop@example.org",
                "subject": "Your order",
                "timestamp": time.time(),
                "spam_status": "NotChecked",
                "tag": "bench",
            },
            "status": STATUS[event],
            "details": f"Message for user{i}@example.com accepted by mx.example.com",
            "output": "250 2.0.0 OK",
            "sent_with_ssl": True,
            "timestamp": time.time(),
            "time": 0.2,
        }
        out.append(signer.signed_request(event, payload))
    return out


def _post_all(
    url: str, requests: list[tuple[str, bytes, dict[str, str]]], concurrency: int
) -> tuple[float, list[float], dict[str, int]]:
    """POST every request, ``concurrency`` keep-alive connections at once (one thread each:
    http.client costs the client far less CPU than an async client, so the figure is the
    receiver's)."""
    parts = urlsplit(url)
    latencies: list[float] = []
    answers: dict[str, int] = {}
    lock = threading.Lock()
    pending = list(reversed(requests))

    def worker() -> None:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        try:
            while True:
                with lock:
                    if not pending:
                        return
                    _, body, headers = pending.pop()
                started = time.perf_counter()
                conn.request("POST", "/hooks/postal", body=body, headers=headers)
                response = conn.getresponse()
                answer = json.loads(response.read())
                elapsed = time.perf_counter() - started
                key = f"{response.status} {answer.get('status')}"
                with lock:
                    latencies.append(elapsed)
                    answers[key] = answers.get(key, 0) + 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, answers


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="receiver server processes")
    parser.add_argument("--replays", type=int, default=1000, help="envelopes sent again")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-receiver-") as tmp:
        workdir = Path(tmp)
        redis_proc = start_redis(workdir / "redis")
        receiver = None
        try:
            signer = PostalSigner()
            env = {
                "DELIVERY_BROKER_URL": f"{redis_proc.extra['url']}/0",
                "DELIVERY_RESULT_BACKEND": f"{redis_proc.extra['url']}/1",
                "DELIVERY_POSTAL_WEBHOOK_PUBLIC_KEY": signer.public_key,
                "DELIVERY_LOG_LEVEL": "WARNING",
            }
            receiver = start_receiver(workdir, env, workers=args.workers)
            url = str(receiver.extra["url"])
            print(f"signing {args.events} envelopes…", flush=True)
            requests = _signed(signer, args.events)
            elapsed, latencies, answers = _post_all(url, requests, args.concurrency)
            broker = redis.Redis.from_url(f"{redis_proc.extra['url']}/0")
            tasks = queued_tasks(broker)
            replays = requests[: args.replays]
            _, _, replay_answers = _post_all(url, replays, args.concurrency)
            after_replay = broker.llen("delivery")
        finally:
            if receiver is not None:
                receiver.stop()
            redis_proc.stop()

    ids = [args_[0][0]["event_id"] for name, args_ in tasks if name == TRACK_EVENTS_TASK]
    sent = {uuid for uuid, _, _ in requests}
    lost = len(sent - set(ids))
    twice = len(ids) - len(set(ids))
    result: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "events": args.events,
        "concurrency": args.concurrency,
        "receiver_workers": args.workers,
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round(args.events / elapsed, 1),
        "latency_ms": {
            "p50": round(statistics.median(latencies) * 1000, 2),
            "p99": round(_percentile(latencies, 0.99) * 1000, 2),
            "max": round(max(latencies) * 1000, 2),
        },
        "answers": answers,
        "published_tasks": len(ids),
        "lost": lost,
        "published_twice": twice,
        "replays": len(replays),
        "replay_answers": replay_answers,
        "tasks_after_replays": after_replay,
    }
    print(json.dumps(result, indent=2))
    print(
        f"\n{args.events} signed Postal events in {elapsed:.2f} s: "
        f"{result['events_per_s']} events/s sustained "
        f"(p50 {result['latency_ms']['p50']} ms, p99 {result['latency_ms']['p99']} ms, "
        f"{args.concurrency} in flight, {args.workers} receiver process(es)); "
        f"published {len(ids)}, lost {lost}, twice {twice}; "
        f"{len(replays)} replays → {replay_answers}, queue after: {after_replay}"
    )
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS_DIR / f"tracking_receiver-{stamp}.json").write_text(json.dumps(result, indent=2))
    ok = (
        lost == 0
        and twice == 0
        and answers == {"200 published": args.events}
        and replay_answers == {"200 duplicate": len(replays)}
        and after_replay == args.events
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
