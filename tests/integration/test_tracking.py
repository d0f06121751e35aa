"""Delivery tracking over the real stack: redis-server, ``celery worker -B`` (beat runs the
poller), the sandbox's timelines over HTTP, and the application's events task in its own
``celery worker`` (``events_app.py``). On broker databases of their own (5), so the other
tests' workers never take these tasks.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from devstack.processes import Proc, _spawn, start_worker
from worker.app import client_app
from worker.producer import Producer
from worker.stores import RedisLedger
from worker.stores.tracking import RedisTrackingStore
from worker.tasknames import TRACK_EVENTS_TASK

from .conftest import SandboxAdmin, wait_ready

pytestmark = pytest.mark.integration

EVENTS_KEY = "test:app-events"
TIMEOUT_S = 40.0


@pytest.fixture(scope="module")
def track_env(stack_env: dict[str, str], redis_url: str) -> dict[str, str]:
    return {
        **stack_env,
        "DELIVERY_BROKER_URL": f"{redis_url}/5",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/6",
        "DELIVERY_EVENTS_TASK": "trackapp.record_event",
        "DELIVERY_TRACKING_POLL_FIRST_S": "0.5",
        "DELIVERY_TRACKING_POLL_MAX_BACKOFF_S": "1",
        "DELIVERY_TRACKING_POLL_INTERVAL_S": "0.5",
    }


@pytest.fixture(scope="module")
def track_client(track_env: dict[str, str]) -> Celery:
    return client_app(
        track_env["DELIVERY_BROKER_URL"], track_env["DELIVERY_RESULT_BACKEND"], name="track-tests"
    )


@pytest.fixture(scope="module")
def shared(track_env: dict[str, str]) -> redis.Redis:
    client = redis.Redis.from_url(track_env["DELIVERY_BROKER_URL"])
    client.flushdb()
    return client


@pytest.fixture(scope="module")
def stack(
    track_env: dict[str, str],
    track_client: Celery,
    shared: redis.Redis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Proc, Proc]]:
    workdir = Path(tmp_path_factory.mktemp("tracking"))
    worker = start_worker(
        workdir, track_env, name="track", concurrency=2,
        extra_args=["-B", "-s", str(workdir / "beat-schedule")],
    )  # fmt: skip
    here = Path(__file__).parent
    argv = [
        sys.executable, "-m", "celery", "-A", "events_app", "worker", "-Q", "delivery-events",
        "--concurrency", "1", "--hostname", "events@%h", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    env = {**track_env, "EVENTS_BROKER_URL": track_env["DELIVERY_BROKER_URL"]}
    import os

    env = {**os.environ, **env, "PYTHONPATH": str(here)}
    events = _spawn("worker-events", argv, workdir / "events.log", env)
    try:
        wait_ready(track_client, worker)
        wait_ready(track_client, events)
        yield worker, events
    finally:
        events.stop()
        worker.stop()


@pytest.fixture
def tracked(
    stack: tuple[Proc, Proc], sandbox: SandboxAdmin, shared: redis.Redis
) -> Iterator[RedisTrackingStore]:
    yield RedisTrackingStore(shared)


def producer_for(client: Celery, shared: redis.Redis) -> Producer:
    return Producer(app=client, ledger=RedisLedger(shared))


def wait_states(
    store: RedisTrackingStore, delivery_id: str, want: dict[str, str], timeout: float = TIMEOUT_S
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        found = store.status(delivery_id)
        if found is not None:
            seen = {r: s.state.value for r, s in found.recipients.items()}
            if seen == want:
                return found.as_dict()
        time.sleep(0.2)
    raise AssertionError(f"{delivery_id}: wanted {want}, last seen {seen}")


def app_events(shared: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(e) for e in shared.lrange(EVENTS_KEY, 0, -1)]


def wait_app_events(shared: redis.Redis, delivery_id: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + TIMEOUT_S
    mine: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        mine = [e for e in app_events(shared) if e["delivery_id"] == delivery_id]
        if len(mine) >= count:
            time.sleep(1.0)  # nothing more may arrive: exactly once
            return [e for e in app_events(shared) if e["delivery_id"] == delivery_id]
        time.sleep(0.2)
    raise AssertionError(f"{delivery_id}: {len(mine)} application events, wanted {count}")


def test_sms_reaches_delivered_and_not_delivered_by_polling(
    track_client: Celery, shared: redis.Redis, tracked: RedisTrackingStore
) -> None:
    producer = producer_for(track_client, shared)
    message = {"provider": "smspartner", "to": ["+33611000011", "+33600000404"], "text": "hi"}
    result = producer.enqueue("sms", message).get(timeout=TIMEOUT_S)
    assert result["status"] == "sent"
    delivery_id = result["delivery_id"]
    found = wait_states(
        tracked, delivery_id, {"+3361*****11": "delivered", "+3360*****04": "failed"}
    )
    assert found["recipients"]["+3360*****04"]["reason"] == "Not delivered"
    assert {e["source"] for e in found["history"]} == {"send", "poll"}
    # The send task's result stays the send outcome.
    assert track_client.AsyncResult(delivery_id).get(timeout=5)["status"] == "sent"
    # Each event reached the application once: sent x2, then delivered and failed (and the
    # Waiting lookups, if a poll came before the delay).
    events = wait_app_events(shared, delivery_id, 4)
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    assert {(e["recipient"], e["current_state"]) for e in events if e["type"] != "queued"} == {
        ("+3361*****11", "sent"), ("+3360*****04", "sent"),
        ("+3361*****11", "delivered"), ("+3360*****04", "failed"),
    }  # fmt: skip
    assert "+33611000011" not in json.dumps(events)
    deadline = time.monotonic() + 10
    while tracked.watch(delivery_id) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tracked.watch(delivery_id) is None  # polling stopped at the final state


def test_mailpartner_bounce_by_polling(
    track_client: Celery, shared: redis.Redis, tracked: RedisTrackingStore
) -> None:
    producer = producer_for(track_client, shared)
    message = {
        "provider": "mailpartner",
        "to": [{"email": "ann@example.com"}, {"email": "bounce7@example.com"}],
        "subject": "s",
        "html": "<p>x</p>",
    }
    result = producer.enqueue("email", message).get(timeout=TIMEOUT_S)
    assert result["status"] == "sent"
    wait_states(
        tracked,
        result["delivery_id"],
        {"a***@example.com": "delivered", "b***@example.com": "bounced"},
    )


def test_postal_delivered_held_and_failed_by_polling(
    track_client: Celery, shared: redis.Redis, tracked: RedisTrackingStore, sandbox: SandboxAdmin
) -> None:
    sandbox.http.post("/_admin/config", json={"postal_delivery_delay_s": 1.0}).raise_for_status()
    producer = producer_for(track_client, shared)
    message = {
        "provider": "postal",
        "to": [{"email": "ann@example.com"}, {"email": "hold@example.com"},
               {"email": "hardfail@example.com"}],
        "from": {"email": "shop@example.org"},
        "subject": "s",
        "text": "t",
    }  # fmt: skip
    result = producer.enqueue("email", message).get(timeout=TIMEOUT_S)
    assert result["status"] == "sent"
    delivery_id = result["delivery_id"]
    found = wait_states(
        tracked,
        delivery_id,
        {
            "a***@example.com": "delivered",
            "h***@example.com": "held",
            "h***@example.com#2": "failed",
        },
    )
    held = found["recipients"]["h***@example.com"]
    assert "held" in (held["reason"] or "")
    assert "hold@example.com" not in json.dumps(found)
    # a hold is not final: Postal may release it (docs/providers/postal.md §4.5)
    assert found["polling"]


def test_receiver_events_duplicates_and_out_of_order(
    track_client: Celery,
    shared: redis.Redis,
    tracked: RedisTrackingStore,
    track_env: dict[str, str],
) -> None:
    producer = producer_for(track_client, shared)
    message = {
        "provider": "postal",
        "to": [{"email": "zed@example.com"}],
        "from": {"email": "shop@example.org"},
        "subject": "s",
        "text": "t",
    }
    result = producer.enqueue("email", message).get(timeout=TIMEOUT_S)
    delivery_id = result["delivery_id"]
    (message_id,) = result["provider_message_ids"].values()
    wait_states(tracked, delivery_id, {"z***@example.com": "delivered"})

    def event(event_id: str, kind: str) -> dict[str, Any]:
        # As the receiver publishes them: provider + provider message id, no delivery id.
        return {
            "event_id": event_id, "type": kind, "provider": "postal",
            "provider_message_id": message_id, "recipient": "z***@example.com",
            "occurred_at": time.time(), "source": "webhook", "raw": {"event": kind},
        }  # fmt: skip

    bare = Celery("receiver", broker=track_env["DELIVERY_BROKER_URL"])
    bare.conf.update(task_serializer="json")
    bare.send_task(TRACK_EVENTS_TASK, args=[[event("u-1", "bounced"), event("u-1", "bounced")]])
    bare.send_task(TRACK_EVENTS_TASK, args=[[event("u-0", "sent")]])  # late
    bare.send_task(TRACK_EVENTS_TASK, args=[[event("u-1", "bounced")]])  # a provider retry
    bare.send_task(TRACK_EVENTS_TASK, args=["not a list"])  # refused, nothing changes
    found = wait_states(tracked, delivery_id, {"z***@example.com": "bounced"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = tracked.status(delivery_id).as_dict()  # type: ignore[union-attr]
        if [e["event_id"] for e in found["history"]].count("u-0") == 1:
            break
        time.sleep(0.2)
    kinds = [(e["event_id"], e["type"]) for e in found["history"] if e["source"] == "webhook"]
    assert sorted(kinds) == [("u-0", "sent"), ("u-1", "bounced")]
    assert found["recipients"]["z***@example.com"]["state"] == "bounced"
    # sent (send), delivered (poll), bounced, sent (late): each once.
    events = wait_app_events(shared, delivery_id, 4)
    assert sorted((e["type"], e["current_state"]) for e in events if e["source"] != "poll") == [
        ("bounced", "bounced"), ("sent", "bounced"), ("sent", "sent")]  # fmt: skip
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))


def test_send_cli_waits_until_delivered(
    track_env: dict[str, str], tracked: RedisTrackingStore
) -> None:
    """``delivery-worker send --wait --until delivered``, a real subprocess: the first line is
    the state the poller found, not the send outcome."""
    import os
    import subprocess

    argv = [sys.executable, "-m", "worker.ops.cli", "send", "sms", "--to", "+33611000012"]
    argv += ["--text", "hi", "--wait", "--until", "delivered", "--timeout", str(TIMEOUT_S)]
    done = subprocess.run(
        argv, env={**os.environ, **track_env}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    first, _, rest = done.stdout.partition("\n")
    assert first == "delivered"
    report = json.loads(rest)
    assert report["result"]["status"] == "sent"
    assert report["delivery_state"]["recipients"]["+3361*****12"]["state"] == "delivered"


def test_poll_rounds_send_no_task_events(
    track_client: Celery, shared: redis.Redis, tracked: RedisTrackingStore
) -> None:
    """Flower lists what task events say: the sends, not beat's polling rounds (twice a second
    here). The worker runs with -E; an SMS is followed to delivered, which takes poll rounds."""
    seen: list[dict[str, Any]] = []
    with track_client.connection_for_read() as conn:
        receiver = track_client.events.Receiver(conn, handlers={"*": seen.append})
        thread = threading.Thread(target=receiver.capture, kwargs={"wakeup": False}, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while not seen:  # the worker's heartbeat: the receiver's queue is bound
                assert time.monotonic() < deadline, "no event from the worker"
                time.sleep(0.05)
            producer = producer_for(track_client, shared)
            result = producer.enqueue("sms", {"provider": "smspartner", "to": ["+33611000013"],
                                              "text": "hi"})  # fmt: skip
            delivery_id = str(result.id)
            wait_states(tracked, delivery_id, {"+3361*****13": "delivered"})
            deadline = time.monotonic() + TIMEOUT_S
            while not any(e.get("uuid") == delivery_id for e in seen):
                assert time.monotonic() < deadline, "the send's task-received event never came"
                time.sleep(0.1)
        finally:
            receiver.should_stop = True
            thread.join(timeout=10)
    names = {e.get("name") for e in seen if e.get("type") == "task-received"}
    assert "tasks.track_poll" not in names, names
