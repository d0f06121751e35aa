"""Benchmark: what one message costs, delivery-worker against a hand-written Celery task.

Starts three private redis-servers (broker, result backend, shared state, so their command
counts tell the three apart) and the provider sandbox with 50 ms of latency on SMS
Partner, as real processes. For each implementation and pool, with P worker processes x
concurrency C (default 2 x 8) and N single-number SMS (default 400):

1. the workers start consuming an empty hold queue and answer a ping;
2. the bench enqueues the N messages (the **producer** phase: its own CPU time and every Redis
   command in this phase);
3. the workers are told to consume the real queue (``add_consumer``), all at once; the bench
   waits until every result is stored (the **worker** phase: Redis commands on the broker, the
   shared state and the result backend; the worker processes' CPU time; the provider requests).

Redis commands are counted with ``MONITOR`` on each instance: a command a client sends counts
once (an ``EVALSHA`` is one command, like the issue's target counts it), and the commands a Lua
script runs inside Redis are counted apart (``in Lua``). The bench's own commands (its MONITOR
markers, its result polls) are left out.

Implementations: ``delivery-worker`` (``celery -A worker worker``, ``Producer.enqueue``) and
the ``anchor`` (``bench/throughput_app.py``: acks_late, prefetch 1, one httpx POST to the same
sandbox endpoint). Pools: ``prefork`` and ``threads``, at the same concurrency.

Prints a table per run (medians with ``--runs`` > 1) and writes the figures to
``bench/results/throughput-<timestamp>.json``. It measures; it has no targets (exit 0 unless a
measurement failed). See ``bench/README.md``.

    python bench/throughput.py [--messages 400] [--processes 2] [--concurrency 8]
                               [--latency-ms 50] [--pools prefork,threads] [--runs 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import celery
import httpx
import redis
from celery import Celery

from devstack.processes import Proc, sandbox_env, start_redis, start_sandbox, start_worker
from worker.app import client_app
from worker.producer import Producer
from worker.stores import RedisLedger

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

PROVIDER = "smspartner"
ANCHOR = "anchor"
DELIVERY = "delivery-worker"
IMPLS = {"anchor": ANCHOR, "delivery": DELIVERY}
POOLS = ("prefork", "threads")
ROLES = ("broker", "result", "shared")
"""The three Redis instances; the producer's commands on all three count as ``producer``."""
HOLD_QUEUE = "bench-hold"
"""Workers start on this (empty) queue, so none starts on the load before the others."""
QUEUE = {ANCHOR: "anchor", DELIVERY: "delivery"}
IGNORED_COMMANDS = {"info", "config", "echo", "monitor"}
"""The bench's own measuring commands (``INFO cpu``, its ``ECHO`` markers)."""
POLL_S = 0.1
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- figures ------------------------------------------------------------------------------------


@dataclass
class Figures:
    """One (implementation, pool) measurement."""

    impl: str
    pool: str
    processes: int
    concurrency: int
    messages: int
    done: int = 0
    ok: int = 0
    """Messages whose result says sent (delivery-worker ``status: sent``; anchor HTTP 200)."""
    msgs_per_s: float = 0.0
    """messages / (last result stored - consumers added)."""
    span_s: float = 0.0
    commands: dict[str, int] = field(default_factory=dict)
    """Redis commands: ``producer`` (all instances, enqueue phase), then ``broker``, ``worker``
    (the shared-state instance) and ``result`` during the worker phase."""
    commands_per_msg: dict[str, float] = field(default_factory=dict)
    in_lua: int = 0
    """Commands Lua scripts ran inside Redis (both phases; not in ``commands``)."""
    in_lua_per_msg: float = 0.0
    top_commands: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per phase/instance, the commands clients sent, by name (``lua:`` prefix: inside a
    script), for reading where they come from."""
    provider_requests: int = 0
    provider_requests_per_msg: float = 0.0
    worker_cpu_s: float = 0.0
    producer_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    worker_cpu_ms_per_msg: float = 0.0
    producer_cpu_ms_per_msg: float = 0.0
    redis_cpu_ms_per_msg: float = 0.0
    rss_mb: float = 0.0
    """Sum of the worker processes' resident sets (shared pages counted in each)."""
    pss_mb: float = 0.0
    """Sum of their proportional set sizes (shared pages split): the memory they really take."""
    worker_processes: int = 0
    timed_out: bool = False
    log_dir: str = ""

    @property
    def label(self) -> str:
        return f"{self.impl} {self.pool}"

    @property
    def total_per_msg(self) -> float:
        return sum(self.commands_per_msg.values())


# -- /proc --------------------------------------------------------------------------------------


def group_pids(pgid: int) -> list[int]:
    """Every process in the process group ``pgid`` (a worker and its pool children)."""
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state ppid pgrp ...
            pids.append(int(entry))
    return pids


def cpu_seconds(pids: Sequence[int]) -> float:
    """user + system CPU of ``pids`` and of their reaped children, in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


def memory_mb(pids: Sequence[int]) -> tuple[float, float]:
    """(RSS, PSS) summed over ``pids``, in MiB."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                name, _, value = line.partition(":")
                if name == "Rss":
                    rss += int(value.split()[0])
                elif name == "Pss":
                    pss += int(value.split()[0])
        except OSError:
            continue
    return rss / 1024, pss / 1024


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- counting Redis commands ----------------------------------------------------------------------


class CommandCounter(threading.Thread):
    """Counts the commands one redis-server runs, by name, through ``MONITOR``.

    A MONITOR line reads ``+<time> [<db> <client address>] "<command>" ...``; commands a Lua
    script runs show ``lua`` as the client. :meth:`take` returns what was counted up to a
    marker (an ``ECHO`` the bench sends through ``client``), so a phase ends exactly there.
    """

    def __init__(self, port: int, client: redis.Redis) -> None:
        super().__init__(name=f"monitor-{port}", daemon=True)
        self.client = client
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(b"MONITOR\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += self.sock.recv(64)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"MONITOR refused: {reply!r}")
        self.sock.settimeout(None)
        self.counts: Counter[str] = Counter()
        self.seen_marks: set[bytes] = set()
        self.cond = threading.Condition()
        self.marks = 0

    def run(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            lines = (buf + data).split(b"\r\n")
            buf = lines.pop()
            local: Counter[str] = Counter()
            marks: list[bytes] = []
            for line in lines:
                start = line.find(b" [")
                end = line.find(b'] "', start)
                if start < 0 or end < 0:
                    continue
                name_end = line.find(b'"', end + 3)
                name = line[end + 3 : name_end].decode("latin-1").lower()
                if name == "echo":
                    marks.append(line[name_end:])
                    continue
                lua = line[start + 2 : end].endswith(b" lua")
                local["lua:" + name if lua else name] += 1
            with self.cond:
                self.counts.update(local)
                self.seen_marks.update(marks)
                self.cond.notify_all()

    def take(self, timeout_s: float = 30.0) -> Counter[str]:
        """The counts since the previous take, up to a marker sent now; then start over."""
        self.marks += 1
        token = f"bench-mark-{self.marks}"
        self.client.echo(token)
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while not any(token.encode() in m for m in self.seen_marks):
                if not self.cond.wait(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError("MONITOR did not show the bench's marker")
            counts = Counter(
                {
                    k: v
                    for k, v in self.counts.items()
                    if k.removeprefix("lua:") not in IGNORED_COMMANDS
                }
            )
            self.counts.clear()
            self.seen_marks.clear()
        return counts

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def split_counts(counts: Counter[str]) -> tuple[int, int]:
    """(commands clients sent, commands run inside Lua scripts)."""
    lua = sum(v for k, v in counts.items() if k.startswith("lua:"))
    return sum(counts.values()) - lua, lua


# -- the stack ----------------------------------------------------------------------------------


class Stack:
    """Three redis-servers and the sandbox for the whole bench; workers per measurement."""

    def __init__(self, workdir: Path, *, latency_ms: int, aof: bool) -> None:
        self.workdir = workdir
        self.latency_ms = latency_ms
        self.aof = aof
        self.redis: dict[str, Proc] = {}
        self.clients: dict[str, redis.Redis] = {}
        self.counters: dict[str, CommandCounter] = {}
        self.sandbox: Proc | None = None
        self.workers: list[Proc] = []
        self.admin: httpx.Client | None = None

    def start(self) -> None:
        for role in ROLES:
            proc = start_redis(self.workdir / f"redis-{role}", appendonly=self.aof)
            self.redis[role] = proc
            self.clients[role] = redis.Redis.from_url(self.url(role))
            counter = CommandCounter(int(str(proc.extra["port"])), self.clients[role])
            counter.start()
            self.counters[role] = counter
        self.sandbox = start_sandbox(self.workdir / "sandbox", extra_args=["--quiet"])
        self.admin = httpx.Client(base_url=self.sandbox_url, timeout=30)

    def url(self, role: str) -> str:
        return f"{self.redis[role].extra['url']}/0"

    @property
    def sandbox_url(self) -> str:
        assert self.sandbox is not None
        return str(self.sandbox.extra["url"])

    def reset(self) -> None:
        """Empty Redis and the sandbox; put the provider latency back."""
        for client in self.clients.values():
            client.flushall()
        assert self.admin is not None
        self.admin.post("/_admin/reset").raise_for_status()
        if self.latency_ms:
            rule = {"provider": PROVIDER, "action": "latency", "delay_ms": self.latency_ms}
            self.admin.post("/_admin/faults", json={"rules": [rule]}).raise_for_status()

    def take_counts(self) -> dict[str, Counter[str]]:
        """Per instance: the commands run since the previous take (the bench's own left out)."""
        return {role: counter.take() for role, counter in self.counters.items()}

    def redis_cpu_s(self) -> float:
        total = 0.0
        for client in self.clients.values():
            cpu = client.info("cpu")
            total += float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        return total

    def check_workers(self) -> None:
        for proc in self.workers:
            if not proc.alive():
                raise RuntimeError(
                    f"{proc.name} exited with code {proc.popen.returncode}; "
                    f"log {proc.log_path}:\n{proc.log_tail()}"
                )

    def worker_pids(self) -> list[int]:
        return [pid for proc in self.workers for pid in group_pids(proc.pid)]

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
        try:
            self.stop_workers()
        finally:
            if self.admin is not None:
                self.admin.close()
            for counter in self.counters.values():
                counter.close()
            for client in self.clients.values():
                client.close()
            try:
                if self.sandbox is not None:
                    self.sandbox.stop()
            finally:
                for proc in self.redis.values():
                    proc.stop()


def wait_ready(app: Celery, stack: Stack, names: Sequence[str], timeout_s: float = 120.0) -> None:
    """Until every worker (by node name prefix) answers a ping."""
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


def start_anchor_worker(
    logdir: Path,
    env: dict[str, str],
    *,
    name: str,
    concurrency: int,
    pool: str,
    events: bool = False,
) -> Proc:
    """``celery -A throughput_app worker`` run from ``bench/``, on the hold queue."""
    argv = [
        sys.executable, "-m", "celery", "-A", "throughput_app", "worker",
        "--loglevel", "WARNING",
        "--pool", pool,
        "--concurrency", str(concurrency),
        "--hostname", f"{name}@%h",
        "--without-gossip", "--without-mingle",
        "-Q", HOLD_QUEUE,
        *(["-E"] if events else []),
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


def number(i: int) -> str:
    # Ends in 1: the sandbox gives some endings a meaning (0014: STOP-listed, 0500: code 500).
    return f"+3361{i % 1_000_000:06d}1"


def sms(i: int, tag: str) -> dict[str, Any]:
    """A valid single-number SMS Partner message (delivery-worker's message format)."""
    return {"provider": PROVIDER, "to": [number(i)], "text": f"Throughput bench {tag} #{i}"}


def measure(
    stack: Stack,
    fig: Figures,
    tag: str,
    logdir: Path,
    timeout_s: float,
    log_level: str,
    events: bool = False,
) -> None:
    stack.reset()
    broker, backend, shared = (stack.url(r) for r in ROLES)
    sandbox = sandbox_env(stack.sandbox_url)
    names = [f"{'dw' if fig.impl == DELIVERY else 'anchor'}{i}" for i in range(fig.processes)]
    if fig.impl == DELIVERY:
        app = client_app(broker, backend, name="bench-throughput")
        env = {
            **sandbox,
            "DELIVERY_BROKER_URL": broker,
            "DELIVERY_RESULT_BACKEND": backend,
            "DELIVERY_REDIS_URL": shared,
            "DELIVERY_LOG_LEVEL": log_level,
        }
        for name in names:
            stack.workers.append(
                start_worker(
                    logdir,
                    env,
                    name=name,
                    concurrency=fig.concurrency,
                    queues=HOLD_QUEUE,
                    extra_args=["--pool", fig.pool],
                    events=events,
                )
            )
    else:
        app = Celery("bench-throughput-anchor", broker=broker, backend=backend)
        app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_retry_on_startup=True,
        )
        env = {
            "BENCH_BROKER_URL": broker,
            "BENCH_RESULT_BACKEND": backend,
            "BENCH_SMSPARTNER_URL": sandbox["DELIVERY_SMSPARTNER_BASE_URL"],
            "BENCH_SMSPARTNER_API_KEY": sandbox["DELIVERY_SMSPARTNER_API_KEY"],
        }
        for name in names:
            stack.workers.append(
                start_anchor_worker(
                    logdir,
                    env,
                    name=name,
                    concurrency=fig.concurrency,
                    pool=fig.pool,
                    events=events,
                )
            )
    try:
        wait_ready(app, stack, names)
        nodes = [
            node for reply in app.control.ping(timeout=1.0) or [] for node in reply
        ]  # full node names, for add_consumer's destination
        nodes = [n for n in nodes if n.partition("@")[0] in names]
        _run(stack, fig, app, tag, nodes, timeout_s)
        rss, pss = memory_mb(stack.worker_pids())
        fig.rss_mb, fig.pss_mb = round(rss, 1), round(pss, 1)
        fig.worker_processes = len(stack.worker_pids())
    finally:
        app.close()
        stack.stop_workers()


def _run(
    stack: Stack, fig: Figures, app: Celery, tag: str, nodes: list[str], timeout_s: float
) -> None:
    n = fig.messages
    # -- producer phase: the workers only watch the (empty) hold queue.
    stack.take_counts()  # forget start-up and idle commands
    cpu0 = self_cpu_seconds()
    if fig.impl == DELIVERY:
        producer = Producer(app=app, ledger=RedisLedger(stack.clients["shared"]))
        task_ids = [producer.enqueue("sms", sms(i, tag)).id for i in range(n)]
    else:
        task_ids = [
            app.send_task(
                "bench.anchor_sms",
                args=[number(i), f"Throughput bench {tag} #{i}", f"b{tag[-8:]}{i}"],
                queue=QUEUE[ANCHOR],
            ).id
            for i in range(n)
        ]
    fig.producer_cpu_s = self_cpu_seconds() - cpu0
    produced = stack.take_counts()
    fig.commands["producer"] = sum(split_counts(c)[0] for c in produced.values())
    fig.in_lua = sum(split_counts(c)[1] for c in produced.values())
    fig.top_commands.update({f"producer/{role}": dict(c) for role, c in produced.items() if c})

    # -- worker phase: every worker takes the real queue at once.
    pids = stack.worker_pids()
    worker_cpu0, redis_cpu0 = cpu_seconds(pids), stack.redis_cpu_s()
    started = time.time()
    app.control.add_consumer(QUEUE[fig.impl], destination=nodes, reply=False)
    mgets = _wait_results(stack, fig, task_ids, started, timeout_s)
    fig.worker_cpu_s = cpu_seconds(pids) - worker_cpu0
    fig.redis_cpu_s = stack.redis_cpu_s() - redis_cpu0
    consumed = stack.take_counts()
    consumed["result"]["mget"] -= mgets  # the bench's own polls
    consumed["result"] = +consumed["result"]  # drops the zero
    for role, column in (("broker", "broker"), ("shared", "worker"), ("result", "result")):
        sent, lua = split_counts(consumed[role])
        fig.commands[column] = sent
        fig.in_lua += lua
        if consumed[role]:
            fig.top_commands[f"worker/{role}"] = dict(consumed[role])
    fig.commands_per_msg = {k: round(v / n, 2) for k, v in fig.commands.items()}
    fig.in_lua_per_msg = round(fig.in_lua / n, 2)
    assert stack.admin is not None
    data = stack.admin.get("/_admin/requests", params={"provider": PROVIDER}).json()
    fig.provider_requests = len(data["requests"])
    fig.provider_requests_per_msg = round(fig.provider_requests / n, 3)
    fig.worker_cpu_ms_per_msg = round(fig.worker_cpu_s * 1000 / n, 3)
    fig.producer_cpu_ms_per_msg = round(fig.producer_cpu_s * 1000 / n, 3)
    fig.redis_cpu_ms_per_msg = round(fig.redis_cpu_s * 1000 / n, 3)


def _wait_results(
    stack: Stack, fig: Figures, task_ids: list[str], started: float, timeout_s: float
) -> int:
    """Until every task's result is stored; returns how many MGETs the bench itself sent."""
    admin = stack.admin
    assert admin is not None
    deadline = time.monotonic() + timeout_s
    n = len(task_ids)

    def accepted() -> int:
        stats = admin.get("/_admin/stats").json()["providers"].get(PROVIDER, {})
        return int(stats.get("requests", 0))

    # Poll the sandbox (no Redis command) until every request arrived, then the results.
    _poll(lambda: accepted() >= n, stack, deadline)
    results: dict[str, dict[str, Any]] = {}
    mgets = 0

    def all_stored() -> bool:
        nonlocal mgets
        pending = [t for t in task_ids if t not in results]
        mgets += 1
        raw = stack.clients["result"].mget([f"celery-task-meta-{t}" for t in pending])
        for task_id, value in zip(pending, raw, strict=True):
            meta = json.loads(value) if value else {}
            if meta.get("status") in ("SUCCESS", "FAILURE"):
                results[task_id] = meta
        return len(results) == n

    fig.timed_out = not _poll(all_stored, stack, deadline)
    fig.done = len(results)
    last = max(
        (datetime.fromisoformat(m["date_done"]).timestamp() for m in results.values()),
        default=started,
    )
    fig.span_s = round(last - started, 3)
    fig.msgs_per_s = round(fig.done / fig.span_s, 1) if fig.span_s > 0 else 0.0
    fig.ok = sum(1 for m in results.values() if _ok(fig.impl, m))
    return mgets


def _ok(impl: str, meta: dict[str, Any]) -> bool:
    result = meta.get("result")
    if impl == DELIVERY:
        return isinstance(result, dict) and result.get("status") == "sent"
    return result == 200


def _poll(check: Callable[[], bool], stack: Stack, deadline: float) -> bool:
    while not check():
        if time.monotonic() > deadline:
            return False
        stack.check_workers()
        time.sleep(POLL_S)
    return True


# -- report -------------------------------------------------------------------------------------

COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("implementation", "label", "<24"),
    ("ok", "ok", ">5"),
    ("msgs/s", "msgs_per_s", ">7.1f"),
    ("redis/msg", "total_per_msg", ">9.1f"),
    ("prod", "producer", ">5.1f"),
    ("broker", "broker", ">6.1f"),
    ("worker", "worker", ">6.1f"),
    ("result", "result", ">6.1f"),
    ("in Lua", "in_lua_per_msg", ">6.1f"),
    ("http/msg", "provider_requests_per_msg", ">8.2f"),
    ("cpu ms/msg wrk", "worker_cpu_ms_per_msg", ">14.2f"),
    ("prod", "producer_cpu_ms_per_msg", ">5.2f"),
    ("redis", "redis_cpu_ms_per_msg", ">5.2f"),
    ("RSS MB", "rss_mb", ">7.0f"),
    ("PSS MB", "pss_mb", ">7.0f"),
)
MEDIAN_FIELDS = (
    "ok", "msgs_per_s", "total_per_msg", "producer", "broker", "worker", "result", "in_lua_per_msg",
    "provider_requests_per_msg", "worker_cpu_ms_per_msg", "producer_cpu_ms_per_msg",
    "redis_cpu_ms_per_msg", "rss_mb", "pss_mb",
)  # fmt: skip


def row(fig: Figures) -> dict[str, Any]:
    out: dict[str, Any] = {name: getattr(fig, name) for name in MEDIAN_FIELDS if hasattr(fig, name)}
    out.update({k: fig.commands_per_msg.get(k, 0.0) for k in ("producer", "broker", "worker")})
    out["result"] = fig.commands_per_msg.get("result", 0.0)
    out["total_per_msg"] = fig.total_per_msg
    out["label"] = fig.label
    out["messages"] = fig.messages
    return out


def table(rows: Sequence[dict[str, Any]]) -> str:
    header = "  ".join(format(h, spec.split(".")[0]) for h, _, spec in COLUMNS)
    lines = [
        f"{'':<26}{'':>5}  {'':>7}  {'Redis commands per message':<46}  {'':>8}  "
        "CPU ms per message",
        header,
        "-" * len(header),
    ]
    for r in rows:
        line = "  ".join(format(r[attr], spec) for _, attr, spec in COLUMNS)
        if r["ok"] != r["messages"]:
            line += f"  ({r['messages'] - r['ok']:g} not sent)"
        lines.append(line)
    return "\n".join(lines)


def medians(runs: Sequence[Sequence[Figures]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for position, first in enumerate(runs[0]):
        rows = [row(run[position]) for run in runs]
        median = {name: statistics.median(r[name] for r in rows) for name in MEDIAN_FIELDS}
        median.update(label=first.label, messages=first.messages)
        out.append(median)
    return out


# -- main ---------------------------------------------------------------------------------------


def _list(
    value: str, allowed: Sequence[str], flag: str, parser: argparse.ArgumentParser
) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items or any(v not in allowed for v in items):
        parser.error(f"{flag} takes a comma-separated subset of: {', '.join(allowed)}")
    return items


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Per-message cost (msgs/s, Redis commands, provider requests, CPU) of "
        "delivery-worker against a hand-written Celery task, SMS Partner on the sandbox."
    )
    parser.add_argument("--messages", type=int, default=400, help="SMS per measurement")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=8, help="pool size per worker")
    parser.add_argument(
        "--latency-ms", type=int, default=50, help="SMS Partner's latency in the sandbox"
    )
    parser.add_argument("--pools", default="prefork,threads", help="prefork, threads or both")
    parser.add_argument(
        "--impls", default="anchor,delivery", help="anchor, delivery (delivery-worker) or both"
    )
    parser.add_argument("--runs", type=int, default=1, help="repeat everything; medians if > 1")
    parser.add_argument(
        "--aof",
        action="store_true",
        help="Redis with appendonly + appendfsync always, as devstack runs it for tests "
        "(default off: the bench measures commands and CPU, not the disk)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per measurement")
    parser.add_argument(
        "--events",
        action="store_true",
        help="start every worker with -E (task events, as while Flower runs); default off",
    )
    parser.add_argument(
        "--worker-log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="delivery-worker's DELIVERY_LOG_LEVEL (default WARNING)",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep the logs")
    args = parser.parse_args(argv)
    args.pool_list = _list(args.pools, POOLS, "--pools", parser)
    args.impl_list = [IMPLS[i] for i in _list(args.impls, tuple(IMPLS), "--impls", parser)]
    if min(args.messages, args.processes, args.concurrency, args.runs) < 1:
        parser.error("--messages, --processes, --concurrency and --runs must be >= 1")
    if args.latency_ms < 0:
        parser.error("--latency-ms must be >= 0")
    return args


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every finally: workers, sandbox, redis stop


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="dw-bench-throughput-"))
    stack = Stack(workdir, latency_ms=args.latency_ms, aof=args.aof)
    timeout_s = args.timeout or 120 + 0.5 * args.messages
    runs: list[list[Figures]] = []
    print(
        f"throughput bench: {args.messages} single-number SMS Partner SMS per measurement, "
        f"{args.latency_ms} ms provider latency, {args.processes} worker processes x "
        f"concurrency {args.concurrency}, pools {args.pool_list}, {args.runs} run(s), "
        f"task events {'on (-E)' if args.events else 'off'}",
        flush=True,
    )
    failed: list[str] = []
    try:
        stack.start()
        for run in range(1, args.runs + 1):
            figures: list[Figures] = []
            for pool in args.pool_list:
                for impl in args.impl_list:
                    fig = Figures(impl, pool, args.processes, args.concurrency, args.messages)
                    logdir = workdir / f"run{run}-{'dw' if impl == DELIVERY else 'anchor'}-{pool}"
                    fig.log_dir = logdir.name
                    print(f"  run {run}: {fig.label} ...", flush=True)
                    tag = f"{stamp[-7:-1]}{run}{'d' if impl == DELIVERY else 'a'}{pool[0]}"
                    measure(stack, fig, tag, logdir, timeout_s, args.worker_log_level, args.events)
                    figures.append(fig)
                    if fig.ok != fig.messages or fig.timed_out:
                        failed.append(f"run {run}, {fig.label}: {fig.ok} of {fig.messages} sent")
            runs.append(figures)
            print(f"\nrun {run} of {args.runs}:")
            print(table([row(f) for f in figures]), flush=True)
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
    keep = args.keep_workdir or bool(failed)
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    out = RESULTS_DIR / f"throughput-{stamp}.json"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "throughput",
        "started_at": stamp,
        "config": {
            "messages": args.messages,
            "processes": args.processes,
            "concurrency": args.concurrency,
            "latency_ms": args.latency_ms,
            "pools": args.pool_list,
            "impls": args.impl_list,
            "runs": args.runs,
            "aof": args.aof,
            "events": args.events,
            "provider": PROVIDER,
            "delivery_env": {
                k: v
                for k, v in sorted(os.environ.items())
                if k.startswith("DELIVERY_") and "KEY" not in k
            },
        },
        "host": {
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
            "python": platform.python_version(),
            "celery": celery.__version__,
            "platform": platform.platform(),
        },
        "runs": [[{**asdict(f), "label": f.label} for f in run_figs] for run_figs in runs],
        "medians": median_rows,
        "failed": failed,
    }
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nfigures written to {out.relative_to(BENCH_DIR.parent)}")
    if keep:
        print(f"logs kept in {workdir}")
    if failed:
        print("\nFAIL: a measurement did not send every message:", file=sys.stderr)
        for line in failed:
            print(f"  - {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
