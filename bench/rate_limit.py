"""Benchmark: the global rate limiter against Celery's per-worker ``rate_limit``.

Starts a private redis-server and the provider sandbox (EmailMassivo: 10 requests per 1 s sliding
window per client IP, 429 beyond) as real processes, then for each worker process count P:

1. ``delivery-worker``: P real ``celery -A worker worker`` processes, enqueue N valid EmailMassivo
   emails through :class:`worker.producer.Producer`, wait until every delivery is final in the
   ledger;
2. ``plain rate_limit``: the same load through ``bench/baseline_app.py``, a plain Celery task with
   ``rate_limit="10/s"`` run by P ``celery -A baseline_app worker`` processes;

and measures, from the sandbox's own request log, the achieved send rate, the largest number of
requests in any sliding 1 s window, and the 429s. Prints a table per run (medians with
``--runs`` > 1), writes the figures to ``bench/results/rate_limit-<timestamp>.json`` and exits 1
when delivery-worker misses a target (0 429s, no 1 s window above the limit, achieved rate at
least 95 % of it, every message sent). See ``bench/README.md``.

``--modes egress`` adds the scale-out across egress IPs: two groups of P workers bound to
127.0.0.1 and 127.0.0.2 (``DELIVERY_LOCAL_ADDRESS``), first with an egress identity each (two
budgets: at most 10 requests in any 1 s per client IP, at least 95 % of 20/s together), then
sharing one (one budget: at most 10 in any 1 s over both IPs), 0 429s in both.

Every row also quotes the spacing of arrivals at the sandbox (the gaps between consecutive
requests: smallest, 1st percentile, median, in ms): the limiter's waiting line paces its slots one
interval apart (``docs/limiter.md``), so the gaps sit near 104 ms unless the host delays a send.
``--busy`` runs measurements while another process keeps every core busy (one spinning child
per CPU), to show the limit holds on a loaded host.

    python bench/rate_limit.py [--messages 300] [--processes 1,2,4] [--concurrency 8] [--runs 1]
        [--busy]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import celery
import httpx
import redis
from celery import Celery
from celery.result import AsyncResult
from celery.states import READY_STATES

from devstack.processes import Proc, sandbox_env, start_redis, start_sandbox, start_worker
from worker.app import client_app
from worker.producer import Producer
from worker.stores import FINAL_STATES, RedisLedger
from worker.stores.keys import DEFAULT_KEYS

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

PROVIDER = "emailmassivo"
LIMIT_PER_S = 10
"""EmailMassivo's documented limit: 10 requests per second per IP (the sandbox enforces it)."""
WINDOW_S = 1.0
MIN_RATE_RATIO = 0.95
POLL_S = 0.25
"""How often the bench checks for finished messages (the wall time's resolution)."""

DELIVERY = "delivery-worker"
PLAIN = "plain rate_limit"
EGRESS_OWN = "2 IPs, 2 ids"
EGRESS_SHARED = "2 IPs, 1 id"
MODES = (DELIVERY, PLAIN, EGRESS_OWN, EGRESS_SHARED)
MODE_NAMES = {"delivery": DELIVERY, "plain": PLAIN, "egress": EGRESS_OWN}
"""``--modes`` spells them short; ``egress`` runs both egress scenarios."""
MODE_SHORT = {
    DELIVERY: "delivery",
    PLAIN: "plain",
    EGRESS_OWN: "egress-own",
    EGRESS_SHARED: "egress-shared",
}
DEFAULT_MODES = ("delivery", "plain")

EGRESS_ADDRESSES = ("127.0.0.1", "127.0.0.2")
"""The two source addresses of the egress scenarios. Linux routes all of 127.0.0.0/8 to the
loopback interface, so a socket bound to 127.0.0.2 reaches the sandbox listening on 127.0.0.1,
and the sandbox sees (and limits) it as another client IP."""

# Redis databases: the delivery stack and the baseline never share a key.
DB = {DELIVERY: (0, 1), PLAIN: (2, 3), EGRESS_OWN: (0, 1), EGRESS_SHARED: (0, 1)}


@dataclass(frozen=True)
class Group:
    """Worker processes sharing one source address and one egress identity."""

    name: str
    processes: int
    local_address: str | None = None
    identity: str | None = None
    """``DELIVERY_EGRESS_IDENTITY``; ``None`` leaves the environment's (or the default)."""

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.local_address is not None:
            out["DELIVERY_LOCAL_ADDRESS"] = self.local_address
        if self.identity is not None:
            out["DELIVERY_EGRESS_IDENTITY"] = self.identity
        return out


def groups_for(mode: str, processes: int) -> list[Group]:
    """delivery-worker's worker groups in ``mode``: ``processes`` per group for egress modes."""
    if mode == EGRESS_OWN:
        return [
            Group(f"ip{n}-", processes, address, f"bench-ip-{address}")
            for n, address in enumerate(EGRESS_ADDRESSES, 1)
        ]
    if mode == EGRESS_SHARED:
        return [
            Group(f"ip{n}-", processes, address, "bench-shared")
            for n, address in enumerate(EGRESS_ADDRESSES, 1)
        ]
    return [Group("dw", processes)]


def mode_limit(mode: str) -> int:
    """The budget a mode may use: one limit per distinct egress identity (and source IP)."""
    return LIMIT_PER_S * (len(EGRESS_ADDRESSES) if mode == EGRESS_OWN else 1)


# -- figures ------------------------------------------------------------------------------------


@dataclass
class Figures:
    """What one (mode, process count) measurement produced."""

    mode: str
    processes: int
    concurrency: int
    messages: int
    sent: int = 0
    failed: int = 0
    unfinished: int = 0
    requests: int = 0
    accepted: int = 0
    duplicates: int = 0
    throttled_429: int = 0
    max_requests_1s: int = 0
    """Computed here from the sandbox's request times: the most requests in any (t - 1 s, t]."""
    sandbox_max_requests_1s: int = 0
    """The same figure as the sandbox's ``/_admin/stats`` reports it."""
    sandbox_max_admitted_1s: int = 0
    achieved_rate: float = 0.0
    """Accepted messages / (last accepted request time - first request time), per second."""
    rate_ratio: float = 0.0
    wall_s: float = 0.0
    """From the first enqueue until every message was final."""
    limiter_waits: int | None = None
    """delivery-worker only: reschedules for the limiter or a 429 (the ledger's ``throttled``)."""
    outcomes: dict[str, int] = field(default_factory=dict)
    timed_out: bool = False
    log_dir: str = ""
    groups: int = 1
    """Worker groups (egress modes: one per source address, ``processes // groups`` each)."""
    limit_per_s: int = LIMIT_PER_S
    """What ``rate_ratio`` divides by: the limit times the distinct identities in use."""
    per_ip: dict[str, dict[str, float]] = field(default_factory=dict)
    """The sandbox's figures per client IP (requests, accepted, 429s, max/1s, rate)."""
    gap_min_ms: float = 0.0
    """Arrivals at the sandbox: the smallest gap between consecutive requests (ms)."""
    gap_p1_ms: float = 0.0
    """... the 1st percentile of those gaps (ms)."""
    gap_median_ms: float = 0.0
    """... their median (ms)."""
    busy: bool = False
    """Measured while another process kept every core busy (``--busy``)."""


def gaps_ms(times: Sequence[float]) -> tuple[float, float, float]:
    """Smallest, 1st percentile and median gap between consecutive ``times`` (sorted), in ms."""
    gaps = sorted((b - a) * 1000 for a, b in itertools.pairwise(times))
    if not gaps:
        return 0.0, 0.0, 0.0
    return gaps[0], gaps[int(0.01 * (len(gaps) - 1))], statistics.median(gaps)


def max_in_window(times: Iterable[float], window_s: float) -> int:
    """The largest number of ``times`` inside any half-open window ``(t - window_s, t]``."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def sandbox_figures(admin: httpx.Client, fig: Figures) -> None:
    """Fill the provider-side figures of ``fig`` from the sandbox's request log and stats."""
    data = admin.get("/_admin/requests", params={"provider": PROVIDER}).raise_for_status().json()
    requests: list[dict[str, Any]] = data["requests"]
    stats = admin.get("/_admin/stats").raise_for_status().json()["providers"][PROVIDER]
    times = sorted(float(r["time"]) for r in requests)
    accepted = sorted(float(r["time"]) for r in requests if r.get("outcome") == "accepted")
    fig.requests = len(requests)
    fig.accepted = len(accepted)
    fig.duplicates = sum(1 for r in requests if r.get("outcome") == "duplicate")
    fig.throttled_429 = sum(1 for r in requests if r.get("status") == 429)
    fig.max_requests_1s = max_in_window(times, WINDOW_S)
    fig.gap_min_ms, fig.gap_p1_ms, fig.gap_median_ms = (round(g, 1) for g in gaps_ms(times))
    fig.sandbox_max_requests_1s = int(stats["max_requests_1s"])
    fig.sandbox_max_admitted_1s = int(stats["max_admitted_1s"])
    span = accepted[-1] - times[0] if accepted else 0.0
    fig.achieved_rate = len(accepted) / span if span > 0 else 0.0
    fig.rate_ratio = fig.achieved_rate / fig.limit_per_s
    fig.per_ip = {}
    for ip in sorted({str(r.get("client_ip")) for r in requests}):
        mine = [r for r in requests if str(r.get("client_ip")) == ip]
        ip_times = sorted(float(r["time"]) for r in mine)
        ip_accepted = sorted(float(r["time"]) for r in mine if r.get("outcome") == "accepted")
        ip_span = ip_accepted[-1] - ip_times[0] if ip_accepted else 0.0
        fig.per_ip[ip] = {
            "requests": len(mine),
            "accepted": len(ip_accepted),
            "throttled_429": sum(1 for r in mine if r.get("status") == 429),
            "max_requests_1s": max_in_window(ip_times, WINDOW_S),
            "achieved_rate": round(len(ip_accepted) / ip_span, 3) if ip_span > 0 else 0.0,
        }


# -- the stack ----------------------------------------------------------------------------------


class Stack:
    """redis-server and the sandbox for the whole bench; worker processes per measurement."""

    def __init__(self, workdir: Path, *, log_level: str = "WARNING") -> None:
        self.workdir = workdir
        self.log_level = log_level
        """delivery-worker's ``DELIVERY_LOG_LEVEL`` (WARNING keeps the logs small)."""
        self.redis: Proc | None = None
        self.sandbox: Proc | None = None
        self.workers: list[Proc] = []
        self.admin: httpx.Client | None = None

    def start(self) -> None:
        self.redis = start_redis(self.workdir / "redis", appendonly=False)
        self.sandbox = start_sandbox(
            self.workdir / "sandbox",
            extra_args=["--quiet", "--emailmassivo-rate", str(LIMIT_PER_S)],
        )
        self.admin = httpx.Client(base_url=self.sandbox_url, timeout=30)

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return str(self.redis.extra["url"])

    @property
    def sandbox_url(self) -> str:
        assert self.sandbox is not None
        return str(self.sandbox.extra["url"])

    def url(self, db: int) -> str:
        return f"{self.redis_url}/{db}"

    def flush(self) -> None:
        """Forget everything of the previous measurement (queues, limiter logs, ledger)."""
        client = redis.Redis.from_url(self.url(0))
        try:
            client.flushall()
        finally:
            client.close()

    def check_workers(self) -> None:
        for proc in self.workers:
            if not proc.alive():
                raise RuntimeError(
                    f"{proc.name} exited with code {proc.popen.returncode}; "
                    f"log {proc.log_path}:\n{proc.log_tail()}"
                )

    def stop_workers(self) -> None:
        errors: list[BaseException] = []
        for proc in self.workers:
            try:
                proc.stop(signal.SIGTERM, timeout_s=30)
            except BaseException as exc:  # stop the others, then re-raise
                errors.append(exc)
        self.workers = []
        if errors:
            raise errors[0]

    def stop(self) -> None:
        """Stop everything this stack started: workers first, then the sandbox and Redis."""
        try:
            self.stop_workers()
        finally:
            if self.admin is not None:
                self.admin.close()
            try:
                if self.sandbox is not None:
                    self.sandbox.stop()
            finally:
                if self.redis is not None:
                    self.redis.stop()


def wait_ready(app: Celery, stack: Stack, names: Sequence[str], timeout_s: float = 0.0) -> None:
    """Until every worker (by node name prefix) answers a ping (default: 90 s + 10 s each)."""
    timeout_s = timeout_s or 90.0 + 10.0 * len(names)
    deadline = time.monotonic() + timeout_s
    missing = set(names)
    while time.monotonic() < deadline:
        stack.check_workers()
        for reply in app.control.ping(timeout=0.5) or []:
            for node in reply:
                missing.discard(node.partition("@")[0])
        if not missing:
            return
    raise RuntimeError(f"workers {sorted(missing)} did not answer a ping in {timeout_s:g}s")


def start_baseline_worker(
    logdir: Path, env: dict[str, str], *, name: str, concurrency: int
) -> Proc:
    """``celery -A baseline_app worker`` run from ``bench/``."""
    argv = [
        sys.executable, "-m", "celery", "-A", "baseline_app", "worker",
        "--loglevel", "WARNING",
        "--concurrency", str(concurrency),
        "--hostname", f"{name}@%h",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    pythonpath = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH")) if p)
    full_env = {**os.environ, **env, "PYTHONPATH": pythonpath}
    log_path = logdir / f"worker-{name}.log"
    logdir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            argv,
            cwd=BENCH_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,  # its own process group: Proc.stop() reaches every child
        )
    return Proc(name=f"worker-{name}", popen=popen, log_path=log_path)


# -- the load -----------------------------------------------------------------------------------


def email(i: int, tag: str) -> dict[str, Any]:
    """A valid EmailMassivo message (delivery-worker's message format), unique per ``i``."""
    return {
        "provider": PROVIDER,
        "to": [{"email": f"reader{i}@example.com", "name": f"Reader {i}"}],
        "from": {"email": "news@example.org", "name": "Bench"},
        "subject": f"Rate limit bench {tag} #{i}",
        "html": f"<p>Message {i}</p>",
        "text": f"Message {i}",
    }


def emailmassivo_payload(i: int, tag: str) -> dict[str, Any]:
    """The same message as EmailMassivo's JSON body, for the plain task."""
    msg = email(i, tag)
    return {
        "idempotencyKey": f"bench-{tag}-{i}",
        "mail": {
            "to": msg["to"][0],
            "from": msg["from"],
            "subject": msg["subject"],
            "html": msg["html"],
            "text": msg["text"],
        },
    }


def wait_until(
    done: Callable[[], int], total: int, stack: Stack, timeout_s: float
) -> tuple[int, bool]:
    """Poll ``done()`` (how many are finished) until ``total``; ``(finished, timed_out)``."""
    deadline = time.monotonic() + timeout_s
    finished = done()
    while finished < total:
        if time.monotonic() > deadline:
            return finished, True
        stack.check_workers()
        time.sleep(POLL_S)
        finished = done()
    return finished, False


def run_delivery(stack: Stack, fig: Figures, tag: str, logdir: Path, timeout_s: float) -> None:
    """delivery-worker: one group of ``fig.processes`` workers, or the egress mode's groups."""
    broker, backend = stack.url(DB[fig.mode][0]), stack.url(DB[fig.mode][1])
    env = {
        **sandbox_env(stack.sandbox_url),
        "DELIVERY_BROKER_URL": broker,
        "DELIVERY_RESULT_BACKEND": backend,
        "DELIVERY_REDIS_URL": broker,
        "DELIVERY_LOG_LEVEL": stack.log_level,
    }
    app = client_app(broker, backend, name="bench-rate-limit")
    shared = redis.Redis.from_url(broker)
    try:
        names: list[str] = []
        for group in groups_for(fig.mode, fig.processes // fig.groups):
            for i in range(1, group.processes + 1):
                names.append(f"{group.name}{i}")
                stack.workers.append(
                    start_worker(
                        logdir, {**env, **group.env()}, name=names[-1], concurrency=fig.concurrency
                    )
                )
        wait_ready(app, stack, names)
        assert stack.admin is not None
        stack.admin.post("/_admin/reset").raise_for_status()

        ledger = RedisLedger(shared)
        producer = Producer(app=app, ledger=ledger)
        started = time.monotonic()
        ids = [producer.enqueue("email", email(i, tag)).id for i in range(fig.messages)]
        states: dict[str, str] = {}

        def finished() -> int:
            pending = [d for d in ids if states.get(d) not in FINAL_STATES]
            if pending:
                pipe = shared.pipeline(transaction=False)
                for delivery_id in pending:
                    pipe.hget(DEFAULT_KEYS.delivery(delivery_id), "state")
                for delivery_id, state in zip(pending, pipe.execute(), strict=True):
                    states[delivery_id] = state.decode() if state else "missing"
            return sum(1 for d in ids if states.get(d) in FINAL_STATES)

        done, fig.timed_out = wait_until(finished, len(ids), stack, timeout_s)
        fig.wall_s = time.monotonic() - started
        fig.outcomes = _count(states.values())
        fig.sent = fig.outcomes.get("sent", 0)
        fig.unfinished = len(ids) - done
        fig.failed = done - fig.sent
        pipe = shared.pipeline(transaction=False)
        for delivery_id in ids:
            pipe.hget(DEFAULT_KEYS.delivery(delivery_id), "throttled")
        fig.limiter_waits = sum(int(v or 0) for v in pipe.execute())
        sandbox_figures(stack.admin, fig)
    finally:
        shared.close()
        app.close()
        stack.stop_workers()


def run_plain(stack: Stack, fig: Figures, tag: str, logdir: Path, timeout_s: float) -> None:
    broker, backend = stack.url(DB[PLAIN][0]), stack.url(DB[PLAIN][1])
    sandbox = sandbox_env(stack.sandbox_url)
    env = {
        "BENCH_BROKER_URL": broker,
        "BENCH_RESULT_BACKEND": backend,
        "BENCH_EMAILMASSIVO_URL": sandbox["DELIVERY_EMAILMASSIVO_BASE_URL"],
        "BENCH_EMAILMASSIVO_API_KEY": sandbox["DELIVERY_EMAILMASSIVO_API_KEY"],
    }
    app = Celery("bench-plain-client", broker=broker, backend=backend)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )
    backend_redis = redis.Redis.from_url(backend)
    try:
        names = [f"plain{i}" for i in range(1, fig.processes + 1)]
        for name in names:
            stack.workers.append(
                start_baseline_worker(logdir, env, name=name, concurrency=fig.concurrency)
            )
        wait_ready(app, stack, names)
        assert stack.admin is not None
        stack.admin.post("/_admin/reset").raise_for_status()

        started = time.monotonic()
        results: list[AsyncResult[Any]] = [
            app.send_task("bench.plain_send", args=[emailmassivo_payload(i, tag)], queue="plain")
            for i in range(fig.messages)
        ]
        outcomes: dict[str, str] = {}

        def finished() -> int:
            # One MGET of the result keys per poll: cheap for the host being measured.
            pending = [r.id for r in results if r.id not in outcomes]
            if pending:
                # Celery's Redis result backend stores each result under this key.
                keys = [f"celery-task-meta-{task_id}" for task_id in pending]
                for task_id, raw in zip(pending, backend_redis.mget(keys), strict=True):
                    meta = json.loads(raw) if raw else {}
                    if meta.get("status") == "SUCCESS":
                        outcomes[task_id] = f"http {meta.get('result')}"
                    elif meta.get("status") in READY_STATES:
                        outcomes[task_id] = f"task {str(meta['status']).lower()}"
            return len(outcomes)

        done, fig.timed_out = wait_until(finished, len(results), stack, timeout_s)
        fig.wall_s = time.monotonic() - started
        fig.outcomes = _count(outcomes.values())
        # EmailMassivo accepts with 200 (seed 003) or 201 (RuSender).
        fig.sent = fig.outcomes.get("http 200", 0) + fig.outcomes.get("http 201", 0)
        fig.unfinished = len(results) - done
        fig.failed = done - fig.sent
        sandbox_figures(stack.admin, fig)
    finally:
        backend_redis.close()
        app.close()
        stack.stop_workers()


def _count(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return dict(sorted(out.items()))


# -- report -------------------------------------------------------------------------------------

COLUMNS: tuple[tuple[str, str, str], ...] = (
    # header, Figures attribute, format
    ("mode", "mode", "<16"),
    ("procs", "processes", ">5"),
    ("sent", "sent", ">5"),
    ("failed", "failed", ">6"),
    ("429s", "throttled_429", ">5"),
    ("max/1s", "max_requests_1s", ">6"),
    ("sandbox max/1s", "sandbox_max_requests_1s", ">14"),
    ("rate req/s", "achieved_rate", ">10.2f"),
    ("x limit", "rate_ratio", ">7.2f"),
    ("wall s", "wall_s", ">7.1f"),
    ("gap min/p1/med ms", "gaps", ">17"),
)


def table(rows: Sequence[dict[str, Any]]) -> str:
    def cell(spec: str, value: Any) -> str:
        if isinstance(value, float) and not spec.endswith("f"):
            value = f"{value:g}"  # a median of integers
        return format(value, spec)

    header = "  ".join(format(h, spec.split(".")[0]) for h, _, spec in COLUMNS)
    lines = [header, "-" * len(header)]
    for row in rows:
        row = {
            **row,
            "gaps": f"{row['gap_min_ms']:.0f}/{row['gap_p1_ms']:.0f}/{row['gap_median_ms']:.0f}",
        }
        lines.append("  ".join(cell(spec, row[attr]) for _, attr, spec in COLUMNS))
        if row.get("unfinished"):
            lines[-1] += f"  ({row['unfinished']} unfinished: timed out)"
        if row.get("mode") in (EGRESS_OWN, EGRESS_SHARED):
            for ip, f in (row.get("per_ip") or {}).items():
                lines.append(
                    f"{'':<18}{ip}: {f['accepted']:g} accepted, {f['throttled_429']:g} x 429, "
                    f"max/1s {f['max_requests_1s']:g}, {f['achieved_rate']:.2f} req/s"
                )
    return "\n".join(lines)


def medians(runs: Sequence[Sequence[Figures]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for position, first in enumerate(runs[0]):
        same = [run[position] for run in runs]
        row: dict[str, Any] = {"mode": first.mode, "processes": first.processes}
        for name in (
            "sent", "failed", "unfinished", "throttled_429", "max_requests_1s",
            "sandbox_max_requests_1s", "achieved_rate", "rate_ratio", "wall_s",
            "gap_min_ms", "gap_p1_ms", "gap_median_ms",
        ):  # fmt: skip
            row[name] = statistics.median(getattr(fig, name) for fig in same)
        ips = sorted({ip for fig in same for ip in fig.per_ip})
        row["per_ip"] = {
            ip: {
                name: statistics.median(fig.per_ip.get(ip, {}).get(name, 0) for fig in same)
                for name in ("accepted", "throttled_429", "max_requests_1s", "achieved_rate")
            }
            for ip in ips
        }
        out.append(row)
    return out


def misses(fig: Figures, run: int) -> list[str]:
    """delivery-worker's targets, checked on every run.

    Every mode: 0 429s, every message sent, and the achieved rate at least 95 % of the budget
    (``fig.limit_per_s``: 10/s, or 20/s for two IPs with their own identities). No 1 s window
    above 10 requests: over all requests for one identity (``delivery``, ``2 IPs, 1 id``), per
    client IP for two identities (``2 IPs, 2 ids``), where each IP must also have sent.
    """
    if fig.mode == PLAIN:
        return []
    where = f"run {run}, {fig.mode}, {fig.processes} process(es)"
    found = []
    if fig.throttled_429:
        found.append(f"{where}: {fig.throttled_429} request(s) answered 429 (target 0)")
    if fig.mode == EGRESS_OWN:
        for ip in EGRESS_ADDRESSES:
            ip_figs = fig.per_ip.get(ip, {})
            worst_ip = int(ip_figs.get("max_requests_1s", 0))
            if not ip_figs.get("accepted"):
                found.append(f"{where}: nothing accepted from {ip} (each IP sends on its own)")
            if worst_ip > LIMIT_PER_S:
                found.append(
                    f"{where}: {worst_ip} requests from {ip} in one 1 s window "
                    f"(target <= {LIMIT_PER_S} per IP)"
                )
    else:
        worst = max(fig.max_requests_1s, fig.sandbox_max_requests_1s)
        if worst > LIMIT_PER_S:
            found.append(f"{where}: {worst} requests in one 1 s window (target <= {LIMIT_PER_S})")
    if fig.rate_ratio < MIN_RATE_RATIO:
        found.append(
            f"{where}: achieved {fig.achieved_rate:.2f} req/s = {fig.rate_ratio:.1%} of the "
            f"limit {fig.limit_per_s}/s (target >= {MIN_RATE_RATIO:.0%})"
        )
    if fig.sent != fig.messages:
        found.append(
            f"{where}: {fig.sent} of {fig.messages} messages sent "
            f"({fig.failed} failed, {fig.unfinished} unfinished; outcomes {fig.outcomes})"
        )
    return found


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Global rate limiter vs Celery's per-worker rate_limit, against the sandbox "
        f"(EmailMassivo {LIMIT_PER_S} requests/s per IP)."
    )
    parser.add_argument("--messages", type=int, default=300, help="emails per measurement")
    parser.add_argument(
        "--processes",
        default="1,2,4",
        help="comma-separated worker process counts (default 1,2,4)",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="prefork children per worker")
    parser.add_argument("--runs", type=int, default=1, help="repeat everything; medians if > 1")
    parser.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help="comma-separated subset of: delivery (delivery-worker), plain (plain Celery "
        "rate_limit), egress (two worker groups bound to 127.0.0.1 and 127.0.0.2, first with "
        "their own DELIVERY_EGRESS_IDENTITY each, then sharing one; --processes counts "
        "processes per group); default delivery,plain",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for one measurement's messages (default: delivery-worker "
        "60 + 0.3 s x messages; plain 60 + 1 s x messages, as Celery's rate_limit with the "
        "Redis broker may drain only about 1 task/s per worker, celery/celery#5927)",
    )
    parser.add_argument(
        "--worker-log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="delivery-worker's DELIVERY_LOG_LEVEL (default WARNING; INFO logs every attempt, "
        "limiter wait and 429)",
    )
    parser.add_argument(
        "--busy",
        action="store_true",
        help="measure while another process keeps every core busy (one spinning child per CPU)",
    )
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the temporary directory with the redis, sandbox and worker logs",
    )
    args = parser.parse_args(argv)
    try:
        args.process_counts = [int(p) for p in args.processes.split(",") if p.strip()]
    except ValueError:
        parser.error("--processes takes comma-separated integers, e.g. 1,2,4")
    names = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.process_counts or min(args.process_counts) < 1:
        parser.error("--processes needs at least one count, each >= 1")
    if not names or any(m not in MODE_NAMES for m in names):
        parser.error(f"--modes takes a comma-separated subset of: {', '.join(MODE_NAMES)}")
    args.mode_list = [MODE_NAMES[m] for m in MODE_NAMES if m in names]
    if EGRESS_OWN in args.mode_list:
        args.mode_list.append(EGRESS_SHARED)
    if args.messages < 1 or args.concurrency < 1 or args.runs < 1:
        parser.error("--messages, --concurrency and --runs must be >= 1")
    return args


def default_timeout(mode: str, messages: int) -> float:
    """Generous: 3 x the time at the limit, or about 1 task/s for Celery's rate_limit."""
    per_message_s = 1.0 if mode == PLAIN else 3 / LIMIT_PER_S
    return 60 + per_message_s * messages


@contextlib.contextmanager
def cores_kept_busy(busy: bool) -> Iterator[None]:
    """While inside: one other process whose children spin on every core (``--busy``)."""
    if not busy:
        yield
        return
    spin = (
        "import multiprocessing as m, os\n"
        "def spin():\n"
        "    while True: pass\n"
        "if __name__ == '__main__':\n"
        "    ps = [m.Process(target=spin, daemon=True) for _ in range(os.cpu_count() or 1)]\n"
        "    [p.start() for p in ps]; [p.join() for p in ps]\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", spin], start_new_session=True)
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every finally: workers, sandbox, redis stop


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="dw-bench-rate-limit-"))
    runs: list[list[Figures]] = []
    stack = Stack(workdir, log_level=args.worker_log_level)
    print(
        f"rate_limit bench: {args.messages} EmailMassivo emails per measurement, sandbox limit "
        f"{LIMIT_PER_S} requests/{WINDOW_S:g} s per IP, processes {args.process_counts} x "
        f"concurrency {args.concurrency}, {args.runs} run(s)"
        + (", every core kept busy by another process" if args.busy else ""),
        flush=True,
    )
    try:
        stack.start()
        for run in range(1, args.runs + 1):
            figures: list[Figures] = []
            for processes in args.process_counts:
                for mode in args.mode_list:
                    groups = len(groups_for(mode, processes))
                    fig = Figures(mode, processes * groups, args.concurrency, args.messages)
                    fig.groups, fig.limit_per_s = groups, mode_limit(mode)
                    short = MODE_SHORT[mode]
                    logdir = workdir / f"run{run}-{short}-p{processes}"
                    fig.log_dir = logdir.name
                    print(f"  run {run}: {mode}, {fig.processes} process(es) ...", flush=True)
                    stack.flush()
                    tag = f"{stamp}-r{run}-p{processes}-{short}"
                    measure = run_plain if mode == PLAIN else run_delivery
                    timeout_s = args.timeout or default_timeout(mode, args.messages)
                    fig.busy = args.busy
                    with cores_kept_busy(args.busy):
                        measure(stack, fig, tag, logdir, timeout_s)
                    figures.append(fig)
            runs.append(figures)
            print(f"\nrun {run} of {args.runs}:")
            print(table([asdict(f) for f in figures]), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping every process the bench started", file=sys.stderr)
        print(f"logs kept in {workdir}", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"\nbench error: {exc}", file=sys.stderr)
        print(f"logs kept in {workdir}", file=sys.stderr)
        return 2
    finally:
        stack.stop()

    median_rows = medians(runs) if args.runs > 1 else []
    if median_rows:
        print(f"\nmedians over {args.runs} runs:")
        print(table(median_rows))

    missed = [m for n, figures in enumerate(runs, 1) for f in figures for m in misses(f, n)]
    keep = args.keep_workdir or bool(missed)  # the worker logs explain a miss
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    out = RESULTS_DIR / f"rate_limit-{stamp}.json"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "rate_limit",
        "started_at": stamp,
        "config": {
            "messages": args.messages,
            "processes": args.process_counts,
            "concurrency": args.concurrency,
            "runs": args.runs,
            "modes": args.mode_list,
            "busy": args.busy,
            "provider": PROVIDER,
            "limit_per_s": LIMIT_PER_S,
            "window_s": WINDOW_S,
            "delivery_env": {
                k: v
                for k, v in sorted(os.environ.items())
                if k.startswith("DELIVERY_") and "KEY" not in k
            },
        },
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "celery": celery.__version__,
            "platform": platform.platform(),
        },
        "targets": {
            "throttled_429": 0,
            "max_requests_1s": LIMIT_PER_S,
            "max_requests_1s_scope": "per client IP in '2 IPs, 2 ids', over all requests else",
            "rate_ratio_of": "10/s per distinct egress identity",
            "min_rate_ratio": MIN_RATE_RATIO,
            "all_sent": True,
        },
        "runs": [[asdict(f) for f in run_figs] for run_figs in runs],
        "medians": median_rows,
        "misses": missed,
        "ok": not missed,
    }
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nfigures written to {out.relative_to(BENCH_DIR.parent)}")
    if keep:
        print(f"logs kept in {workdir}")
    if missed:
        print("\nFAIL: delivery-worker missed a target:", file=sys.stderr)
        for line in missed:
            print(f"  - {line}", file=sys.stderr)
        return 1
    if DELIVERY in args.mode_list or EGRESS_OWN in args.mode_list:
        print(
            f"OK: delivery-worker kept every run at 0 429s, <= {LIMIT_PER_S} requests per 1 s "
            f"window per IP and >= {MIN_RATE_RATIO:.0%} of the limit"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
