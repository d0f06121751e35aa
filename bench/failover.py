"""Redis high availability: a Sentinel failover mid-flow, and waiting on results across a restart.

Real processes only (``devstack``): redis-server, ``redis-server --sentinel``, the provider
sandbox over a socket and ``celery -A worker worker`` subprocesses.

``sentinel-failover``
    A master, a replica and three sentinels; broker, result backend and shared state all
    ``sentinel://``. A producer enqueues a stream of messages with
    ``DELIVERY_REDIS_WAIT_REPLICAS=1`` (an enqueue returns once the replica holds it) and
    retries a refused enqueue with the same idempotency key. The master is SIGKILLed mid-flow;
    the sentinels promote the replica; the old master is started again and becomes the new
    replica. Counted against the deliveries
    the producer was told were accepted: ``lost`` (never accepted by the sandbox) and
    ``duplicated`` (copies beyond the first, from the sandbox's log), with the sends in flight
    at the kill and the pool slots (the most sends that can be in flight) beside them.
``results-restart``
    One Redis (AOF ``always``), SIGKILLed and restarted on the same port while a client waits
    on many results. Two waiters at once: ``AsyncResult.get()`` on each result in turn (Celery's
    pub/sub result consumer) and the ledger's (:meth:`worker.producer.Producer.wait_many`).
    Counted: results stored as SUCCESS in the backend that each waiter did not return before
    its deadline.

``tests/integration/test_redis_ha.py`` runs both at CI size. Here, larger and repeated::

    python bench/failover.py [--messages 300] [--results 150] [--runs 3] [--scenarios ...]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fault_soak as soak
import redis
import structlog

from devstack.processes import (
    Proc,
    free_port,
    sandbox_env,
    start_redis,
    start_sandbox,
    start_worker,
)
from devstack.sentinel import RedisGroup, start_redis_group
from worker.app import client_app
from worker.config import Settings
from worker.durable_wait import WaitTimeout
from worker.ops.operations import Operations
from worker.producer import Producer
from worker.redis_client import shared_redis
from worker.stores import FINAL_STATES, RedisLedger
from worker.stores.keys import DEFAULT_KEYS

__all__ = [
    "FailoverFigures",
    "ResultFigures",
    "scenario_results_restart",
    "scenario_sentinel_failover",
]


@dataclass
class FailoverFigures:
    acknowledged: int
    lost: int
    duplicated: int
    dup_by_provider: dict[str, int]
    in_flight_at_kill: int
    """Acknowledged deliveries in ``sending`` (a send under way) just before the kill."""
    pool_slots: int
    """Worker processes times concurrency: the most sends that can be in flight at once."""
    states: dict[str, int]
    refused: dict[str, int]
    """Enqueue attempts refused (by exception type) and retried with the same key."""
    failover_s: float
    elapsed_s: float
    checks: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        dup = " ".join(f"{p}={n}" for p, n in self.dup_by_provider.items())
        states = ",".join(f"{s}:{n}" for s, n in sorted(self.states.items()))
        refused = ",".join(f"{k}:{n}" for k, n in sorted(self.refused.items())) or "none"
        checks = " ".join(f"{k}={v}" for k, v in self.checks.items())
        return (
            f"[sentinel-failover] acknowledged={self.acknowledged} lost={self.lost} "
            f"duplicated={self.duplicated} in_flight_at_kill={self.in_flight_at_kill} "
            f"pool_slots={self.pool_slots} failover={self.failover_s:.1f}s | dup by provider: "
            f"{dup} | ledger: {states} | refused then retried: {refused} | {checks} | "
            f"{self.elapsed_s:.1f}s"
        )


@dataclass
class ResultFigures:
    results: int
    stored_success: int
    """Results the backend holds as SUCCESS at the end."""
    celery_returned: int
    celery_missed: int
    """Stored as SUCCESS, yet not returned by ``AsyncResult.get()`` (an error or its timeout)."""
    celery_error: str
    celery_first_error: str
    ledger_returned: int
    ledger_missed: int
    elapsed_s: float

    def summary(self) -> str:
        return (
            f"[results-restart] results={self.results} stored_success={self.stored_success} | "
            f"AsyncResult.get: returned={self.celery_returned} "
            f"missed={self.celery_missed} ({self.celery_error or 'no error'}"
            + (f": {self.celery_first_error!r}" if self.celery_first_error else "")
            + ") | "
            f"ledger wait: returned={self.ledger_returned} missed={self.ledger_missed} | "
            f"{self.elapsed_s:.1f}s"
        )


def _states(client: redis.Redis, ids: Sequence[str]) -> dict[str, str]:
    pipe = client.pipeline(transaction=False)
    for delivery_id in ids:
        pipe.hget(DEFAULT_KEYS.delivery(delivery_id), "state")
    return {
        d: (s.decode() if isinstance(s, bytes) else "missing")
        for d, s in zip(ids, pipe.execute(), strict=True)
    }


def _wait_final(
    client: redis.Redis, ids: Sequence[str], timeout_s: float, tick: Callable[[], None]
) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        tick()
        with contextlib.suppress(redis.RedisError):
            states = _states(client, ids)
            if all(s in FINAL_STATES for s in states.values()):
                break
        time.sleep(0.3)
    return states


def _stop_all(procs: Sequence[Proc]) -> None:
    for proc in reversed(procs):
        proc.stop(timeout_s=30)


def scenario_sentinel_failover(
    sandbox_url: str,
    workdir: Path,
    *,
    messages: int = 150,
    workers: int = 2,
    concurrency: int = 3,
    rate_per_s: float = 25.0,
    latency_ms: int = 100,
    wait_replicas: int = 1,
    timeout_s: float = 180.0,
) -> FailoverFigures:
    started = time.monotonic()
    run = uuid.uuid4().hex[:8]
    group: RedisGroup = start_redis_group(workdir / f"group-{run}")
    procs: list[Proc] = []
    admin = soak.SandboxAdmin(sandbox_url)
    try:
        env = {
            **soak.FAST_ENV,
            **sandbox_env(sandbox_url),
            "DELIVERY_BROKER_URL": group.url(0),
            "DELIVERY_RESULT_BACKEND": group.url(1),
            "DELIVERY_REDIS_MASTER_NAME": group.master_name,
            "DELIVERY_SWEEP_QUEUED_AFTER_S": "4",
            "DELIVERY_SWEEP_SENDING_AFTER_S": "4",
        }
        settings = Settings.from_env(env)
        client = client_app(group.url(0), group.url(1), name=f"ha-{run}", settings=settings)
        shared = shared_redis(settings)
        producer = Producer(
            app=client,
            ledger=RedisLedger(shared),
            wait_replicas=wait_replicas,
            wait_timeout_ms=2000,
        )
        admin.reset()
        for i in range(workers):
            procs.append(start_worker(workdir, env, name=f"ha{i}x{run}", concurrency=concurrency))
        soak.wait_ready(client, procs)
        admin.set_faults([{"provider": "*", "action": "latency", "delay_ms": latency_ms}])
        planned = soak.build_workload(run, messages)
        for p in planned:
            # A refused enqueue is retried with the same key: the ledger never makes two.
            p.message["idempotency_key"] = p.token
        refused: Counter[str] = Counter()
        midway = threading.Event()

        def produce() -> None:
            for p in planned:
                give_up = time.monotonic() + 60
                while time.monotonic() < give_up:
                    try:
                        p.delivery_id = producer.enqueue(p.channel, p.message).id
                        break
                    except Exception as exc:  # told: not accepted; try again
                        refused[type(exc).__name__] += 1
                        time.sleep(0.2)
                if p.index == messages // 3:
                    midway.set()
                time.sleep(1.0 / rate_per_s)
            midway.set()

        thread = threading.Thread(target=produce, name="ha-producer", daemon=True)
        thread.start()
        midway.wait(timeout=120)
        acked_now = [p.delivery_id for p in planned if p.delivery_id]
        in_flight = sum(1 for s in _states(shared, acked_now).values() if s == "sending")
        # An application waiting on these across the failover, on the ledger (Sentinel client).
        waited: dict[str, Any] = {}

        def ledger_wait() -> None:
            try:
                waited.update(producer.wait_many(acked_now, timeout_s))
            except WaitTimeout as exc:
                waited.update(exc.settled)

        waiter = threading.Thread(target=ledger_wait, name="ha-ledger-wait", daemon=True)
        waiter.start()
        kill_at = time.monotonic()
        old = group.kill_master()
        group.wait_failover(old)
        failover_s = time.monotonic() - kill_at
        group.restart_server(old)  # comes back as the new master's replica
        thread.join(timeout=timeout_s)
        ops = Operations.on_redis(shared, settings=settings, app=client)
        swept: Counter[str] = Counter()
        last = [0.0]

        def sweep() -> None:
            # What beat's tasks.sweep does every DELIVERY_SWEEP_INTERVAL_S, every second.
            if time.monotonic() - last[0] >= 1.0:
                last[0] = time.monotonic()
                with contextlib.suppress(redis.RedisError):
                    swept.update(ops.sweep())

        ids = [p.delivery_id for p in planned if p.delivery_id]
        states = _wait_final(shared, ids, timeout_s, sweep)
        waiter.join(timeout=timeout_s)
        providers, _copies = soak.tally(admin, planned)
        figures = FailoverFigures(
            acknowledged=len(ids),
            lost=sum(f.lost for f in providers.values()),
            duplicated=sum(f.duplicated for f in providers.values()),
            dup_by_provider={p: f.duplicated for p, f in providers.items()},
            in_flight_at_kill=in_flight,
            pool_slots=workers * concurrency,
            states=dict(Counter(states.values())),
            refused=dict(refused),
            failover_s=failover_s,
            elapsed_s=time.monotonic() - started,
            checks={
                "producer_done": not thread.is_alive(),
                "workers_alive": all(p.alive() for p in procs),
                "swept": swept["requeued"],
                "new_master_replicas": group._replicas_online(group.master_port()),
                "waited_across_failover": len(acked_now),
                "returned_by_ledger_wait": len(waited),
            },
        )
        client.close()
        shared.close()
        return figures
    finally:
        _stop_all(procs)
        with contextlib.suppress(Exception):
            admin.reset()
        admin.close()
        group.stop()


def scenario_results_restart(
    sandbox_url: str,
    workdir: Path,
    *,
    results: int = 100,
    workers: int = 2,
    concurrency: int = 4,
    latency_ms: int = 300,
    kill_after: float = 0.2,
    down_s: float = 0.3,
    wait_s: float = 60.0,
) -> ResultFigures:
    """SIGKILL Redis (AOF on) while two waiters wait on ``results`` results; restart it."""
    started = time.monotonic()
    run = uuid.uuid4().hex[:8]
    port = free_port()
    redis_dir = workdir / f"results-{run}"
    server = start_redis(redis_dir, port)
    url = str(server.extra["url"])
    procs: list[Proc] = []
    handles: list[Any] = []
    holder = {"server": server}  # the killer thread replaces it with the restarted one
    admin = soak.SandboxAdmin(sandbox_url)
    try:
        env = {
            **soak.FAST_ENV,
            **sandbox_env(sandbox_url),
            "DELIVERY_BROKER_URL": f"{url}/0",
            "DELIVERY_RESULT_BACKEND": f"{url}/1",
            "DELIVERY_SWEEP_QUEUED_AFTER_S": "4",
            "DELIVERY_SWEEP_SENDING_AFTER_S": "4",
        }
        settings = Settings.from_env(env)
        client = client_app(f"{url}/0", f"{url}/1", name=f"results-{run}", settings=settings)
        shared = redis.Redis.from_url(f"{url}/0")
        producer = Producer(app=client, ledger=RedisLedger(shared), wait_replicas=0)
        admin.reset()
        for i in range(workers):
            procs.append(start_worker(workdir, env, name=f"res{i}x{run}", concurrency=concurrency))
        soak.wait_ready(client, procs)
        admin.set_faults([{"provider": "*", "action": "latency", "delay_ms": latency_ms}])
        planned = soak.build_workload(run, results, providers=("smspartner", "postal"))
        handles += [producer.enqueue(p.channel, p.message) for p in planned]
        ids = [h.id for h in handles]

        celery_got: dict[str, Any] = {}
        first_error = ""
        celery_error: list[str] = []
        ledger_got: dict[str, Any] = {}
        ledger_done = threading.Event()
        waiting = threading.Event()

        def ledger_wait() -> None:
            try:
                ledger_got.update(producer.wait_many(ids, wait_s))
            except WaitTimeout as exc:
                ledger_got.update(exc.settled)
            finally:
                ledger_done.set()

        def kill_and_restart() -> None:
            # Kill once both wait and a share of the results is in: the rest are stored
            # around the outage.
            waiting.wait(timeout=wait_s)
            with redis.Redis.from_url(f"{url}/0") as probe:
                deadline = time.monotonic() + wait_s
                while time.monotonic() < deadline:
                    done = sum(1 for s in _states(probe, ids).values() if s in FINAL_STATES)
                    if done >= kill_after * results:
                        break
                    time.sleep(0.05)
            holder["server"].stop(signal.SIGKILL)
            time.sleep(down_s)
            holder["server"] = start_redis(redis_dir, port)
            # What beat's tasks.sweep does: re-enqueue what the outage stranded.
            ops = Operations.on_redis(shared, settings=settings, app=client)
            while not ledger_done.wait(1.0):
                with contextlib.suppress(redis.RedisError):
                    ops.sweep()

        helpers = [
            threading.Thread(target=ledger_wait, name="ledger-wait", daemon=True),
            threading.Thread(target=kill_and_restart, name="killer", daemon=True),
        ]
        for t in helpers:
            t.start()
        # Celery's wait runs here: its result consumer belongs to the thread that enqueued.
        # An application blocked in AsyncResult.get(), one result after the other, each up to
        # the common deadline: an error or a timeout is a result it did not get.
        deadline = time.monotonic() + wait_s
        waiting.set()
        for handle in handles:
            try:
                value = handle.get(
                    timeout=max(0.1, deadline - time.monotonic()),
                    propagate=False,
                    disable_sync_subtasks=False,
                )
                celery_got[handle.id] = value
            except Exception as exc:  # a timeout, or the backend's own error
                celery_error.append(type(exc).__name__)
                first_error = first_error or str(exc)[:120]
        for t in helpers:
            t.join(timeout=wait_s + 30)
        backend = redis.Redis.from_url(f"{url}/1")
        stored = set()
        for delivery_id, raw in zip(
            ids, backend.mget([f"celery-task-meta-{d}" for d in ids]), strict=True
        ):
            if raw and b'"status": "SUCCESS"' in raw:
                stored.add(delivery_id)
        backend.close()
        figures = ResultFigures(
            results=len(ids),
            stored_success=len(stored),
            celery_returned=len(celery_got),
            celery_missed=len(stored - set(celery_got)),
            celery_error=",".join(f"{k}:{n}" for k, n in Counter(celery_error).items()),
            celery_first_error=first_error,
            ledger_returned=len(ledger_got),
            ledger_missed=len(stored - set(ledger_got)),
            elapsed_s=time.monotonic() - started,
        )
        client.close()
        shared.close()
        return figures
    finally:
        # An AsyncResult unsubscribes when freed: let that happen while Redis still runs.
        handles.clear()
        gc.collect()
        _stop_all(procs)
        with contextlib.suppress(Exception):
            admin.reset()
        admin.close()
        holder["server"].stop()
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=300, help="sentinel-failover messages")
    parser.add_argument("--results", type=int, default=150, help="results-restart results")
    parser.add_argument("--runs", type=int, default=3, help="repeat each scenario (medians)")
    parser.add_argument("--scenarios", default="sentinel-failover,results-restart")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    workdir = Path(tempfile.mkdtemp(prefix="failover-"))
    sandbox = start_sandbox(workdir, extra_args=["--quiet"])
    url = str(sandbox.extra["url"])
    failed = False
    try:
        if "sentinel-failover" in names:
            runs = [
                scenario_sentinel_failover(url, workdir, messages=args.messages)
                for _ in range(args.runs)
            ]
            for f in runs:
                print(f.summary(), flush=True)
                failed |= f.lost > 0 or f.duplicated > f.pool_slots
            print(
                f"sentinel-failover medians: lost={statistics.median(f.lost for f in runs)} "
                f"duplicated={statistics.median(f.duplicated for f in runs)} "
                f"failover={statistics.median(f.failover_s for f in runs):.1f}s"
            )
        if "results-restart" in names:
            res = [
                scenario_results_restart(url, workdir, results=args.results)
                for _ in range(args.runs)
            ]
            for r in res:
                print(r.summary(), flush=True)
                failed |= r.ledger_missed > 0
            print(
                "results-restart medians: "
                f"AsyncResult missed={statistics.median(r.celery_missed for r in res)} "
                f"ledger wait missed={statistics.median(r.ledger_missed for r in res)} "
                f"of {statistics.median(r.stored_success for r in res)} stored"
            )
    finally:
        sandbox.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
