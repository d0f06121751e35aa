"""Benchmark: a campaign (``worker.producer.send_many``) against one task per SMS.

Starts a private redis-server (broker, result backend and shared state on one instance, so
``INFO commandstats`` counts every command of the run, those a Lua script runs included) and
the provider sandbox with ``--latency-ms`` (50) on SMS Partner, as real processes. Per run:

1. **anchor**: ``--workers`` (2) hand-written Celery workers (``bench/throughput_app.py``: one
   task per SMS, acks_late, one httpx POST to SMS Partner ``/send``), prefork at
   ``--concurrency``; ``--anchor-messages`` SMS (its msgs/s does not depend on the count);
2. **campaign**: the same number of ``celery -A worker worker`` at the same concurrency;
   ``send_many("sms", ...)`` of ``--messages`` (100,000) single-number SMS, each with its own
   text (``/bulk-send``, 500 per request);
3. variants (``--variants``): ``refused``, 5% of the recipients STOP-listed at the sandbox
   (refused per item); ``sigkill``, the pool processes of one worker SIGKILLed once a third of
   the messages were accepted.

Figures: messages ``sent`` (and ``failed`` where refused), provider send requests, end-to-end
msgs/s (first enqueue to the last delivery's final write, both phases measured the same way)
and its ratio to the anchor, the producer's enqueue time, Redis commands per message from
``INFO commandstats`` (the bench's own polls left out: one ``ZCARD`` per poll), peak RSS of
the producer (this process) and of the worker processes (``VmHWM``, summed per worker), and
for each variant the messages lost and duplicated at the sandbox (copies per recipient).

With ``--otp`` the bench runs instead the one-time-code scenario: the same workers, a campaign
of ``--messages`` (``bulk``, the default of ``send_many``) and, from the end of its enqueue until
it has drained, an SMS one-time code (``priority: high``, a single send) every 0.5 s. Per code,
its enqueue to its arrival at the sandbox (the sandbox's clock, the same host); p50 and p99 with
lanes on (the campaign's chunks wait in the ``bulk`` lane) and, in the same run, the anchor with
lanes off (``DELIVERY_LANES=0``: the chunks and the codes in one FIFO broker line). Target: p99
≤ 1 s with lanes.

Medians over ``--runs``. Targets (exit 1 when one is missed): every message ``sent`` (bar the
refused ones), at most ``--max-requests`` (205 for 100,000, scaled) provider requests,
campaign msgs/s at least 10x the anchor's, enqueue of the messages in at most 10 s per 100,000,
at most 10 Redis commands per message, 0 lost and 0 duplicated.

    flock /work/... python bench/campaign.py [--messages 100000] [--runs 3]
    flock /work/... python bench/campaign.py --otp [--messages 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput

from devstack.processes import Proc, sandbox_env, start_redis, start_sandbox, start_worker
from worker.app import client_app
from worker.producer import Producer
from worker.stores import RedisLedger
from worker.stores.keys import DEFAULT_KEYS

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
PROVIDER = "smspartner"
OWN_COMMANDS = {"info", "zcard", "config", "flushall", "ping"}
"""The bench's own commands (``INFO``, its ``ZCARD`` polls, resets), left out of the counts."""


@dataclass
class Figures:
    phase: str
    messages: int
    sent: int = 0
    failed: int = 0
    requests: int = 0
    seconds: float = 0.0
    msgs_per_s: float = 0.0
    enqueue_s: float = 0.0
    commands_per_msg: float = 0.0
    producer_rss_mb: float = 0.0
    worker_rss_mb: list[float] = field(default_factory=list)
    lost: int = 0
    duplicated: int = 0
    kills: int = 0
    top_commands: dict[str, int] = field(default_factory=dict)


def number(i: int) -> str:
    """Never a sandbox magic number: ends in 1 (``…0014`` is STOP-listed)."""
    return f"+336{(10_000_000 + 10 * i + 1) % 100_000_000:08d}"


def stop_number(i: int) -> str:
    return f"+336{(20_000_000 + 10_000 * i + 14) % 100_000_000:08d}"


def commandstats(client: redis.Redis) -> Counter[str]:
    stats = client.info("commandstats")
    return Counter(
        {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if "calls" in v}
    )


def vm_hwm_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return round(total / 1024, 1)


class Bench:
    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.args = args
        self.redis_proc = start_redis(workdir / "redis", appendonly=not args.no_aof)
        self.sandbox = start_sandbox(workdir / "sandbox", extra_args=["--quiet"])
        self.url = f"{self.redis_proc.extra['url']}/0"
        self.sandbox_url = str(self.sandbox.extra["url"])
        self.client = redis.Redis.from_url(self.url)
        self.admin = httpx.Client(base_url=self.sandbox_url, timeout=120)
        self.workers: list[Proc] = []

    def close(self) -> None:
        self.stop_workers()
        self.admin.close()
        self.client.close()
        self.sandbox.stop()
        self.redis_proc.stop()

    def stop_workers(self) -> None:
        for proc in self.workers:
            with contextlib.suppress(Exception):
                proc.stop(signal.SIGTERM, timeout_s=60)
        self.workers = []

    def reset(self) -> None:
        self.client.flushall()
        self.admin.post("/_admin/reset").raise_for_status()
        self.admin.post("/_admin/balance", json={"provider": PROVIDER, "credits": 10**8})
        rule = {"provider": PROVIDER, "action": "latency", "delay_ms": self.args.latency_ms}
        self.admin.post("/_admin/faults", json={"rules": [rule]}).raise_for_status()

    def sends(self) -> list[dict[str, Any]]:
        data = self.admin.get("/_admin/requests", params={"provider": PROVIDER}).json()
        return [q for q in data["requests"] if q["method"] == "POST"]

    def copies(self) -> Counter[str]:
        data = self.admin.get("/_admin/messages", params={"provider": PROVIDER}).json()
        return Counter(n for m in data["messages"] for n in m["recipients"])

    def wait_ready(self, app: Celery, names: list[str]) -> list[str]:
        deadline = time.monotonic() + 120
        nodes: list[str] = []
        while time.monotonic() < deadline:
            for proc in self.workers:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
            nodes = [n for r in app.control.ping(timeout=0.5) or [] for n in r]
            if {n.partition("@")[0] for n in nodes} >= set(names):
                return [n for n in nodes if n.partition("@")[0] in names]
        raise RuntimeError("workers not ready")

    # -- anchor -----------------------------------------------------------------------------

    def anchor(self, run: int) -> Figures:
        n = self.args.anchor_messages
        fig = Figures("anchor", n)
        self.reset()
        app = Celery("bench-campaign-anchor", broker=self.url, backend=self.url)
        app.conf.update(task_serializer="json", accept_content=["json"])
        sandbox = sandbox_env(self.sandbox_url)
        env = {
            "BENCH_BROKER_URL": self.url,
            "BENCH_RESULT_BACKEND": self.url,
            "BENCH_SMSPARTNER_URL": sandbox["DELIVERY_SMSPARTNER_BASE_URL"],
            "BENCH_SMSPARTNER_API_KEY": sandbox["DELIVERY_SMSPARTNER_API_KEY"],
        }
        names = [f"anchor{i}r{run}" for i in range(self.args.workers)]
        for name in names:
            self.workers.append(
                throughput.start_anchor_worker(
                    self.workdir, env, name=name, concurrency=self.args.concurrency,
                    pool="prefork",
                )
            )  # fmt: skip
        try:
            nodes = self.wait_ready(app, names)
            app.control.add_consumer(throughput.QUEUE[throughput.ANCHOR], destination=nodes)
            started = time.time()
            ids = [
                app.send_task(
                    "bench.anchor_sms",
                    args=[number(i), f"Campaign anchor {run} #{i}", f"a{run}x{i}"],
                    queue=throughput.QUEUE[throughput.ANCHOR],
                ).id
                for i in range(n)
            ]
            fig.enqueue_s = time.time() - started
            done: dict[str, dict[str, Any]] = {}
            deadline = time.monotonic() + 3600
            while len(done) < n and time.monotonic() < deadline:
                pending = [t for t in ids if t not in done]
                for t, raw in zip(
                    pending,
                    self.client.mget([f"celery-task-meta-{t}" for t in pending]),
                    strict=True,
                ):
                    if raw:
                        done[t] = json.loads(raw)
                time.sleep(0.2)
            last = max(datetime.fromisoformat(m["date_done"]).timestamp() for m in done.values())
            fig.sent = sum(1 for m in done.values() if m.get("result") == 200)
            fig.seconds = round(last - started, 3)
            fig.msgs_per_s = round(fig.sent / fig.seconds, 1)
            fig.requests = len(self.sends())
            fig.worker_rss_mb = [vm_hwm_mb(throughput.group_pids(p.pid)) for p in self.workers]
        finally:
            app.close()
            self.stop_workers()
        return fig

    # -- campaign ---------------------------------------------------------------------------

    def campaign(self, run: int, variant: str) -> Figures:
        n = self.args.messages
        fig = Figures(f"campaign/{variant}" if variant else "campaign", n)
        self.reset()
        app = client_app(self.url, self.url, name="bench-campaign")
        env = {
            **sandbox_env(self.sandbox_url),
            "DELIVERY_BROKER_URL": self.url,
            "DELIVERY_RESULT_BACKEND": self.url,
            "DELIVERY_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            "DELIVERY_VOICEPARTNER_NOTIFICATION_EMAIL": "ops@example.org",
            # A killed chunk's locks free, and its items are looked up, within seconds.
            **(throughput_fast_env() if variant == "sigkill" else {}),
        }
        names = [f"dw{i}r{run}{variant}" for i in range(self.args.workers)]
        for name in names:
            self.workers.append(
                start_worker(
                    self.workdir, env, name=name, concurrency=self.args.concurrency, events=False
                )
            )
        refused = {i for i in range(n) if variant == "refused" and i % 20 == 7}
        numbers = [stop_number(i) if i in refused else number(i) for i in range(n)]
        messages = [
            {"provider": PROVIDER, "to": [num], "text": f"Campaign {run} #{i}"}
            for i, num in enumerate(numbers)
        ]
        try:
            self.wait_ready(app, names)
            producer = Producer(app=app, ledger=RedisLedger(self.client))
            time.sleep(1.0)  # idle polls of the fresh workers settle
            before = commandstats(self.client)
            started = time.time()
            ids = producer.send_many("sms", messages)
            fig.enqueue_s = round(time.time() - started, 3)
            fig.producer_rss_mb = round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
            )
            del messages
            polls = self._wait(ids, fig, variant)
            after = commandstats(self.client)
            used = after - before
            used["zcard"] -= polls
            counted = Counter({k: v for k, v in used.items() if k not in OWN_COMMANDS})
            fig.commands_per_msg = round(sum(counted.values()) / n, 2)
            fig.top_commands = dict(counted.most_common(40))
            states, times = self._final(ids)
            fig.sent = states["sent"]
            fig.failed = states["failed"]
            fig.seconds = round(max(times) - started, 3)
            fig.msgs_per_s = round((fig.sent + fig.failed) / fig.seconds, 1)
            sends = self.sends()
            fig.requests = len(sends)
            copies = self.copies()
            expected = [num for i, num in enumerate(numbers) if i not in refused]
            fig.lost = sum(1 for num in expected if copies[num] == 0)
            fig.duplicated = sum(max(0, c - 1) for c in copies.values())
            fig.worker_rss_mb = [vm_hwm_mb(throughput.group_pids(p.pid)) for p in self.workers]
        finally:
            app.close()
            self.stop_workers()
        return fig

    def _wait(self, ids: list[str], fig: Figures, variant: str) -> int:
        """Until the active set is empty (every delivery final); returns the ZCARDs sent."""
        polls = 0
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            polls += 1
            if int(self.client.zcard(DEFAULT_KEYS.active)) == 0:
                return polls
            if variant == "sigkill" and fig.kills == 0:
                stats = self.admin.get("/_admin/stats").json()["providers"].get(PROVIDER, {})
                if int(stats.get("requests", 0)) * 500 >= len(ids) // 3:
                    for child in throughput_pool_children(self.workers[0]):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(child, signal.SIGKILL)
                    fig.kills += 1
            time.sleep(0.5)
        raise RuntimeError("campaign did not finish")

    def _final(self, ids: list[str]) -> tuple[Counter[str], list[float]]:
        states: Counter[str] = Counter()
        times: list[float] = []
        for start in range(0, len(ids), 5000):
            pipe = self.client.pipeline(transaction=False)
            for delivery_id in ids[start : start + 5000]:
                pipe.hmget(DEFAULT_KEYS.delivery(delivery_id), "state", "updated_at")
            for state, updated in pipe.execute():
                states[state.decode() if state else "missing"] += 1
                if updated:
                    times.append(float(updated))
        return states, times


@dataclass
class OtpFigures:
    lanes: bool
    messages: int
    codes: int = 0
    p50_s: float = 0.0
    p99_s: float = 0.0
    max_s: float = 0.0
    campaign_s: float = 0.0
    waits_s: list[float] = field(default_factory=list)


def code_number(j: int) -> str:
    """A one-time code's recipient: apart from the campaign's numbers (``+33699…``)."""
    return f"+33699{j % 100_000:05d}1"


def otp_phase(bench: Bench, run: int, lanes: bool) -> OtpFigures:
    """A campaign draining and a ``high`` SMS code every 0.5 s meanwhile (module docstring)."""
    n = bench.args.messages
    fig = OtpFigures(lanes, n)
    bench.reset()
    app = client_app(bench.url, bench.url, name="bench-campaign-otp")
    env = {
        **sandbox_env(bench.sandbox_url),
        "DELIVERY_BROKER_URL": bench.url,
        "DELIVERY_RESULT_BACKEND": bench.url,
        "DELIVERY_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        "DELIVERY_VOICEPARTNER_NOTIFICATION_EMAIL": "ops@example.org",
        "DELIVERY_LANES": "1" if lanes else "0",
    }
    names = [f"otp{i}r{run}{'l' if lanes else 'f'}" for i in range(bench.args.workers)]
    for name in names:
        bench.workers.append(
            start_worker(
                bench.workdir, env, name=name, concurrency=bench.args.concurrency, events=False
            )
        )
    messages = [
        {"provider": PROVIDER, "to": [number(i)], "text": f"Campaign {run} #{i}"} for i in range(n)
    ]
    try:
        bench.wait_ready(app, names)
        producer = Producer(app=app, ledger=RedisLedger(bench.client), lanes=lanes)
        started = time.time()
        producer.send_many("sms", messages)
        del messages
        enqueued: dict[str, float] = {}
        deadline = time.monotonic() + 3600
        # A code every 0.5 s while the campaign drains (the active set: the campaign's
        # deliveries not final yet, and the codes in flight).
        while int(bench.client.zcard(DEFAULT_KEYS.active)) > 2 and time.monotonic() < deadline:
            j = len(enqueued)
            code = {"provider": PROVIDER, "to": [code_number(j)], "text": f"Code {j:06d}"}
            at = time.time()
            producer.enqueue("sms", {**code, "priority": "high"})
            enqueued[code_number(j)] = at
            time.sleep(max(0.0, at + 0.5 - time.time()))
        while int(bench.client.zcard(DEFAULT_KEYS.active)) and time.monotonic() < deadline:
            time.sleep(0.5)
        fig.campaign_s = round(time.time() - started, 3)
        data = bench.admin.get("/_admin/messages", params={"provider": PROVIDER}).json()
        arrived = {num: float(m["time"]) for m in data["messages"] for num in m["recipients"]}
        waits = [arrived[num] - at for num, at in enqueued.items() if num in arrived]
        fig.codes = len(waits)
        if len(waits) < len(enqueued):
            raise RuntimeError(f"{len(enqueued) - len(waits)} code(s) never reached the sandbox")
        ordered = sorted(waits)
        pick = lambda q: ordered[max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))]  # noqa: E731
        fig.p50_s, fig.p99_s = round(pick(0.5), 3), round(pick(0.99), 3)
        fig.max_s = round(ordered[-1], 3)
        fig.waits_s = [round(w, 2) for w in waits]
    finally:
        app.close()
        bench.stop_workers()
    return fig


def otp_main(bench: Bench, args: argparse.Namespace) -> int:
    results: dict[bool, list[OtpFigures]] = {True: [], False: []}
    for run in range(args.runs):
        for lanes in (True, False):
            fig = otp_phase(bench, run, lanes)
            short = {k: v for k, v in asdict(fig).items() if k != "waits_s"}
            print(f"run {run}: {short}", flush=True)
            results[lanes].append(fig)

    def med(figs: list[OtpFigures], name: str) -> float:
        return float(statistics.median(float(getattr(f, name)) for f in figs))

    print(
        f"\nSMS Partner with {args.latency_ms} ms latency; {args.workers} workers x concurrency "
        f"{args.concurrency}; a {args.messages}-SMS campaign (bulk) draining, a high SMS code "
        f"every 0.5 s; medians of {args.runs} run(s)"
    )
    print("| | codes | code p50 s | code p99 s | code max s | campaign s |")
    print("|---|---|---|---|---|---|")
    for lanes, label in ((True, "lanes"), (False, "one FIFO line (lanes off)")):
        figs = results[lanes]
        print(
            f"| {label} | {med(figs, 'codes'):.0f} | {med(figs, 'p50_s'):.2f} | "
            f"{med(figs, 'p99_s'):.2f} | {med(figs, 'max_s'):.2f} | {med(figs, 'campaign_s'):.1f} |"
        )
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = {"args": vars(args), "runs": {str(k): [asdict(f) for f in v] for k, v in results.items()}}
    (RESULTS_DIR / f"campaign-otp-{stamp}.json").write_text(json.dumps(out, indent=2) + "\n")
    p99 = med(results[True], "p99_s")
    if p99 > 1.0:
        print(f"\nMISSED: code p99 {p99:.2f} s > 1 s with lanes")
        return 1
    return 0


def throughput_fast_env() -> dict[str, str]:
    """bench/fault_soak.py's FAST_ENV: short lock and reconcile grace."""
    import fault_soak

    return dict(fault_soak.FAST_ENV)


def throughput_pool_children(proc: Proc) -> list[int]:
    import fault_soak

    return list(fault_soak.pool_children(proc))


def median_row(figs: list[Figures]) -> dict[str, Any]:
    def med(name: str) -> float:
        return float(statistics.median(float(getattr(f, name)) for f in figs))

    row: dict[str, Any] = {"phase": figs[0].phase, "messages": figs[0].messages}
    for name in (
        "sent", "failed", "requests", "seconds", "msgs_per_s", "enqueue_s", "commands_per_msg",
        "producer_rss_mb", "lost", "duplicated", "kills",
    ):  # fmt: skip
        row[name] = med(name)
    row["worker_rss_mb"] = max(max(f.worker_rss_mb, default=0.0) for f in figs)
    return row


def table(rows: list[dict[str, Any]], anchor: float) -> str:
    lines = [
        "| phase | messages | sent | failed | requests | msgs/s | vs anchor | enqueue s | "
        "cmds/msg | producer RSS MB | worker RSS MB (max) | lost | dup |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["msgs_per_s"] / anchor if anchor else 0.0
        lines.append(
            f"| {r['phase']} | {r['messages']} | {r['sent']:.0f} | {r['failed']:.0f} | "
            f"{r['requests']:.0f} | {r['msgs_per_s']:.0f} | {ratio:.1f}x | {r['enqueue_s']:.2f} | "
            f"{r['commands_per_msg']:.2f} | {r['producer_rss_mb']:.0f} | "
            f"{r['worker_rss_mb']:.0f} | {r['lost']:.0f} | {r['duplicated']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--anchor-messages", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--variants", default="refused,sigkill", help="'' for none")
    parser.add_argument("--no-aof", action="store_true", help="redis-server without its AOF")
    parser.add_argument("--otp", action="store_true", help="the one-time-code scenario only")
    args = parser.parse_args(argv)
    variants = ["", *[v for v in args.variants.split(",") if v]]

    workdir = Path(tempfile.mkdtemp(prefix="bench-campaign-"))
    bench = Bench(workdir, args)
    results: dict[str, list[Figures]] = {}
    if args.otp:
        try:
            return otp_main(bench, args)
        finally:
            bench.close()
            if not os.environ.get("BENCH_KEEP"):
                shutil.rmtree(workdir, ignore_errors=True)
    try:
        for run in range(args.runs):
            fig = bench.anchor(run)
            print(f"run {run}: {asdict(fig)}", flush=True)
            results.setdefault("anchor", []).append(fig)
            for variant in variants:
                fig = bench.campaign(run, variant)
                print(f"run {run}: {asdict(fig)}", flush=True)
                results.setdefault(fig.phase, []).append(fig)
    finally:
        bench.close()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs in {workdir}")
    rows = [median_row(figs) for figs in results.values()]
    anchor = rows[0]["msgs_per_s"]
    print()
    print(
        f"SMS Partner with {args.latency_ms} ms latency; {args.workers} workers x concurrency "
        f"{args.concurrency} (prefork) each side; medians of {args.runs} run(s); Redis "
        f"{'without AOF' if args.no_aof else 'AOF appendfsync always'}"
    )
    print(table(rows, anchor))
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = {
        "args": vars(args),
        "medians": rows,
        "runs": {k: [asdict(f) for f in v] for k, v in results.items()},
    }
    (RESULTS_DIR / f"campaign-{stamp}.json").write_text(json.dumps(out, indent=2) + "\n")
    misses = []
    scale = args.messages / 100_000
    for r in rows[1:]:
        if r["lost"] or r["duplicated"]:
            misses.append(f"{r['phase']}: {r['lost']:.0f} lost, {r['duplicated']:.0f} duplicated")
        if r["phase"] == "campaign/refused":
            continue
        if r["sent"] != r["messages"]:
            misses.append(f"{r['phase']}: {r['sent']:.0f} of {r['messages']} sent")
    main_row = rows[1]
    if main_row["requests"] > max(2, round(205 * scale)):
        misses.append(f"{main_row['requests']:.0f} provider requests > {round(205 * scale)}")
    if anchor and main_row["msgs_per_s"] < 10 * anchor:
        misses.append(f"speed-up {main_row['msgs_per_s'] / anchor:.1f}x < 10x")
    if main_row["enqueue_s"] > 10 * max(scale, 0.01):
        misses.append(f"enqueue {main_row['enqueue_s']:.1f} s > {10 * scale:.1f} s")
    if main_row["commands_per_msg"] > 10:
        misses.append(f"{main_row['commands_per_msg']:.1f} Redis commands per message > 10")
    if misses:
        print("\nMISSED: " + "; ".join(misses))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
