"""Fault soak: no message lost, no duplicate send, under the faults a worker fleet really meets.

Real processes only: a private ``redis-server`` (AOF on), the provider sandbox over a socket and
``celery -A worker worker`` subprocesses started with :mod:`devstack`. Every scenario sends
messages spread over the five providers, each message carrying a unique token, then counts what
the sandbox *accepted* per delivery:

* EmailMassivo by ``idempotency_key`` (the delivery id; the sandbox answers a resend with the
  same key from its idempotency store, counted apart as ``deduped``: not a second send);
* SMS Partner by ``tag`` (unique per delivery, used to reconcile unknown outcomes); a batch
  (``/bulk-send``) by the token in each accepted entry's text;
* Postal by the ``X-Delivery-Id`` header;
* Mail Partner and Voice Partner by the token in the subject / the spoken text.

``sent`` is the number of messages with at least one accepted copy, ``lost`` those with none,
``duplicated`` the extra copies. Scenarios:

``sigkill``
    SIGKILL random pool processes of two workers while the messages flow.
``redis-restart``
    SIGKILL ``redis-server`` mid-run, restart it on the same port and directory (AOF), sweep.
    Counted against the messages the producer was told were accepted.
``accept-then-drop``
    The sandbox accepts 5 % of requests, then drops the connection without answering.
``sigterm``
    SIGTERM to a worker mid-batch (warm shutdown), then a fresh worker finishes the batch.
``poison``
    A message whose worker is SIGKILLed on every run ends as a dead letter; once the cause is
    gone, ``delivery-worker dead replay ID`` delivers it once.
``sweeper``
    Deliveries lost between broker and worker (left ``queued`` or ``sending`` with no task
    anywhere) are re-enqueued by ``tasks.sweep`` and delivered once; the stale copies turning up
    later send nothing.
``sms-reconcile``
    SMS Partner: a send whose answer is lost, then a status-by-tag check that fails too; the
    delivery must not be sent twice.
``hostile``
    A hostile producer: thousands of malformed messages by name (deep, huge, wrong types,
    extra arguments, unknown tasks), corrupt raw bodies and raw list items that are not kombu
    envelopes, mixed with valid messages: no worker exits, no valid message lost, every
    malformed one final, every foreign item set aside.
``emailmassivo-lost-answer``
    EmailMassivo accepts the first send of every message, then drops the connection; the
    resend with the same idempotency key is answered 200 with the first uuid: every result
    ``sent``, nothing lost, nothing sent twice.
``sms-late-accept``
    SMS Partner: the provider accepts every first send only after the worker's read timeout
    (lost answer); asked after the grace, the worker finds each send and never resends.
``batch-sigkill``
    Batching on: SMS only; the pool process is SIGKILLed while its ``/bulk-send`` is at the
    provider. The batch's messages are requeued at once and looked up by the batch's tag:
    nothing lost, nothing sent twice (``tests/integration/test_batching.py``).

``tests/integration/test_faults.py`` runs the same scenario functions at CI size. Here, larger::

    python bench/fault_soak.py [--messages 1000] [--kills N] [--scenarios sigkill,sigterm,...]
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import structlog
from celery import Celery

from devstack.processes import (
    Proc,
    free_port,
    sandbox_env,
    start_redis,
    start_sandbox,
    start_worker,
)
from worker.app import client_app
from worker.config import PROVIDERS, Settings
from worker.guard.raw_items import REJECTED_ITEMS_KEY
from worker.ops.operations import Operations
from worker.producer import Producer
from worker.stores import FINAL_STATES, RedisLedger
from worker.stores.keys import DEFAULT_KEYS

__all__ = [
    "SCENARIOS",
    "Figures",
    "ProviderFigures",
    "Stack",
    "base_env",
    "main",
    "scenario_accept_then_drop",
    "scenario_batch_sigkill",
    "scenario_emailmassivo_lost_answer",
    "scenario_hostile",
    "scenario_poison",
    "scenario_redis_restart",
    "scenario_sigkill",
    "scenario_sigterm",
    "scenario_sms_late_accept",
    "scenario_sms_reconcile",
    "scenario_sweeper",
]

CHANNELS = {
    "postal": "email",
    "emailmassivo": "email",
    "mailpartner": "email",
    "smspartner": "sms",
    "voicepartner": "voice",
}
LOST_QUEUE = "dw-fault-lost"
"""A queue no worker consumes: a message published there is lost between broker and worker."""

FAST_ENV = {
    # Retries, timeouts and the send-lock TTL (limiter wait + 3 connects + read + 10 s) small
    # enough that a killed run's lock frees in seconds, not minutes.
    "DELIVERY_RETRY_BACKOFF_BASE_S": "0.2",
    "DELIVERY_RETRY_BACKOFF_MAX_S": "2",
    "DELIVERY_HTTP_CONNECT_TIMEOUT_S": "1",
    "DELIVERY_HTTP_READ_TIMEOUT_S": "3",
    "DELIVERY_LIMITER_MAX_INLINE_WAIT_S": "1",
    # Ask SMS Partner about an unknown outcome 2 s after it (the default 60 s covers a real
    # provider's late acceptance; the sandbox's faults accept at once or at a set delay).
    "DELIVERY_RECONCILE_GRACE_S": "2",
    # A breaker that opens and probes within seconds (the documented 30 s, doubling to 300 s,
    # would only make the runs longer).
    "DELIVERY_BREAKER_FAILURE_THRESHOLD": "3",
    "DELIVERY_BREAKER_OPEN_S": "1.5",
    "DELIVERY_BREAKER_MAX_OPEN_S": "3",
    "DELIVERY_VOICEPARTNER_NOTIFICATION_EMAIL": "ops@example.org",
}
_TOKEN = re.compile(r"\b(fx[0-9a-f]{8}n\d+)\b")


# -- figures ------------------------------------------------------------------------------------


@dataclass
class ProviderFigures:
    messages: int = 0
    sent: int = 0
    """Messages with at least one copy accepted by the provider."""
    lost: int = 0
    """Messages the provider never accepted."""
    duplicated: int = 0
    """Copies accepted beyond the first, summed over messages."""
    deduped: int = 0
    """EmailMassivo: resends answered from the idempotency store (not sends)."""


@dataclass
class Figures:
    scenario: str
    messages: int
    kills: int
    providers: dict[str, ProviderFigures]
    states: dict[str, int]
    """Ledger states of the messages at the end."""
    elapsed_s: float
    checks: dict[str, Any] = field(default_factory=dict)
    """Scenario facts the tests assert on (exit codes, counts at a given moment, …)."""

    @property
    def sent(self) -> int:
        return sum(p.sent for p in self.providers.values())

    @property
    def lost(self) -> int:
        return sum(p.lost for p in self.providers.values())

    @property
    def duplicated(self) -> int:
        return sum(p.duplicated for p in self.providers.values())

    def dup(self, provider: str) -> int:
        return self.providers[provider].duplicated if provider in self.providers else 0

    def summary(self) -> str:
        per = " ".join(
            f"{p}={f.duplicated}" + (f"(+{f.deduped} deduped)" if f.deduped else "")
            for p, f in self.providers.items()
            if f.messages
        )
        states = ",".join(f"{s}:{n}" for s, n in sorted(self.states.items()))
        checks = " ".join(f"{k}={v}" for k, v in self.checks.items())
        return (
            f"[{self.scenario}] messages={self.messages} sent={self.sent} lost={self.lost} "
            f"duplicated={self.duplicated} kills={self.kills} | dup by provider: {per} | "
            f"ledger: {states} | {checks} | {self.elapsed_s:.1f}s"
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(sent=self.sent, lost=self.lost, duplicated=self.duplicated)
        return out


# -- the stack ----------------------------------------------------------------------------------


@dataclass
class Stack:
    """Where scenarios run: worker environment (broker, backend, providers), sandbox, files.

    The broker and result-backend databases in ``env`` belong to the harness: every scenario
    flushes them first.
    """

    env: dict[str, str]
    sandbox_url: str
    workdir: Path

    @property
    def broker_url(self) -> str:
        return self.env["DELIVERY_BROKER_URL"]

    @property
    def backend_url(self) -> str:
        return self.env["DELIVERY_RESULT_BACKEND"]


def base_env(redis_url: str, sandbox_url: str, *, db: int = 0) -> dict[str, str]:
    """``DELIVERY_*`` for workers: broker/backend on ``redis_url`` dbs ``db``/``db+1``, sandbox."""
    return {
        "DELIVERY_BROKER_URL": f"{redis_url}/{db}",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/{db + 1}",
        **FAST_ENV,
        **sandbox_env(sandbox_url),
    }


class SandboxAdmin:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)

    def close(self) -> None:
        self.http.close()

    def reset(self) -> None:
        self.http.post("/_admin/reset").raise_for_status()

    def messages(self, provider: str | None = None) -> list[dict[str, Any]]:
        params = {"provider": provider} if provider else {}
        data = self.http.get("/_admin/messages", params=params).raise_for_status().json()
        items: list[dict[str, Any]] = data["messages"]
        return items

    def requests(self, provider: str | None = None) -> list[dict[str, Any]]:
        params = {"provider": provider} if provider else {}
        data = self.http.get("/_admin/requests", params=params).raise_for_status().json()
        items: list[dict[str, Any]] = data["requests"]
        return items

    def stats(self) -> dict[str, dict[str, Any]]:
        data = self.http.get("/_admin/stats").raise_for_status().json()
        providers: dict[str, dict[str, Any]] = data["providers"]
        return providers

    def set_faults(self, rules: list[dict[str, Any]]) -> None:
        self.http.post("/_admin/faults", json={"rules": rules}).raise_for_status()

    def set_balance(self, provider: str, credits: int) -> None:
        body = {"provider": provider, "credits": credits}
        self.http.post("/_admin/balance", json=body).raise_for_status()


# -- the workload -------------------------------------------------------------------------------


@dataclass
class Planned:
    """One message of a scenario; ``delivery_id`` once the producer accepted it."""

    index: int
    provider: str
    token: str
    message: dict[str, Any]
    delivery_id: str | None = None

    @property
    def channel(self) -> str:
        return CHANNELS[self.provider]


def build_workload(run: str, count: int, providers: Sequence[str] = PROVIDERS) -> list[Planned]:
    """``count`` messages round-robin over ``providers``, each with a unique token in it."""
    out = []
    for i in range(count):
        provider = providers[i % len(providers)]
        token = f"fx{run}n{i}"
        # Odd numbers: never the sandbox's STOP-listed ending 0014 (nor a magic +336000000xx).
        phone = f"+336{12000001 + 2 * (i % 1000000):08d}"
        message: dict[str, Any]
        if CHANNELS[provider] == "email":
            message = {
                "provider": provider,
                "to": [{"email": f"customer{i}@example.com"}],
                "from": {"email": "shop@example.org", "name": "Shop"},
                "subject": f"Order {token}",
                "text": f"Thanks for order {token}",
            }
        elif provider == "smspartner":
            message = {"provider": provider, "to": [phone], "text": f"Code {token}"}
        else:
            message = {
                "provider": provider,
                "mode": "tts",
                "to": [phone],
                "text": f"Bonjour {token}",
                "lang": "fr",
            }
        out.append(Planned(i, provider, token, message))
    return out


def sms_tag(delivery_id: str) -> str:
    """The SMS Partner tag the worker gives a delivery (``reconcile_tag``: dw + 18 hex)."""
    return "dw" + delivery_id.replace("-", "")[:18].lower()


def tally(
    admin: SandboxAdmin, planned: Sequence[Planned]
) -> tuple[dict[str, ProviderFigures], dict[str, int]]:
    """Per provider figures for the accepted messages, and copies per planned token."""
    by_key: dict[tuple[str, str], str] = {}
    for p in planned:
        if p.delivery_id is None:
            continue
        if p.provider == "emailmassivo":
            by_key[(p.provider, p.delivery_id)] = p.token
        elif p.provider == "smspartner":
            by_key[(p.provider, sms_tag(p.delivery_id))] = p.token
        elif p.provider == "postal":
            by_key[(p.provider, p.delivery_id)] = p.token
    copies: Counter[str] = Counter()
    for m in admin.messages():
        provider = m["provider"]
        if provider == "smspartner" and isinstance(m.get("fields", {}).get("SMSList"), list):
            # A batch (/bulk-send, worker.batching): one copy per accepted entry, its token in
            # that entry's text. A /send batch has one text: the token of a batch of one.
            for token in _bulk_tokens(m):
                copies[token] += 1
            continue
        if provider == "smspartner" and "," in str(m.get("fields", {}).get("phoneNumbers", "")):
            raise AssertionError("tally: a multi-number /send is not attributable by token")
        key: str | None = None
        if provider == "emailmassivo":
            key = m.get("idempotency_key")
        elif provider == "smspartner":
            key = m.get("tag")
        elif provider == "postal":
            key = (m.get("fields", {}).get("headers") or {}).get("X-Delivery-Id")
        token = by_key.get((provider, key)) if key else None
        if token is None:
            # Mail/Voice Partner (and anything the producer was not told it accepted): the token
            # in the content identifies the message.
            found = set(_TOKEN.findall(json.dumps(m.get("fields", {}))))
            token = found.pop() if len(found) == 1 else f"?{m.get('message_id')}"
        copies[token] += 1
    stats = admin.stats()
    figures = {p: ProviderFigures() for p in PROVIDERS}
    for p in planned:
        if p.delivery_id is None:
            continue  # refused at enqueue: not counted against the worker
        f = figures[p.provider]
        f.messages += 1
        n = copies.get(p.token, 0)
        f.sent += n > 0
        f.lost += n == 0
        f.duplicated += max(0, n - 1)
    figures["emailmassivo"].deduped = int(stats["emailmassivo"]["duplicates"])
    return {p: f for p, f in figures.items() if f.messages}, dict(copies)


def _bulk_tokens(m: dict[str, Any]) -> list[str]:
    """The tokens of a ``/bulk-send``'s accepted entries (``recipients``: accepted numbers)."""
    accepted = set(m.get("recipients") or [])
    out = []
    for entry in m["fields"]["SMSList"]:
        if isinstance(entry, dict) and entry.get("phoneNumber") in accepted:
            found = _TOKEN.findall(str(entry.get("message", "")))
            out.append(found[0] if len(found) == 1 else f"?{m.get('message_id')}")
    return out


# -- processes ----------------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory so far (``VmHWM`` in ``/proc/<pid>/status``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# A compression bomb: 81 bytes of bzip2 that inflate to 50 MB of ``[`` (a nesting bomb too),
# sent with a ``compression`` header so kombu inflates it before any hook (docs/threat-model.md).
_BOMB = bz2.compress(b"[" * 50_000_000)


def pool_children(proc: Proc) -> list[int]:
    """The pool processes of a ``celery worker`` (``ps --ppid``)."""
    out = subprocess.run(
        ["ps", "--ppid", str(proc.pid), "-o", "pid="], capture_output=True, text=True, check=False
    ).stdout
    return [int(pid) for pid in out.split()]


_LOST_JOB = re.compile(r"Worker exited prematurely: signal 9 \(SIGKILL\) Job: (\d+)")


def interrupted_tasks(procs: Sequence[Proc]) -> int:
    """Tasks whose pool process was killed under them (Celery logs a WorkerLostError)."""
    return sum(len(set(_LOST_JOB.findall(p.log_path.read_text(errors="replace")))) for p in procs)


def wait_ready(app: Celery, procs: Sequence[Proc], timeout_s: float = 60.0) -> None:
    names = {p.name.removeprefix("worker-") for p in procs}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"worker {p.name} exited:\n{p.log_tail()}")
        replies = app.control.ping(timeout=0.5)
        seen = {next(iter(r)).split("@")[0] for r in replies or []}
        if names <= seen:
            return
    raise RuntimeError(f"workers {sorted(names)} not ready after {timeout_s:g}s")


class Run:
    """One scenario's client side: Celery client, producer, ledger, sandbox admin, workers."""

    def __init__(self, stack: Stack, scenario: str, env: Mapping[str, str] | None = None) -> None:
        self.stack = stack
        self.scenario = scenario
        self.run = uuid.uuid4().hex[:8]
        self.env = {**stack.env, **(env or {})}
        self.workdir = stack.workdir / f"{scenario}-{self.run}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.admin = SandboxAdmin(stack.sandbox_url)
        self.admin.reset()
        for url in (self.env["DELIVERY_BROKER_URL"], self.env["DELIVERY_RESULT_BACKEND"]):
            with redis.Redis.from_url(url) as r:
                r.flushdb()
        self.redis = redis.Redis.from_url(self.env["DELIVERY_BROKER_URL"])
        self.ledger = RedisLedger(self.redis)
        self.client = client_app(
            self.env["DELIVERY_BROKER_URL"],
            self.env["DELIVERY_RESULT_BACKEND"],
            name=f"soak-{scenario}",
        )
        self.producer = Producer(app=self.client, ledger=self.ledger)
        self.workers: list[Proc] = []
        self.kills = 0
        self.checks: dict[str, Any] = {}
        self.started = time.monotonic()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in reversed(self.workers):
            proc.stop(timeout_s=30)
        self.client.close()
        self.redis.close()
        self.admin.reset()
        self.admin.close()

    def start_workers(
        self, count: int, concurrency: int, *, env: Mapping[str, str] | None = None
    ) -> list[Proc]:
        procs = [
            start_worker(
                self.workdir,
                {**self.env, **(env or {})},
                name=f"{self.scenario.replace('-', '')}{len(self.workers) + i}x{self.run}",
                concurrency=concurrency,
            )
            for i in range(count)
        ]
        self.workers += procs
        wait_ready(self.client, procs)
        return procs

    def enqueue(self, items: Sequence[Planned], **options: Any) -> None:
        for p in items:
            p.delivery_id = self.producer.enqueue(p.channel, p.message, **options).id

    def states(self, ids: Sequence[str]) -> dict[str, str]:
        pipe = self.redis.pipeline(transaction=False)
        for delivery_id in ids:
            pipe.hget(DEFAULT_KEYS.delivery(delivery_id), "state")
        return {
            d: (s.decode() if isinstance(s, bytes) else "missing")
            for d, s in zip(ids, pipe.execute(), strict=True)
        }

    def wait_final(
        self,
        ids: Sequence[str],
        timeout_s: float,
        *,
        tick: Callable[[], None] | None = None,
        every_s: float = 0.2,
    ) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while True:
            if tick is not None:
                tick()
            states = self.states(ids)
            if all(s in FINAL_STATES for s in states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(every_s)

    def figures(self, planned: Sequence[Planned]) -> Figures:
        providers, _copies = tally(self.admin, planned)
        ids = [p.delivery_id for p in planned if p.delivery_id is not None]
        return Figures(
            scenario=self.scenario,
            messages=len(ids),
            kills=self.kills,
            providers=providers,
            states=dict(Counter(self.states(ids).values())),
            elapsed_s=time.monotonic() - self.started,
            checks=self.checks,
        )


def _ids(planned: Sequence[Planned]) -> list[str]:
    return [p.delivery_id for p in planned if p.delivery_id is not None]


# -- scenarios ----------------------------------------------------------------------------------


def scenario_sigkill(
    stack: Stack,
    *,
    messages: int = 500,
    kills: int = 5,
    workers: int = 2,
    concurrency: int = 3,
    seed: int = 7,
    latency_ms: int = 100,
    timeout_s: float = 180.0,
) -> Figures:
    """SIGKILL random pool processes at random moments while ``messages`` flow.

    Providers answer after ``latency_ms``, so a kill often lands between the request reaching
    the provider and the answer reaching the worker: the send whose outcome nobody recorded.
    """
    with Run(stack, "sigkill") as run:
        procs = run.start_workers(workers, concurrency)
        run.admin.set_faults([{"provider": "*", "action": "latency", "delay_ms": latency_ms}])
        planned = build_workload(run.run, messages)
        run.enqueue(planned)
        ids = _ids(planned)
        rng = random.Random(seed)
        busy_kills = 0
        while run.kills < kills:
            time.sleep(rng.uniform(0.2, 1.0))
            states = Counter(run.states(ids).values())
            if sum(states[s] for s in FINAL_STATES) == len(ids):
                break
            proc = rng.choice(procs)
            children = pool_children(proc)
            if not children:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(rng.choice(children), signal.SIGKILL)
                run.kills += 1
                busy_kills += states["sending"] > 0
        run.checks["kills_while_sending"] = busy_kills
        run.wait_final(ids, timeout_s)
        run.checks["tasks_interrupted"] = interrupted_tasks(procs)
        run.checks["workers_alive"] = all(p.alive() for p in procs)
        return run.figures(planned)


def scenario_redis_restart(
    stack: Stack,
    *,
    messages: int = 150,
    workers: int = 2,
    concurrency: int = 2,
    rate_per_s: float = 30.0,
    down_s: float = 0.5,
    latency_ms: int = 100,
    timeout_s: float = 150.0,
) -> Figures:
    """SIGKILL ``redis-server`` (AOF on) mid-run, restart it on the same port and directory.

    A producer thread enqueues at ``rate_per_s``; enqueues refused during the outage are counted
    apart (the application was told). Once Redis is back the test calls the sweeper every second,
    as beat would, to recover tasks whose broker copy died with a connection.
    """
    port = free_port()
    redis_dir = stack.workdir / f"redis-restart-{uuid.uuid4().hex[:6]}"
    server = start_redis(redis_dir, port)
    url = str(server.extra["url"])
    sweep_env = {
        "DELIVERY_SWEEP_QUEUED_AFTER_S": "4",
        "DELIVERY_SWEEP_SENDING_AFTER_S": "4",
    }
    own = Stack(
        env={**stack.env, "DELIVERY_BROKER_URL": f"{url}/0", "DELIVERY_RESULT_BACKEND": f"{url}/1"},
        sandbox_url=stack.sandbox_url,
        workdir=stack.workdir,
    )
    try:
        with Run(own, "redis-restart", sweep_env) as run:
            procs = run.start_workers(workers, concurrency)
            # Slow answers, so tasks are in flight and others queued when Redis dies.
            run.admin.set_faults([{"provider": "*", "action": "latency", "delay_ms": latency_ms}])
            planned = build_workload(run.run, messages)
            refused: list[str] = []
            accepted = threading.Event()

            def produce() -> None:
                for p in planned:
                    try:
                        run.enqueue([p])
                    except Exception as exc:  # the application is told: not accepted
                        refused.append(type(exc).__name__)
                    if p.index == messages // 3:
                        accepted.set()
                    time.sleep(1.0 / rate_per_s)
                accepted.set()

            producer = threading.Thread(target=produce, name="soak-producer", daemon=True)
            producer.start()
            accepted.wait(timeout=60)
            server.stop(signal.SIGKILL)
            run.kills += 1
            time.sleep(down_s)
            server = start_redis(redis_dir, port)
            producer.join(timeout=120)
            settings = Settings.from_env(run.env)
            ops = Operations.on_redis(run.redis, settings=settings, app=run.client)
            swept: Counter[str] = Counter()
            last_sweep = [0.0]

            def sweep() -> None:
                if time.monotonic() - last_sweep[0] >= 1.0:
                    last_sweep[0] = time.monotonic()
                    with contextlib.suppress(redis.ConnectionError):
                        swept.update(ops.sweep())

            run.wait_final(_ids(planned), timeout_s, tick=sweep)
            run.checks["refused_at_enqueue"] = len(refused)
            run.checks["swept"] = swept["requeued"]
            run.checks["workers_alive"] = all(p.alive() for p in procs)
            # Messages refused at enqueue that were delivered anyway (the ledger record was
            # written, the publish failed, the cleanup could not run): reported, not counted.
            _f, copies = tally(run.admin, planned)
            run.checks["refused_but_delivered"] = sum(
                1 for p in planned if p.delivery_id is None and copies.get(p.token)
            )
            return run.figures(planned)
    finally:
        server.stop()


def scenario_accept_then_drop(
    stack: Stack,
    *,
    messages: int = 200,
    fraction: float = 0.05,
    workers: int = 2,
    concurrency: int = 3,
    seed: int = 11,
    timeout_s: float = 150.0,
) -> Figures:
    """The sandbox accepts ``fraction`` of all requests, then drops the connection unanswered."""
    with Run(stack, "accept-then-drop") as run:
        run.start_workers(workers, concurrency)
        rule = {"provider": "*", "action": "accept_then_drop", "fraction": fraction, "seed": seed}
        run.admin.set_faults([rule])
        planned = build_workload(run.run, messages)
        run.enqueue(planned)
        run.wait_final(_ids(planned), timeout_s)
        requests = run.admin.requests()
        run.checks["dropped"] = sum(1 for r in requests if r["fault"] == "accept_then_drop")
        run.checks["dropped_sends"] = sum(
            1 for r in requests if r["fault"] == "accept_then_drop" and r["method"] == "POST"
        )
        return run.figures(planned)


def scenario_sigterm(
    stack: Stack,
    *,
    messages: int = 150,
    concurrency: int = 4,
    latency_ms: int = 150,
    stop_after: float = 0.35,
    timeout_s: float = 150.0,
) -> Figures:
    """SIGTERM to a worker's main process mid-batch; another worker then finishes the batch.

    The signal goes to the main process only, as a process supervisor sends it (systemd with
    ``KillMode=mixed``, ``docker stop``). A warm shutdown lets running tasks finish and hands
    the rest (prefetched, waiting for a retry countdown) back to the broker.
    """
    with Run(stack, "sigterm") as run:
        (first,) = run.start_workers(1, concurrency)
        run.admin.set_faults([{"provider": "*", "action": "latency", "delay_ms": latency_ms}])
        planned = build_workload(run.run, messages)
        run.enqueue(planned)
        ids = _ids(planned)
        deadline = time.monotonic() + timeout_s
        while Counter(run.states(ids).values())["sent"] < stop_after * len(ids):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGTERM)
        run.kills += 1
        signalled = time.monotonic()
        try:
            run.checks["exit_code"] = first.popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.checks["exit_code"] = "still running after 60s"
        run.checks["shutdown_s"] = round(time.monotonic() - signalled, 1)
        at_stop = Counter(run.states(ids).values())
        run.checks["sent_by_first"] = at_stop["sent"]
        run.checks["sending_at_stop"] = at_stop["sending"]
        run.checks["warm_shutdown_logged"] = "warm shutdown" in first.log_path.read_text().lower()
        (second,) = run.start_workers(1, concurrency)
        run.wait_final(ids, timeout_s)
        # Copies the second worker got of deliveries the first had finished (an ack the
        # shutdown did not send): the ledger answers them, the provider is not called.
        run.checks["reruns_answered_by_ledger"] = second.log_path.read_text().count(
            "delivery.already_final"
        )
        return run.figures(planned)


def scenario_poison(
    stack: Stack,
    *,
    max_runs: int = 2,
    provider: str = "mailpartner",
    timeout_s: float = 120.0,
) -> Figures:
    """A message that kills its worker on every run ends as a dead letter, then replays.

    While poisoned, the provider answers after 3 s and has no credit, so nothing is accepted
    even by a request whose worker died waiting. Each time the ledger shows a new attempt in
    ``sending``, the worker's pool processes are SIGKILLed. After ``max_runs`` such runs the
    next run sets it aside (state ``dead``, listed in ``dw:dead``). Then the cause goes away
    and ``delivery-worker dead replay ID`` sends it.
    """
    poison_env = {
        "DELIVERY_MAX_UNFINISHED_RUNS": str(max_runs),
        "DELIVERY_LIMITER_MAX_INLINE_WAIT_S": "0",
        "DELIVERY_HTTP_CONNECT_TIMEOUT_S": "0.5",
        "DELIVERY_HTTP_READ_TIMEOUT_S": "5",
    }
    with Run(stack, "poison", poison_env) as run:
        (proc,) = run.start_workers(1, 1)
        run.admin.set_balance(provider, 0)
        run.admin.set_faults([{"provider": provider, "action": "latency", "delay_ms": 3000}])
        planned = build_workload(run.run, 1, providers=[provider])
        run.enqueue(planned)
        (delivery_id,) = _ids(planned)
        seen_attempt: str | None = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            record = run.ledger.get(delivery_id)
            # The record turns dead, then the letter is written (a second round trip): wait
            # for both, so a slow machine does not read between them.
            if record is not None and record.state == "dead":
                if delivery_id in run.ledger.dead_letters():
                    break
                time.sleep(0.02)
                continue
            started = record.fields.get("attempt_started_at") if record else None
            if record is not None and record.state == "sending" and started != seen_attempt:
                seen_attempt = started
                for pid in pool_children(proc):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                run.kills += 1
            time.sleep(0.02)
        record = run.ledger.get(delivery_id)
        letters = run.ledger.dead_letters()
        run.checks["state_before_replay"] = record.state if record else "missing"
        run.checks["dead_letter_listed"] = delivery_id in letters
        run.checks["dead_reason"] = letters.get(delivery_id, {}).get("reason", "")
        run.checks["accepted_while_poisoned"] = len(run.admin.messages(provider))
        # The cause is gone: an operator replays the dead letter with the CLI.
        run.admin.set_faults([])
        run.admin.set_balance(provider, 1000)
        replay = subprocess.run(
            [sys.executable, "-m", "worker.ops.cli", "dead", "replay", delivery_id],
            env={**os.environ, **run.env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        run.checks["replay_exit"] = replay.returncode
        run.checks["replay_output"] = " ".join(replay.stdout.split())[-120:]
        run.wait_final([delivery_id], timeout_s)
        run.checks["dead_letters_after"] = len(run.ledger.dead_letters())
        return run.figures(planned)


def scenario_sweeper(stack: Stack, *, messages: int = 10, timeout_s: float = 60.0) -> Figures:
    """Deliveries lost between broker and worker are re-enqueued by ``tasks.sweep``.

    Each message is recorded in the ledger and published to a queue no worker consumes; half
    of them are then marked ``sending`` (a worker died mid-send and nothing redelivered the
    task). The worker's sweeper (``tasks.sweep``, thresholds 1 s) re-enqueues every one.
    Afterwards the lost copies turn up on the live queue after all: the ledger answers them.
    """
    sweep_env = {"DELIVERY_SWEEP_QUEUED_AFTER_S": "1", "DELIVERY_SWEEP_SENDING_AFTER_S": "1"}
    with Run(stack, "sweeper", sweep_env) as run:
        run.start_workers(1, 2)
        planned = build_workload(run.run, messages)
        run.enqueue(planned, queue=LOST_QUEUE)
        ids = _ids(planned)
        for delivery_id in ids[1::2]:
            run.ledger.transition(delivery_id, "sending", attempt_started_at=repr(time.time()))
        time.sleep(1.5)
        run.checks["final_before_sweep"] = sum(
            1 for s in run.states(ids).values() if s in FINAL_STATES
        )
        counts = run.client.send_task("tasks.sweep").get(timeout=30)
        run.checks["requeued"] = counts["requeued"]
        run.wait_final(ids, timeout_s)
        run.checks["requeued_again"] = run.client.send_task("tasks.sweep").get(timeout=30)[
            "requeued"
        ]
        moved = 0
        while run.redis.lmove(LOST_QUEUE, "delivery", "RIGHT", "LEFT") is not None:
            moved += 1
        run.checks["stale_copies_consumed"] = moved
        deadline = time.monotonic() + 30
        while run.redis.llen("delivery") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # the last stale copies finish (the ledger answers them)
        return run.figures(planned)


def scenario_sms_reconcile(stack: Stack, *, messages: int = 3, timeout_s: float = 60.0) -> Figures:
    """SMS Partner: the answer to a send is lost, and the first status-by-tag check fails too."""
    with Run(stack, "sms-reconcile") as run:
        run.start_workers(1, 1)
        run.admin.set_faults(
            [
                {
                    "provider": "smspartner",
                    "path": "/bulk-status-by-tag",
                    "action": "reset",
                    "first_n": messages,
                },
                {
                    "provider": "smspartner",
                    "path": "/send",
                    "action": "accept_then_drop",
                    "first_n": messages,
                },
            ]
        )
        planned = build_workload(run.run, messages, providers=["smspartner"])
        run.enqueue(planned)
        run.wait_final(_ids(planned), timeout_s)
        requests = run.admin.requests("smspartner")
        run.checks["status_checks"] = sum(1 for r in requests if r["method"] == "GET")
        return run.figures(planned)


def _hostile_message(rng: random.Random, n: int) -> tuple[str, list[Any], dict[str, Any]]:
    """One malformed message by name: task name, args, kwargs (``scenario_hostile``)."""
    channel = rng.choice(["email", "sms", "voice"])
    task = {"email": "tasks.send_email", "sms": "tasks.send_sms", "voice": "tasks.send_voice"}[
        channel
    ]
    message: dict[str, Any] = {"to": ["+33612345678"], "text": f"hostile {n}"}
    deep: Any = "x"
    for _ in range(rng.randint(33, 800)):
        deep = {"k": deep}
    field = rng.choice(["tag", "subject", "provider", "template", "headers", "to", "surprise"])
    message[field] = rng.choice(
        [
            deep,
            "x" * rng.randint(100_001, 200_000),
            list(range(rng.randint(2_001, 3_000))),
            "a@example.com\r\nBcc: evil@example.org",
            "\ud800\x00\x1b",
            rng.randint(-(2**70), 2**70),
            None,
            [[], {}],
        ]
    )
    args: list[Any] = [message]
    kwargs: dict[str, Any] = {}
    shape = rng.randrange(10)
    if shape == 0:
        args = [rng.choice([[message], "text", 42, None])]
    elif shape == 1:
        args.append({"extra": n})
    elif shape == 2:
        kwargs = {"unexpected": n}
    elif shape == 3:
        task = f"tasks.no_such_task_{n % 7}"
    return task, args, kwargs


_FOREIGN_ITEMS = [
    b"not json",
    b"[1, 2, 3]",
    b'{"foreign": "producer"}',
    json.dumps(
        {
            "body": "e30=",
            "headers": {},
            "properties": {
                "body_encoding": "rot13",
                "delivery_tag": "t",
                "delivery_info": {"exchange": "", "routing_key": "delivery"},
            },
        }
    ).encode(),
]
"""Raw list items a foreign producer's bug may push (``scenario_hostile``)."""


def scenario_hostile(
    stack: Stack,
    *,
    messages: int = 200,
    hostile: int = 2000,
    raw: int = 50,
    items: int = 10,
    workers: int = 2,
    concurrency: int = 2,
    seed: int = 13,
    timeout_s: float = 300.0,
) -> Figures:
    """A hostile producer: malformed messages by name mixed with valid ones.

    ``hostile`` generated messages (deeply nested, huge, wrong types, header injections,
    non-dict and extra arguments, unknown task names) are sent by name, and ``raw`` corrupt
    bodies (bad JSON, pickle content type, a body nested 100,000 levels, a bzip2 bomb, some
    without a task id) are published as bytes, and ``items`` raw list items that are not kombu
    envelopes are pushed with ``LPUSH`` (not JSON, JSON that is not an object, an object without the
    envelope's keys, an unknown body encoding), interleaved with ``messages`` valid ones from
    the producer. The promise: 0 worker exits, 0 valid messages lost, every malformed one final
    (ledger and result backend) or, without a readable id, counted in ``dw:rejected``; every
    foreign item set aside in ``dw:rejected:items`` (worker.guard.raw_items).
    """
    limits_env = {
        "DELIVERY_MAX_MESSAGE_BYTES": str(1024 * 1024),
        "DELIVERY_MAX_MESSAGE_ITEMS": "2000",
        "DELIVERY_MAX_MESSAGE_STRING": "100000",
    }
    with Run(stack, "hostile", limits_env) as run:
        procs = run.start_workers(workers, concurrency)
        pids = {p.pid: sorted(pool_children(p)) for p in procs}
        rng = random.Random(seed)
        planned = build_workload(run.run, messages)
        hostile_ids: list[str] = []
        no_id = 0
        batches = max(1, messages // 10)
        per_batch_hostile = hostile // batches + 1
        per_batch_raw = raw // batches + 1
        per_batch_items = items // batches + 1
        sent_hostile = sent_raw = sent_items = 0
        with run.client.producer_or_acquire() as producer:
            for b in range(batches):
                run.enqueue(
                    planned[b * len(planned) // batches : (b + 1) * len(planned) // batches]
                )
                for _ in range(min(per_batch_hostile, hostile - sent_hostile)):
                    task, args, kwargs = _hostile_message(rng, sent_hostile)
                    task_id = str(uuid.uuid4())
                    run.client.send_task(
                        task, args=args, kwargs=kwargs, task_id=task_id, queue="delivery"
                    )
                    hostile_ids.append(task_id)
                    sent_hostile += 1
                for _ in range(min(per_batch_raw, raw - sent_raw)):
                    kind = sent_raw % 5
                    task_id = str(uuid.uuid4()) if kind != 3 else None
                    headers: dict[str, Any] = {"lang": "py", "task": "tasks.send_email"}
                    if task_id is not None:
                        headers["id"] = task_id
                        hostile_ids.append(task_id)
                    else:
                        no_id += 1
                    body = [
                        b"{not json",
                        b"[" * 100_000 + b"]" * 100_000,
                        b"\x80\x04\x95 pickled",
                        b"[[], {}, {}]",
                        _BOMB,
                    ][kind]
                    if kind == 4:
                        headers["compression"] = "application/x-bz2"
                    content_type = (
                        "application/x-python-serialize" if kind == 2 else "application/json"
                    )
                    producer.publish(
                        body,
                        routing_key="delivery",
                        exchange="",
                        headers=headers,
                        content_type=content_type,
                        content_encoding="utf-8",
                    )
                    sent_raw += 1
                for _ in range(min(per_batch_items, items - sent_items)):
                    run.redis.lpush("delivery", _FOREIGN_ITEMS[sent_items % len(_FOREIGN_ITEMS)])
                    sent_items += 1
        ids = _ids(planned)
        run.wait_final(ids + hostile_ids, timeout_s)
        hostile_states = run.states(hostile_ids)
        backend = redis.Redis.from_url(run.env["DELIVERY_RESULT_BACKEND"])
        pipe = backend.pipeline(transaction=False)
        for task_id in hostile_ids:
            pipe.exists(f"celery-task-meta-{task_id}")
        in_backend = sum(int(x) for x in pipe.execute())
        rejected = run.redis.hgetall("dw:rejected")
        run.checks["hostile_sent"] = len(hostile_ids) + no_id
        run.checks["hostile_final"] = sum(1 for s in hostile_states.values() if s in FINAL_STATES)
        run.checks["hostile_in_backend"] = in_backend
        run.checks["rejected_without_id"] = sum(int(v) for v in rejected.values())
        run.checks["expected_without_id"] = no_id
        run.checks["items_pushed"] = sent_items
        run.checks["items_set_aside"] = run.redis.llen(REJECTED_ITEMS_KEY)
        run.checks["worker_exits"] = sum(1 for p in procs if not p.alive())
        run.checks["same_processes"] = pids == {p.pid: sorted(pool_children(p)) for p in procs}
        run.checks["main_peak_rss_mb"] = round(max(peak_rss_mb(p.pid) for p in procs), 1)
        run.checks["unrecoverable_logged"] = sum(
            p.log_path.read_text(errors="replace").count("Unrecoverable error") for p in procs
        )
        return run.figures(planned)


def scenario_emailmassivo_lost_answer(
    stack: Stack,
    *,
    messages: int = 10,
    success_status: int = 200,
    timeout_s: float = 60.0,
) -> Figures:
    """EmailMassivo accepts each message's first send, then drops the connection unanswered.

    The worker sees an unknown outcome and resends with the same idempotency key; the sandbox
    answers the repeat 200 with the first uuid (seed 003, docs/providers/emailmassivo.md §5.5),
    which must count as the same delivery. ``success_status`` is the status of a new send (200 as
    EmailMassivo documents it, 201 as RuSender does).
    """
    # The drops are the fault under test, not an outage: keep the breaker from pacing the run.
    with Run(
        stack, "emailmassivo-lost-answer", {"DELIVERY_BREAKER_FAILURE_THRESHOLD": "1000"}
    ) as run:
        config = {"emailmassivo_success_status": success_status}
        run.admin.http.post("/_admin/config", json=config).raise_for_status()
        run.start_workers(1, 4)
        # The first ``messages`` sends are accepted and their answers dropped: mostly each
        # message's first attempt (a quick resend may take the place of a later first attempt).
        rule = {
            "provider": "emailmassivo",
            "path": "/api/v1/external-mails/send",
            "action": "accept_then_drop",
            "first_n": messages,
        }
        run.admin.set_faults([rule])
        planned = build_workload(run.run, messages, providers=["emailmassivo"])
        run.enqueue(planned)
        ids = _ids(planned)
        run.wait_final(ids, timeout_s)
        results = [run.client.AsyncResult(d).get(timeout=timeout_s) for d in ids]
        requests = run.admin.requests("emailmassivo")
        accepted = {m["idempotency_key"]: m["message_id"] for m in run.admin.messages()}
        run.checks["dropped"] = sum(1 for r in requests if r["fault"] == "accept_then_drop")
        # Sends accepted whose answer was lost, and those a resend got back as 200 + that uuid.
        lost_answers = {
            r["message_id"]
            for r in requests
            if r["fault"] == "accept_then_drop" and r["outcome"] == "accepted"
        }
        repeats_200 = {
            r["message_id"] for r in requests if r["status"] == 200 and r["outcome"] == "duplicate"
        }
        run.checks["lost_answers"] = len(lost_answers)
        run.checks["recovered_by_200_repeat"] = len(lost_answers & repeats_200)
        run.checks["results"] = ",".join(
            f"{s}:{n}" for s, n in sorted(Counter(r["status"] for r in results).items())
        )
        # The uuid in each result is the one the provider gave the first (dropped) send.
        run.checks["result_uuid_is_first"] = sum(
            1
            for d, r in zip(ids, results, strict=True)
            if list(r.get("provider_message_ids", {}).values()) == [accepted.get(d)]
        )
        return run.figures(planned)


def scenario_sms_late_accept(
    stack: Stack,
    *,
    messages: int = 12,
    read_timeout_s: float = 1.0,
    accept_after_ms: int = 5000,
    grace_s: float = 6.0,
    concurrency: int = 4,
    timeout_s: float = 90.0,
) -> Figures:
    """SMS Partner accepts each first send ``accept_after_ms`` after it arrived, i.e. after the
    worker's read timeout gave up on it (the sandbox ``timeout`` fault waits, then processes).
    Asking at once (or after the breaker's short pause) would see nothing and resend; asked
    after the grace, every send is found."""
    env = {
        "DELIVERY_HTTP_READ_TIMEOUT_S": f"{read_timeout_s:g}",
        "DELIVERY_RECONCILE_GRACE_S": f"{grace_s:g}",
    }
    with Run(stack, "sms-late-accept", env=env) as run:
        run.start_workers(1, concurrency)
        run.admin.set_faults(
            [
                {
                    "provider": "smspartner",
                    "path": "/send",
                    "action": "timeout",
                    "delay_ms": accept_after_ms,
                    "first_n": messages,
                }
            ]
        )
        planned = build_workload(run.run, messages, providers=["smspartner"])
        run.enqueue(planned)
        run.wait_final(_ids(planned), timeout_s)
        # A resend's late acceptance would land up to accept_after_ms after the last send:
        # count only once every accepted copy can have been recorded.
        time.sleep(accept_after_ms / 1000 + 0.5)
        requests = run.admin.requests("smspartner")
        run.checks["late_accepted"] = sum(1 for r in requests if r["fault"] == "timeout")
        run.checks["sends"] = sum(1 for r in requests if r["route"] == "/send")
        run.checks["status_checks"] = sum(
            1 for r in requests if r["route"] == "/bulk-status-by-tag"
        )
        return run.figures(planned)


BATCH_ENV = {"DELIVERY_BATCHING": "1", "DELIVERY_BATCH_LINGER_S": "0.3"}


def scenario_batch_sigkill(
    stack: Stack,
    *,
    messages: int = 400,
    kills: int = 4,
    concurrency: int = 2,
    seed: int = 5,
    latency_ms: int = 600,
    timeout_s: float = 180.0,
) -> Figures:
    """Batching on (``worker.batching``): SIGKILL the pool processes while one holds a batch of SMS
    whose ``/bulk-send`` is at the provider (answered after ``latency_ms``). The killed batch's
    messages are requeued at once (Celery's ``on_failure`` for a lost worker); their records
    say ``sending`` under the batch's tag, so they are looked up by that tag, never resent
    blindly: nothing lost, nothing sent twice."""
    with Run(stack, "batch-sigkill", env=BATCH_ENV) as run:
        procs = run.start_workers(1, concurrency)
        run.admin.set_faults([{"provider": "*", "action": "latency", "delay_ms": latency_ms}])
        planned = build_workload(run.run, messages, providers=["smspartner"])
        run.enqueue(planned)
        ids = _ids(planned)
        rng = random.Random(seed)
        busy_kills = 0
        deadline = time.monotonic() + timeout_s
        while run.kills < kills and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.05, 0.3))
            states = Counter(run.states(ids).values())
            if sum(states[s] for s in FINAL_STATES) == len(ids):
                break
            if states["sending"] == 0:
                continue  # kill only while a batch is at the provider
            children = pool_children(procs[0])
            if not children:
                continue
            # Every pool process: the batch is in one of them, and a random pick often hit the
            # idle one (then no task was interrupted, and the scenario proved nothing).
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            run.kills += 1
            busy_kills += 1
            time.sleep(latency_ms / 1000)
        run.checks["kills_while_sending"] = busy_kills
        run.wait_final(ids, timeout_s)
        requests = run.admin.requests("smspartner")
        run.checks["batch_requests"] = sum(1 for r in requests if r["route"] == "/bulk-send")
        run.checks["status_checks"] = sum(
            1 for r in requests if r["route"] == "/bulk-status-by-tag"
        )
        run.checks["tasks_interrupted"] = interrupted_tasks(procs)
        run.checks["workers_alive"] = all(p.alive() for p in procs)
        return run.figures(planned)


SCENARIOS: dict[str, Callable[..., Figures]] = {
    "sigkill": scenario_sigkill,
    "redis-restart": scenario_redis_restart,
    "accept-then-drop": scenario_accept_then_drop,
    "sigterm": scenario_sigterm,
    "poison": scenario_poison,
    "sweeper": scenario_sweeper,
    "sms-reconcile": scenario_sms_reconcile,
    "hostile": scenario_hostile,
    "emailmassivo-lost-answer": scenario_emailmassivo_lost_answer,
    "sms-late-accept": scenario_sms_late_accept,
    "batch-sigkill": scenario_batch_sigkill,
}


# -- command line -------------------------------------------------------------------------------


def table(results: Sequence[Figures]) -> str:
    head = ("scenario", "provider", "messages", "sent", "lost", "duplicated", "deduped", "kills")
    rows: list[tuple[str, ...]] = [head]
    for f in results:
        for provider, p in f.providers.items():
            rows.append(
                (
                    f.scenario,
                    provider,
                    str(p.messages),
                    str(p.sent),
                    str(p.lost),
                    str(p.duplicated),
                    str(p.deduped),
                    "",
                )
            )
        rows.append(
            (
                f.scenario,
                "ALL",
                str(f.messages),
                str(f.sent),
                str(f.lost),
                str(f.duplicated),
                str(sum(p.deduped for p in f.providers.values())),
                str(f.kills),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for n, row in enumerate(rows):
        lines.append(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--messages", type=int, default=1000, help="messages per load scenario (default 1000)"
    )
    parser.add_argument(
        "--kills", type=int, default=None, help="SIGKILLs in 'sigkill' (default messages/100)"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    # The sweeper logs every re-enqueue as a warning; the table is what this prints.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    n = args.messages
    sizes: dict[str, dict[str, Any]] = {
        "sigkill": {
            "messages": n,
            "kills": args.kills if args.kills is not None else max(5, n // 100),
            "seed": args.seed,
            "timeout_s": 120.0 + n / 5,
        },
        "redis-restart": {"messages": n, "timeout_s": 120.0 + n / 5},
        "accept-then-drop": {"messages": n, "seed": args.seed, "timeout_s": 120.0 + n / 5},
        "sigterm": {"messages": n, "timeout_s": 120.0 + n / 5},
        "poison": {"max_runs": 3},
        "sweeper": {"messages": max(10, n // 20)},
        "sms-reconcile": {"messages": max(3, n // 100)},
        "hostile": {
            "messages": n,
            "hostile": 5 * n,
            "raw": max(20, n // 10),
            "items": 10,
            "seed": args.seed,
        },
        "emailmassivo-lost-answer": {"messages": max(10, n // 20)},
        "sms-late-accept": {"messages": max(12, n // 20), "timeout_s": 90.0 + n / 10},
        "batch-sigkill": {"messages": n, "seed": args.seed, "timeout_s": 120.0 + n / 5},
    }
    workdir = Path(tempfile.mkdtemp(prefix="fault-soak-"))
    redis_proc = start_redis(workdir / "redis")
    sandbox = start_sandbox(workdir, extra_args=["--quiet"])
    stack = Stack(
        env=base_env(str(redis_proc.extra["url"]), str(sandbox.extra["url"])),
        sandbox_url=str(sandbox.extra["url"]),
        workdir=workdir,
    )
    results: list[Figures] = []
    try:
        for name in names:
            print(f"== {name} ...", flush=True)
            figures = SCENARIOS[name](stack, **sizes[name])
            print(figures.summary(), flush=True)
            results.append(figures)
    finally:
        sandbox.stop()
        redis_proc.stop()
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([f.to_dict() for f in results], indent=2) + "\n")
    if args.keep:
        print(f"\nlogs in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    # The promise: nothing lost; never a second send where the provider lets us prevent it
    # (EmailMassivo idempotency key, SMS Partner status by tag). Others are measured.
    failed = [f.scenario for f in results if f.lost or f.dup("emailmassivo") or f.dup("smspartner")]
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
