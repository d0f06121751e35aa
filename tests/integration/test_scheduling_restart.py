"""1,000 messages scheduled over the next minute, a worker SIGKILLed and restarted midway.

Real redis-server, two ``celery worker`` processes of our own (Redis databases 8/9, so the
session worker never takes their tasks) and the sandbox. One worker is killed with SIGKILL
(main process and pool together) about halfway and a new one started. Every message must be
sent, none before its time, none twice, and on time: within 1 s of its time, except the few
the killed worker had in hand, which come back when the schedule lease ends
(``DELIVERY_SCHEDULE_LEASE_S``, 2 s here) or, if they died mid-send, through the sweeper.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from devstack.processes import Proc, start_worker
from worker.app import client_app
from worker.guard import MAIN_MARK_PREFIX
from worker.models import SmsMessage
from worker.producer import Producer
from worker.providers.smspartner import SmsPartnerDriver
from worker.stores import RedisLedger

from .conftest import SandboxAdmin, wait_ready

pytestmark = pytest.mark.integration

MESSAGES = 1000
_SHOWN = ("state", "attempts", "runs_unfinished", "dead_reason", "error_kind", "sent_at")
"""Ledger fields printed for a delivery that ended without an attempt (no message content)."""
SPREAD_S = 60.0


def _tag(delivery_id: str) -> str:
    model = SmsMessage(provider="smspartner", to=["+33611112222"], text="x")
    tag = SmsPartnerDriver.reconcile_tag(model, delivery_id)
    assert tag is not None
    return tag


def test_1000_scheduled_messages_across_a_sigkilled_worker(
    redis_url: str, stack_env: dict[str, str], sandbox: SandboxAdmin, tmp_path: Path
) -> None:
    env = {
        **stack_env,
        "DELIVERY_BROKER_URL": f"{redis_url}/8",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/9",
        "DELIVERY_SCHEDULE_LEASE_S": "2",
        "DELIVERY_SWEEP_SENDING_AFTER_S": "3",
        "DELIVERY_HTTP_CONNECT_TIMEOUT_S": "1",
        "DELIVERY_LIMITER_MAX_INLINE_WAIT_S": "1",
    }
    shared = redis.Redis.from_url(env["DELIVERY_BROKER_URL"])
    shared.flushdb()
    redis.Redis.from_url(env["DELIVERY_RESULT_BACKEND"]).flushdb()
    client = client_app(env["DELIVERY_BROKER_URL"], env["DELIVERY_RESULT_BACKEND"], name="restart")
    ledger = RedisLedger(shared)
    producer = Producer(app=client, ledger=ledger)
    workers: list[Proc] = []
    try:
        for name in ("sa", "sb"):
            workers.append(start_worker(tmp_path, env, name=name, concurrency=3))
        for proc in workers:
            wait_ready(client, proc)
        # Enqueueing runs ahead of the due times (about 50 a second on a busy 2-core box).
        start = time.time() + 25.0
        due: dict[str, float] = {}
        for i in range(MESSAGES):
            at = start + SPREAD_S * i / MESSAGES
            message = {
                "provider": "smspartner",
                "to": [f"+3367{i:04d}123"],  # none on the sandbox STOP list (…0014)
                "text": "Rappel",
                "send_at": datetime.fromtimestamp(at, UTC).isoformat(),
            }
            due[producer.enqueue("sms", message).id] = at
            assert time.time() < at - 1.0, f"message {i} enqueued too close to its time"
        # SIGKILL one worker (main process and pool) halfway, then start another.
        time.sleep(max(0.0, start + SPREAD_S / 2 - time.time()))
        os.killpg(workers[0].pid, signal.SIGKILL)
        workers[0].popen.wait(timeout=10)
        killed_at = time.time()
        workers.append(start_worker(tmp_path, env, name="sc", concurrency=3))
        wait_ready(client, workers[-1])
        # Wait for every delivery to finish; the sweeper (beat's job) runs every 2 s.
        final: dict[str, Any] = {}
        end = start + SPREAD_S + 60
        while time.time() < end:
            for delivery_id in due.keys() - final.keys():
                record = ledger.get(delivery_id)
                if record is not None and record.final:
                    final[delivery_id] = record
            if len(final) == MESSAGES:
                break
            if time.time() > start + SPREAD_S:
                _sweep(env)
            time.sleep(2.0)
        states = Counter(r.state for r in final.values())
        tags = Counter(m.get("tag") for m in sandbox.messages("smspartner"))
        # Every delivery that was attempted carries when its first attempt started (the gate
        # writes it; SMS Partner reconciliation asks with it as sent_after). One without it
        # ended without an attempt (dead, expired, ...): report its state, never a KeyError.
        unstamped = {i: r for i, r in final.items() if "first_attempt_at" not in r.fields}
        for i, r in unstamped.items():
            shown = {k: r.fields[k] for k in _SHOWN if k in r.fields}
            print(f"[schedule-restart] unattempted {i} due=+{due[i] - start:.1f}s {shown}")
        early = [
            i
            for i, r in final.items()
            if i not in unstamped and float(r.fields["first_attempt_at"]) < due[i]
        ]
        lateness = sorted(
            float(r.fields["sent_at"]) - due[i] for i, r in final.items() if r.state == "sent"
        )
        twice = [i for i in due if tags[_tag(i)] > 1]
        missing = [i for i in due if tags[_tag(i)] == 0]
        late = [x for x in lateness if x > 1.0]
        p50 = statistics.median(lateness) if lateness else 0.0
        p99 = lateness[int(len(lateness) * 0.99) - 1] if lateness else 0.0
        line = (
            f"[schedule-restart] messages={MESSAGES} final={len(final)} states={dict(states)} "
            f"early={len(early)} unattempted={dict(Counter(r.state for r in unstamped.values()))} "
            f"twice={len(twice)} missing={len(missing)} "
            f"late>1s={len(late)} p50={p50:.3f}s p99={p99:.3f}s "
            f"max={lateness[-1] if lateness else 0.0:.3f}s killed_at=+{killed_at - start:.1f}s"
        )
        print(line)
        assert states == {"sent": MESSAGES}, line
        assert not early, line
        assert not unstamped, line
        assert not twice and not missing, line
        assert p99 <= 1.0, line
        # Only what the killed worker had in hand (a pool of 3 plus prefetch) may be late, and
        # by no more than the lease plus a sweep round.
        assert len(late) <= 8, line
        assert lateness[-1] <= 15.0, line
    finally:
        for proc in workers:
            proc.stop()
        producer.close()
        shared.flushdb()
        shared.close()


def _sweep(env: dict[str, str]) -> None:
    """``delivery-worker sweep``, as beat runs it (``tasks.sweep``) every 30 s by default."""
    subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "sweep"],
        env={**os.environ, **env},
        check=False,
        capture_output=True,
        timeout=30,
    )


def test_a_worker_killed_whole_with_a_received_message_does_not_bury_it(
    redis_url: str, stack_env: dict[str, str], sandbox: SandboxAdmin, tmp_path: Path
) -> None:
    """The OOM killer or a ``kill -9`` at a deploy takes a worker's main process down with the
    messages it had received and not yet started. Such a message did nothing wrong: on its
    next delivery it is sent, not set aside as a dead letter (``max_main_process_crashes``)."""
    env = {
        **stack_env,
        "DELIVERY_BROKER_URL": f"{redis_url}/8",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/9",
        "DELIVERY_SCHEDULE_LEASE_S": "2",
    }
    shared = redis.Redis.from_url(env["DELIVERY_BROKER_URL"])
    shared.flushdb()
    client = client_app(env["DELIVERY_BROKER_URL"], env["DELIVERY_RESULT_BACKEND"], name="kill")
    ledger = RedisLedger(shared)
    producer = Producer(app=client, ledger=ledger)
    first = start_worker(tmp_path, env, name="ka", concurrency=1)
    second: Proc | None = None
    try:
        wait_ready(client, first)
        # Freeze the pool: the main process receives the due message and marks it, and no pool
        # process ever starts it. Then the whole worker is killed.
        children = subprocess.run(
            ["pgrep", "-P", str(first.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        assert children
        for child in children:
            os.kill(int(child), signal.SIGSTOP)
        at = time.time() + 3
        message = {
            "provider": "smspartner",
            "to": ["+33670001123"],
            "text": "Rappel",
            "send_at": datetime.fromtimestamp(at, UTC).isoformat(),
        }
        delivery_id = producer.enqueue("sms", message).id
        deadline = time.time() + 20
        while not shared.exists(MAIN_MARK_PREFIX + delivery_id) and time.time() < deadline:
            time.sleep(0.02)
        assert shared.hlen(MAIN_MARK_PREFIX + delivery_id) == 1  # held by the frozen worker
        os.killpg(first.pid, signal.SIGKILL)
        first.popen.wait(timeout=10)

        second = start_worker(tmp_path, env, name="kb", concurrency=1)
        wait_ready(client, second)
        record = None
        deadline = time.time() + 40
        while time.time() < deadline:
            record = ledger.get(delivery_id)
            if record is not None and record.final:
                break
            time.sleep(0.2)
        assert record is not None and record.state == "sent", record and record.fields
        assert delivery_id not in ledger.dead_letters()
        assert float(record.fields["first_attempt_at"]) >= at
    finally:
        first.stop()
        if second is not None:
            second.stop()
        producer.close()
        shared.flushdb()
