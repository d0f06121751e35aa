"""CPU time per message with Prometheus metrics on and off: the same workload, one run.

Each message goes through the real delivery pipeline (``worker.delivery.process``: ledger,
lock, gate, limiter, driver, outcome) on the Redis stores of a private ``redis-server``, in
this process. The provider is an ``httpx.MockTransport`` answering SMS Partner's documented
success (docs/providers/smspartner.md §1.2.2, with a cost), so the measure is the worker's own CPU,
not the network or a sandbox sharing the cores. Celery's own per-message work is left out too: both
make the denominator smaller, so the overhead printed is an upper bound of what a worker sees.

"on" is prometheus-client in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, memory-mapped
files, as under the exporter); "off" replaces every function of the facade
(``worker.metrics.record``) by a no-op. Batches alternate on/off, and the figures are the medians
of ``--runs`` batches each; the overhead is the median of the on/off ratio of ``--runs``
pairs of adjacent batches (on first in half of them), which cancels the load other processes
put on a shared host. Exit status 1 if the overhead is 5 % or more.

    python bench/metrics_overhead.py --messages 100 --runs 41
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = 0.05


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100, help="messages per batch")
    parser.add_argument("--runs", type=int, default=41, help="batches per mode")
    parser.add_argument("--warmup", type=int, default=100, help="messages before measuring")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="dw-metrics-bench-"))
    # Before anything imports prometheus_client: the workers' multiprocess mode.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(workdir / "prom")

    import httpx
    import redis

    from devstack.processes import start_redis
    from worker.config import Settings
    from worker.delivery import process
    from worker.logs import configure_logging
    from worker.metrics import record
    from worker.runtime import Runtime, breaker_config
    from worker.stores import Stores

    configure_logging("WARNING", "json")
    ok = {"success": True, "code": 200, "message_id": 307, "nb_sms": 1, "cost": 0.038,
          "currency": "EUR"}  # fmt: skip

    def answer(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=ok)

    redis_proc = start_redis(workdir / "redis", appendonly=False)
    try:
        client = redis.Redis.from_url(str(redis_proc.extra["url"]) + "/0")
        settings = Settings(smspartner_api_key="bench-key")
        stores = Stores.on_redis(
            client,
            breaker=breaker_config(settings),
            safety_margin_s=settings.limiter_safety_margin_s,
        )
        rt = Runtime(
            settings, client=httpx.Client(transport=httpx.MockTransport(answer)), stores=stores
        )
        facade = {name: getattr(record, name) for name in record.__all__ if callable(
            getattr(record, name))}  # fmt: skip
        # attempt_fields and status_class feed the log event too: they stay in both modes.
        switched = [n for n in facade if n not in ("attempt_fields", "status_class")]

        def metrics_on(on: bool) -> None:
            for name in switched:
                setattr(record, name, facade[name] if on else (lambda *a, **k: None))

        def batch(n: int) -> float:
            message: dict[str, Any] = {"provider": "smspartner", "to": ["+33612345678"],
                                       "text": "Your code is 1234"}  # fmt: skip
            start = time.process_time()
            for _ in range(n):
                outcome = process(
                    "sms", message, delivery_id=str(uuid.uuid4()), task_name="tasks.send_sms", rt=rt
                )
                assert outcome.result.status == "sent", outcome
            return (time.process_time() - start) / n

        metrics_on(True)
        batch(args.warmup)
        metrics_on(False)
        batch(args.warmup)
        per_mode: dict[str, list[float]] = {"on": [], "off": []}
        ratios: list[float] = []
        for i in range(args.runs):
            # Pairs of batches, on then off, then off then on: each mode goes first in half of
            # the pairs, so a drift over the run (Redis growing) favours neither; and each pair
            # runs within a second, so the load other processes put on the host is about the
            # same for both halves of a pair.
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            pair = {}
            for mode in order:
                metrics_on(mode == "on")
                pair[mode] = batch(args.messages)
                per_mode[mode].append(pair[mode])
            ratios.append(pair["on"] / pair["off"])
        metrics_on(True)

        # The metrics work of one sent message alone, without the pipeline around it: the
        # facade calls the gate, the send step and the outcome make.
        def one_message() -> None:
            record.limiter_wait("smspartner", 0.0)
            record.provider_request("smspartner", "sms", 200, "accepted", 0.004)
            record.enqueue_to_accept("smspartner", "sms", 0.5)
            record.cost("smspartner", 0.038, "EUR")
            record.finished("smspartner", "sms", "sent", "none")

        start = time.process_time()
        for _ in range(20_000):
            one_message()
        facade_us = (time.process_time() - start) / 20_000 * 1e6
    finally:
        redis_proc.stop()

    on_us = statistics.median(per_mode["on"]) * 1e6
    off_us = statistics.median(per_mode["off"]) * 1e6
    overhead = statistics.median(ratios) - 1
    print(f"CPU per message, metrics off: {off_us:.1f} us (median of {args.runs} batches)")
    print(f"CPU per message, metrics on:  {on_us:.1f} us (median of {args.runs} batches)")
    print(
        f"overhead: {overhead * 100:+.2f} % (median of {args.runs} paired batches; "
        f"ratio of the medians {(on_us / off_us - 1) * 100:+.2f} %; target < {TARGET * 100:.0f} %)"
    )
    print(
        f"the facade calls of one sent message alone: {facade_us:.1f} us "
        f"({facade_us / off_us * 100:.2f} % of a message's CPU with metrics off)"
    )
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "metrics_overhead.json").write_text(
        json.dumps(
            {
                "messages_per_batch": args.messages,
                "runs": args.runs,
                "cpu_us_per_message": {"on": on_us, "off": off_us},
                "batches_us": {k: [x * 1e6 for x in v] for k, v in per_mode.items()},
                "overhead": overhead,
                "paired_ratios": ratios,
                "facade_us_per_message": facade_us,
            },
            indent=2,
        )
    )
    return 0 if overhead < TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
