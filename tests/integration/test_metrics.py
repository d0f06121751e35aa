"""/metrics from real workers: sent, failed, 429 and parked through the sandbox, counted across
two prefork children, after a child is SIGKILLed and after the worker restarts; the dashboard
and the alert rules use only metrics a real scrape has."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from celery import Celery
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from devstack import dashboard
from devstack.processes import Proc, free_port, start_metrics_exporter, start_worker
from worker.producer import Producer
from worker.stores import RedisLedger

from .conftest import SandboxAdmin, wait_ready

pytestmark = pytest.mark.integration

TIMEOUT_S = 40
QUEUE = "metricsq"
ROOT = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    text = httpx.get(url, timeout=10).raise_for_status().text
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def email(provider: str, n: int, to: str | None = None) -> dict[str, Any]:
    return {
        "provider": provider,
        "to": [{"email": to or f"customer{n}@example.com"}],
        "from": {"email": "shop@example.org"},
        "subject": f"Order {n}",
        "text": "Thanks",
    }


def wait_final(ledger: RedisLedger, ids: list[str], states: set[str]) -> dict[str, str]:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        current = {d: (r.state if (r := ledger.get(d)) else "missing") for d in ids}
        if all(s in states for s in current.values()) or time.monotonic() > deadline:
            return current
        time.sleep(0.1)


def pool_children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def sent_per_pid(mp_dir: Path) -> dict[int, float]:
    """What each process's own counter file says about postal sends."""
    per_pid: dict[int, float] = {}
    for path in mp_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for key, val, _ts, _pos in MmapedDict.read_all_values_from_file(str(path)):
            _metric, name, labels, _help = json.loads(key)
            if (
                name == "delivery_messages_finished_total"
                and labels.get("provider") == "postal"
                and labels.get("status") == "sent"
            ):
                per_pid[pid] = per_pid.get(pid, 0.0) + val
    return per_pid


@pytest.fixture(scope="module")
def metrics_env(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    mp_dir = tmp_path_factory.mktemp("prom-multiproc")
    # The 429's 1 s hold is waited at the gate, not sent back into a lane: lanes are shared by
    # every worker on the session's Redis, and another test's worker (its metrics elsewhere)
    # could take it from there.
    return {
        **stack_env,
        "PROMETHEUS_MULTIPROC_DIR": str(mp_dir),
        "DELIVERY_QUEUES": QUEUE,
        "DELIVERY_LIMITER_AHEAD_S": "3",
    }


@pytest.fixture(scope="module")
def exporter(
    metrics_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    proc = start_metrics_exporter(
        tmp_path_factory.mktemp("exporter"), metrics_env, port=free_port()
    )
    yield proc
    proc.stop()


def start_metrics_worker(env: dict[str, str], client: Celery, workdir: Path, name: str) -> Proc:
    # -O fair: each message goes to an idle child, so a batch spreads over both children.
    proc = start_worker(workdir, env, name=name, concurrency=2, extra_args=["-O", "fair"])
    wait_ready(client, proc)
    return proc


def test_metrics_from_real_workers(
    metrics_env: dict[str, str],
    exporter: Proc,
    client: Celery,
    producer: Producer,
    sandbox: SandboxAdmin,
    ledger: RedisLedger,
    tmp_path: Path,
) -> None:
    url = str(exporter.extra["url"])
    mp_dir = Path(metrics_env["PROMETHEUS_MULTIPROC_DIR"])
    worker = start_metrics_worker(metrics_env, client, tmp_path, "metrics1")
    try:
        sandbox.set_balance("smspartner", 0)
        # EmailMassivo answers the first send 429 (no Retry-After: the worker waits 1 s).
        sandbox.set_faults(
            [{"provider": "emailmassivo", "path": "/send", "action": "status", "status": 429,
              "first_n": 1}]
        )  # fmt: skip
        ids = {
            "postal": [
                producer.enqueue("email", email("postal", n), queue=QUEUE).id for n in range(8)
            ],
            "throttled_then_sent": [
                producer.enqueue("email", email("emailmassivo", 100), queue=QUEUE).id
            ],
            "rejected": [
                producer.enqueue(
                    "email", email("emailmassivo", 101, "unsubscribed1@example.com"), queue=QUEUE
                ).id
            ],
            "mailpartner": [producer.enqueue("email", email("mailpartner", 102), queue=QUEUE).id],
            "parked": [
                producer.enqueue("sms", {"to": ["+33612345678"], "text": "hi"}, queue=QUEUE).id
            ],
        }
        every = [d for group in ids.values() for d in group]
        states = wait_final(ledger, every, {"sent", "failed", "parked"})
        assert [states[d] for d in ids["postal"]] == ["sent"] * 8
        assert states[ids["throttled_then_sent"][0]] == "sent"
        assert states[ids["rejected"][0]] == "failed"
        assert states[ids["mailpartner"][0]] == "sent"
        assert states[ids["parked"][0]] == "parked"
        # The balance check on beat: run it now (it records the balances the gauge shows).
        client.send_task("tasks.check_balances", queue=QUEUE).get(timeout=TIMEOUT_S)

        s = scrape(url)
        finished = "delivery_messages_finished_total"
        assert value(s, finished, provider="postal", status="sent", kind="none") == 8
        assert value(s, finished, provider="emailmassivo", status="sent") == 1
        assert (
            value(s, finished, provider="emailmassivo", status="failed", kind="recipient_rejected")
            == 1
        )
        assert value(s, finished, provider="mailpartner", status="sent") == 1
        assert value(s, "delivery_messages_parked_total", provider="smspartner") == 1
        requests = "delivery_provider_requests_total"
        assert value(s, requests, provider="postal", status="2xx", kind="accepted") == 8
        assert value(s, requests, provider="emailmassivo", status="4xx", kind="throttled") == 1
        assert value(s, requests, provider="emailmassivo", status="2xx", kind="accepted") == 1
        assert value(s, requests, provider="emailmassivo", kind="recipient_rejected") == 1
        assert value(s, requests, provider="smspartner", kind="account_blocked") == 1
        assert value(s, "delivery_provider_throttled_total", provider="emailmassivo") == 1
        assert value(s, "delivery_limiter_holds_total", provider="emailmassivo") == 1
        assert value(s, "delivery_limiter_hold_seconds_total", provider="emailmassivo") == 1.0
        assert value(s, "delivery_provider_request_duration_seconds_count", provider="postal") == 8
        assert value(s, "delivery_enqueue_to_accept_seconds_count", provider="postal") == 8
        assert value(s, "delivery_limiter_wait_seconds_count", provider="emailmassivo") == 3
        # Mail Partner's cost is credits (one per mail, docs/providers/mailpartner.md §2.2),
        # whatever currency it names.
        assert value(s, "delivery_cost_total", provider="mailpartner", unit="credits") == 1.0
        # Shared state, read from Redis at scrape time.
        assert value(s, "delivery_shared_state_up") == 1
        assert value(s, "delivery_provider_paused", provider="smspartner") == 1
        assert value(s, "delivery_provider_paused", provider="postal") == 0
        assert value(s, "delivery_parked_messages", provider="smspartner") == 1
        assert value(s, "delivery_breaker_state", provider="emailmassivo") == 0
        assert value(s, "delivery_queue_depth", queue=QUEUE) == 0
        assert value(s, "delivery_dead_letters") == 0
        # EmailMassivo's 10/s window: the sends of the last second are counted.
        assert ("delivery_limiter_usage_ratio", frozenset(
            {("provider", "emailmassivo"), ("limit", "send:10/1s")})) in s  # fmt: skip
        balances = {ls: v for (n, ls), v in s.items() if n == "delivery_credit_balance"}
        assert balances[frozenset(
            {("provider", "smspartner"), ("unit", "credits"), ("currency", "")})] == 0  # fmt: skip
        assert any(dict(ls)["provider"] == "mailpartner" and v > 0 for ls, v in balances.items())

        # Across two prefork children: each wrote its own file, the scrape sums them. The
        # pool hands the batch to whichever child is idle; should one child have taken every
        # postal send, more are sent until both have counted some.
        postal_sent = 8
        for _ in range(5):
            per_pid = sent_per_pid(mp_dir)
            children = pool_children(worker.pid)
            if len([p for p in per_pid if p in children and per_pid[p] > 0]) == 2:
                break
            extra = [
                producer.enqueue("email", email("postal", n), queue=QUEUE).id for n in range(6)
            ]
            assert set(wait_final(ledger, extra, {"sent"}).values()) == {"sent"}
            postal_sent += 6
        assert len([p for p in per_pid if p in children and per_pid[p] > 0]) == 2, per_pid
        assert sum(per_pid.values()) == postal_sent
        s = scrape(url)
        assert value(s, finished, provider="postal", status="sent") == postal_sent

        # SIGKILL a child that counted sends: its counts stay in the scrape.
        victim = max(per_pid, key=lambda p: per_pid[p])
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            victim in (kids := pool_children(worker.pid)) or len(kids) < 2
        ):
            time.sleep(0.1)
        assert victim not in pool_children(worker.pid)
        s = scrape(url)
        assert value(s, finished, provider="postal", status="sent") == postal_sent
        more = [producer.enqueue("email", email("postal", n), queue=QUEUE).id for n in range(4)]
        assert set(wait_final(ledger, more, {"sent"}).values()) == {"sent"}
        s = scrape(url)
        postal_sent += 4
        assert value(s, finished, provider="postal", status="sent") == postal_sent
        assert value(s, requests, provider="postal", status="2xx") == postal_sent

        # `delivery-worker top` shows the same figures (one frame, read from the exporter).
        top = subprocess.run(
            [sys.executable, "-m", "worker.ops.cli", "top", "--url", url, "--once",
             "--interval", "0.2"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "250"},
        )  # fmt: skip
        assert top.returncode == 0, top.stderr
        postal_line = next(line for line in top.stdout.splitlines() if "postal" in line)
        assert re.search(rf"\b{postal_sent}\b", postal_line), postal_line
        sms_line = next(line for line in top.stdout.splitlines() if "smspartner" in line)
        assert "PAUSED" in sms_line
        # Without --url it reads this host's directory and Redis itself: the same figures.
        local = subprocess.run(
            [sys.executable, "-m", "worker.ops.cli", "top", "--once", "--interval", "0.2"],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, **metrics_env, "COLUMNS": "250"},
        )  # fmt: skip
        assert local.returncode == 0, local.stderr
        postal_line = next(line for line in local.stdout.splitlines() if "postal" in line)
        assert re.search(rf"\b{postal_sent}\b", postal_line), postal_line
    finally:
        worker.stop()

    # The worker is gone: /metrics still answers, with every count.
    s = scrape(url)
    assert value(s, finished, provider="postal", status="sent") == postal_sent
    # A new worker on the same directory adds to them.
    worker = start_metrics_worker(metrics_env, client, tmp_path, "metrics2")
    try:
        again = [producer.enqueue("email", email("postal", n), queue=QUEUE).id for n in range(2)]
        assert set(wait_final(ledger, again, {"sent"}).values()) == {"sent"}
        s = scrape(url)
        assert value(s, finished, provider="postal", status="sent") == postal_sent + 2
    finally:
        worker.stop()

    # Every metric the dashboard and the alert rules use is in this real scrape.
    scraped = {name for name, _ in s}
    used = metric_names_in_dashboard() | metric_names_in_rules()
    assert used, "the dashboard and the rules name no metric"
    assert used <= scraped, sorted(used - scraped)


_METRIC = re.compile(r"\b(delivery_[a-z0-9_]+)")


def metric_names_in_dashboard() -> set[str]:
    data = json.loads((ROOT / dashboard.DASHBOARD_PATH).read_text())
    exprs = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    return {m for e in exprs for m in _METRIC.findall(e)}


def metric_names_in_rules() -> set[str]:
    data = yaml.safe_load((ROOT / "monitoring" / "alerts.yml").read_text())
    exprs = [r["expr"] for g in data["groups"] for r in g["rules"]]
    return {m for e in exprs for m in _METRIC.findall(e)}


def test_throttle_and_hold_series_exist_at_zero_from_worker_start(
    metrics_env: dict[str, str], exporter: Proc, client: Celery, tmp_path: Path
) -> None:
    """Dashboards show 0, not "No data", for a provider that was never throttled: a freshly
    started worker has each configured provider's throttle and hold series."""
    from worker.providers import DRIVERS

    url = str(exporter.extra["url"])
    wanted = set()
    for provider, driver in DRIVERS.items():
        wanted |= {
            ("delivery_provider_throttled_total", frozenset(
                {"provider": provider, "channel": driver.channel}.items())),
            ("delivery_limiter_holds_total", frozenset({"provider": provider}.items())),
            ("delivery_limiter_hold_seconds_total", frozenset({"provider": provider}.items())),
        }  # fmt: skip
    worker = start_metrics_worker(metrics_env, client, tmp_path, "metrics0")
    try:
        deadline = time.monotonic() + 30  # the pool's children start after the ping answers
        missing = wanted - scrape(url).keys()
        while missing and time.monotonic() < deadline:
            time.sleep(0.2)
            missing = wanted - scrape(url).keys()
    finally:
        worker.stop()
    assert not missing, sorted(missing)
