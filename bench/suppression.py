"""Benchmark: what suppression costs and what it saves, over real processes.

One private redis-server (broker, results and shared state), the provider sandbox with
``--latency-ms`` on SMS Partner, and P ``celery worker`` processes x concurrency C. For each
run, three measurements of N single-number SMS (default 10,000, 2 x 8):

1. **anchor**: the hand-written Celery task of ``bench/throughput_app.py`` (acks_late,
   prefetch 1, one POST per SMS) at the same processes and concurrency;
2. **off**: delivery-worker with ``DELIVERY_SUPPRESSION=false`` and the list filled;
3. **on**: delivery-worker with the list holding ``--suppressed`` (default 5 %) of the
   recipients, every fifth of them written as another provider's hard bounce would leave it.

Each prints msgs/s (first enqueue to last stored result), Redis commands per message as
``INFO commandstats`` counts them (commands run inside Lua scripts included, the bench's own
reads left out), provider requests, and **requests to suppressed recipients** (0 is the
promise). Then, once:

4. **effect**: a number is added to the list (as a STOP or a bounce does) and an SMS to it is
   enqueued at once, 20 times: the time from the add to the stored ``suppressed`` result, and
   the requests it caused (0);
5. **memory**: 1,000,000 entries written with a pipeline into an empty redis-server: bytes per
   entry (``INFO memory``), and the commands and time of one send's lookup (one ``HMGET`` in
   the begin script) against that list.

Medians over ``--runs`` (default 3). Writes ``bench/results/suppression-<timestamp>.json``.

    python bench/suppression.py [--messages 10000] [--suppressed 0.05] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

from throughput import start_anchor_worker  # noqa: E402
from throughput_app import TASK_NAME as ANCHOR_TASK  # noqa: E402

from devstack.processes import (  # noqa: E402
    Proc,
    sandbox_env,
    start_redis,
    start_sandbox,
    start_worker,
)
from worker.app import client_app  # noqa: E402
from worker.config import Settings  # noqa: E402
from worker.producer import Producer  # noqa: E402
from worker.stores import RedisLedger  # noqa: E402
from worker.stores.suppression import (  # noqa: E402
    Entry,
    RecipientHasher,
    RedisSuppressionStore,
)

SECRET = "bench-suppression-secret"
HOLD = "bench-hold"  # the queue start_anchor_worker's workers watch before they are told


@dataclass
class Figures:
    label: str
    messages: int
    msgs_per_s: float = 0.0
    commands_per_msg: float = 0.0
    provider_requests: int = 0
    suppressed_recipients: int = 0
    requests_to_suppressed: int = 0
    results: dict[str, int] = field(default_factory=dict)


def number(i: int) -> str:
    # Ends in 1: the sandbox gives some endings a meaning (0014: STOP-listed, 0500: code 500).
    return f"+3361{i % 1_000_000:06d}1"


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command as Redis counts them (a command run inside a script counts too)."""
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def commands_between(before: dict[str, int], after: dict[str, int], own: int) -> int:
    return sum(after.values()) - sum(before.values()) - own


class Bench:
    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = workdir
        self.redis_proc = start_redis(workdir / "redis", appendonly=False)
        self.sandbox = start_sandbox(workdir / "sandbox", extra_args=["--quiet"])
        url = str(self.redis_proc.extra["url"])
        self.url = url
        self.redis = redis.Redis.from_url(f"{url}/0")
        self.admin = httpx.Client(base_url=str(self.sandbox.extra["url"]), timeout=60)
        self.env = {
            **sandbox_env(str(self.sandbox.extra["url"])),
            "DELIVERY_BROKER_URL": f"{url}/0",
            "DELIVERY_RESULT_BACKEND": f"{url}/1",
            "DELIVERY_SUPPRESSION_SECRET": SECRET,
            "DELIVERY_LOG_LEVEL": "WARNING",
            "DELIVERY_TRACKING_POLL_FIRST_S": "3600",  # no lookups inside the measurement
        }
        # The worker's own hasher: the secret as the worker reads it from its environment.
        settings = Settings(suppression_secret=SECRET)  # type: ignore[arg-type]
        self.hasher = RecipientHasher(settings.suppression_key)
        self.store = RedisSuppressionStore(self.redis)

    def close(self) -> None:
        self.admin.close()
        self.sandbox.stop()
        self.redis_proc.stop()

    def reset(self) -> None:
        """Empty Redis and the sandbox; put SMS Partner's latency back."""
        self.admin.post("/_admin/reset").raise_for_status()
        if self.args.latency_ms:
            rule = {"provider": "smspartner", "action": "latency", "delay_ms": self.args.latency_ms}
            self.admin.post("/_admin/faults", json={"rules": [rule]}).raise_for_status()
        self.redis.flushall()

    def fill(self, n: int, share: float) -> set[str]:
        """Put ``share`` of the N recipients on the sms list; returns those numbers."""
        step = max(1, round(1 / share)) if share > 0 else n + 1
        suppressed = {number(i) for i in range(0, n, step)}
        for k, num in enumerate(sorted(suppressed)):
            reason = "hard_bounce" if k % 5 == 0 else "stop"
            self.store.add(
                Entry(
                    channel="sms",
                    key=self.hasher.key("sms", num),
                    reason=reason,
                    source="tracking" if reason == "hard_bounce" else "send",
                    provider="smspartner",
                    at=time.time(),
                    expires_at=None,
                    masked=num[:4] + "****" + num[-2:],
                )
            )
        return suppressed

    def provider_traffic(self) -> tuple[int, dict[str, int]]:
        """SMS Partner requests the sandbox received, and accepted messages per number."""
        params = {"provider": "smspartner"}
        requests = self.admin.get("/_admin/requests", params=params).json()["requests"]
        per_number: dict[str, int] = {}
        for message in self.admin.get("/_admin/messages", params=params).json()["messages"]:
            for num in message.get("recipients") or []:
                per_number[num] = per_number.get(num, 0) + 1
        return len(requests), per_number

    def workers(self, anchor: bool, env: dict[str, str]) -> tuple[list[Proc], Celery]:
        procs = []
        for p in range(self.args.processes):
            name = f"{'anchor' if anchor else 'dw'}{p}"
            if anchor:
                procs.append(
                    start_anchor_worker(
                        self.workdir / "logs",
                        {
                            "BENCH_BROKER_URL": env["DELIVERY_BROKER_URL"],
                            "BENCH_RESULT_BACKEND": env["DELIVERY_RESULT_BACKEND"],
                            "BENCH_SMSPARTNER_URL": env["DELIVERY_SMSPARTNER_BASE_URL"],
                            "BENCH_SMSPARTNER_API_KEY": env["DELIVERY_SMSPARTNER_API_KEY"],
                        },
                        name=name,
                        concurrency=self.args.concurrency,
                        pool="prefork",
                    )
                )
            else:
                procs.append(
                    start_worker(
                        self.workdir / "logs",
                        env,
                        name=name,
                        concurrency=self.args.concurrency,
                        queues=HOLD,
                        events=False,
                    )
                )
        if anchor:
            app = Celery("bench-supp-anchor", broker=env["DELIVERY_BROKER_URL"])
            app.conf.update(
                result_backend=env["DELIVERY_RESULT_BACKEND"],
                task_serializer="json",
                accept_content=["json"],
            )
        else:
            app = client_app(env["DELIVERY_BROKER_URL"], env["DELIVERY_RESULT_BACKEND"], name="b")
        names = {f"{'anchor' if anchor else 'dw'}{p}" for p in range(self.args.processes)}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            seen = {n.partition("@")[0] for r in app.control.ping(timeout=0.5) or [] for n in r}
            if names <= seen:
                return procs, app
            if not all(p.alive() for p in procs):
                break
        raise RuntimeError("workers did not start:\n" + "\n".join(p.log_tail() for p in procs))

    def measure(self, label: str, share: float, suppression: bool, anchor: bool) -> Figures:
        n = self.args.messages
        self.reset()
        suppressed = self.fill(n, share) if share else set()
        env = {**self.env, "DELIVERY_SUPPRESSION": "true" if suppression else "false"}
        procs, app = self.workers(anchor, env)
        fig = Figures(label=label, messages=n, suppressed_recipients=len(suppressed))
        try:
            queue = "anchor" if anchor else "delivery"
            if anchor:
                ids = [
                    app.send_task(ANCHOR_TASK, args=[number(i), "bench", f"s{i}"], queue=queue).id
                    for i in range(n)
                ]
            else:
                producer = Producer(app=app, ledger=RedisLedger(self.redis))
                message = {"provider": "smspartner", "text": "Suppression bench"}
                ids = [producer.enqueue("sms", {**message, "to": [number(i)]}).id for i in range(n)]
            nodes = [n for r in app.control.ping(timeout=1.0) or [] for n in r]
            before = commandstats(self.redis)
            started = time.monotonic()
            app.control.add_consumer(queue, destination=nodes, reply=False)
            results, polls = self.wait(ids)
            elapsed = time.monotonic() - started
            after = commandstats(self.redis)
            # The bench's own reads: one MGET per poll, and one INFO.
            fig.commands_per_msg = round(commands_between(before, after, polls + 1) / n, 2)
            fig.msgs_per_s = round(n / elapsed, 1)
            fig.provider_requests, by_number = self.provider_traffic()
            fig.requests_to_suppressed = sum(by_number.get(num, 0) for num in suppressed)
            fig.results = results
        finally:
            for proc in procs:
                proc.stop()
            app.close()
        return fig

    def wait(self, ids: Sequence[str]) -> tuple[dict[str, int], int]:
        backend = redis.Redis.from_url(f"{self.url}/1")
        pending = list(ids)
        statuses: dict[str, int] = {}
        polls = 0
        deadline = time.monotonic() + self.args.timeout
        while pending and time.monotonic() < deadline:
            time.sleep(0.2)
            still = []
            for start in range(0, len(pending), 2000):
                chunk = pending[start : start + 2000]
                polls += 1
                raw = backend.mget([f"celery-task-meta-{t}" for t in chunk])
                for task_id, value in zip(chunk, raw, strict=True):
                    meta = json.loads(value) if value else {}
                    if meta.get("status") in ("SUCCESS", "FAILURE"):
                        result = meta.get("result")
                        kind = _kind(result)
                        statuses[kind] = statuses.get(kind, 0) + 1
                    else:
                        still.append(task_id)
            pending = still
        backend.close()
        if pending:
            raise RuntimeError(f"{len(pending)} results missing after {self.args.timeout}s")
        return statuses, polls

    def effect(self, tries: int = 20) -> dict[str, Any]:
        """Add a number to the list, enqueue an SMS to it at once: time to ``suppressed``."""
        self.reset()
        procs, app = self.workers(False, self.env)
        nodes = [n for r in app.control.ping(timeout=1.0) or [] for n in r]
        app.control.add_consumer("delivery", destination=nodes, reply=False)
        producer = Producer(app=app, ledger=RedisLedger(self.redis))
        took: list[float] = []
        kinds: list[str] = []
        try:
            for i in range(tries):
                num = number(900_000 + i)
                added = time.monotonic()
                self.store.add(
                    Entry(channel="sms", key=self.hasher.key("sms", num), reason="stop",
                          source="send", provider="smspartner", at=time.time(),
                          expires_at=None, masked="+336****1")
                )  # fmt: skip
                message = {"provider": "smspartner", "to": [num], "text": "after STOP"}
                result = producer.enqueue("sms", message).get(timeout=30)
                took.append(time.monotonic() - added)
                kinds.append(_kind(result))
            requests, _ = self.provider_traffic()
        finally:
            for proc in procs:
                proc.stop()
            app.close()
        return {
            "tries": tries,
            "suppressed": kinds.count("suppressed"),
            "provider_requests": requests,
            "median_s": round(statistics.median(took), 3),
            "max_s": round(max(took), 3),
        }

    def memory(self, entries: int) -> dict[str, Any]:
        """Bytes per entry with ``entries`` on one list, and one lookup against it."""
        self.reset()
        base = int(self.redis.info("memory")["used_memory"])
        key = self.store.key("sms")
        sample = Entry(channel="sms", key="0" * 32, reason="stop", source="import",
                       provider="smspartner", at=time.time(), expires_at=None,
                       masked="+336****01").encode()  # fmt: skip
        pipe = self.redis.pipeline(transaction=False)
        for i in range(entries):
            pipe.hset(key, self.hasher.key("sms", number(i)), sample)
            if i % 10_000 == 9_999:
                pipe.execute()
        pipe.execute()
        used = int(self.redis.info("memory")["used_memory"])
        before = commandstats(self.redis)
        started = time.perf_counter()
        found = self.store.check("sms", [self.hasher.key("sms", number(entries // 2))])
        lookup_ms = (time.perf_counter() - started) * 1000
        after = commandstats(self.redis)
        return {
            "entries": entries,
            "used_memory_mb": round((used - base) / 1e6, 1),
            "bytes_per_entry": round((used - base) / entries, 1),
            "lookup_commands": commands_between(before, after, 1),
            "lookup_ms": round(lookup_ms, 3),
            "found": len(found),
        }


def _kind(result: Any) -> str:
    if not isinstance(result, dict):
        return "http" if isinstance(result, int) else "other"
    if result.get("status") == "failed":
        return str((result.get("error") or {}).get("kind", "failed"))
    return str(result.get("status", "other"))


def medians(runs: Sequence[Sequence[Figures]]) -> list[dict[str, Any]]:
    rows = []
    for i, first in enumerate(runs[0]):
        same = [run[i] for run in runs]

        def med(get: Callable[[Figures], float], same: list[Figures] = same) -> float:
            return round(statistics.median(get(f) for f in same), 2)

        rows.append(
            {
                "label": first.label,
                "msgs/s": med(lambda f: f.msgs_per_s),
                "redis/msg": med(lambda f: f.commands_per_msg),
                "requests": med(lambda f: f.provider_requests),
                "suppressed": first.suppressed_recipients,
                "to suppressed": max(f.requests_to_suppressed for f in same),
                "results": first.results,
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--suppressed", type=float, default=0.05)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="dw-bench-suppression-"))
    bench = Bench(workdir, args)
    print(
        f"suppression bench: {args.messages} SMS, {args.suppressed:.0%} suppressed, "
        f"{args.processes} workers x {args.concurrency}, {args.latency_ms} ms latency, "
        f"{args.runs} run(s)",
        flush=True,
    )
    try:
        runs = []
        for r in range(args.runs):
            figs = []
            for label, share, on, anchor in (
                ("anchor (hand-written task)", 0.0, False, True),
                ("delivery-worker, suppression off", args.suppressed, False, False),
                ("delivery-worker, suppression on", args.suppressed, True, False),
            ):
                print(f"  run {r + 1}: {label} ...", flush=True)
                figs.append(bench.measure(label, share, on, anchor))
                print(f"    {asdict(figs[-1])}", flush=True)
            runs.append(figs)
        rows = medians(runs)
        effect = bench.effect()
        memory = bench.memory(args.entries)
    finally:
        bench.close()
    print()
    print(f"medians of {args.runs} run(s):")
    head = f"{'':36} {'msgs/s':>8} {'redis/msg':>10} {'requests':>9} {'suppr.':>7} {'to suppr.':>9}"
    print(head)
    for row in rows:
        print(
            f"{row['label']:36} {row['msgs/s']:>8} {row['redis/msg']:>10} "
            f"{row['requests']:>9} {row['suppressed']:>7} {row['to suppressed']:>9}"
        )
    print(f"effect of an add on the next send: {effect}")
    print(f"memory: {memory}")
    out = BENCH_DIR / "results"
    out.mkdir(exist_ok=True)
    path = out / f"suppression-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(
        json.dumps(
            {
                "config": vars(args),
                "runs": [[asdict(f) for f in run] for run in runs],
                "medians": rows,
                "effect": effect,
                "memory": memory,
            },
            indent=2,
        )
    )
    print(f"figures written to {path.relative_to(BENCH_DIR.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
