"""Delivery tracking end to end, push side: every part a real process.

redis-server, ``celery worker -B`` (the send tasks, ``delivery.track_events``,
``delivery.track_hint``, beat's poller), the sandbox process (its timeline pushes signed Postal
webhooks and SMS/Voice callbacks by itself), the receiver (``delivery-worker receiver``,
uvicorn) and the application's events task in its own worker (``events_app.py``). A message is
sent through the worker; what the provider pushes goes through the receiver to the worker and
the tracking store, and on to the application.

Polling is pushed out of the way (``DELIVERY_TRACKING_POLL_FIRST_S`` = 600 s): every state
change seen here came from a push (a webhook, or a callback hint and the lookup it triggers).
On broker databases of their own (8, 9).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery

from delivery_sandbox.webhooks import PostalSigner
from devstack.processes import Proc, _spawn, start_worker
from devstack.receiver import start_receiver
from worker.app import client_app
from worker.producer import Producer
from worker.stores import RedisLedger
from worker.stores.tracking import RedisTrackingStore
from worker.tracking.callbacks import callback_token

from .conftest import SandboxAdmin, wait_ready
from .webhook_catcher import Catcher, catching, signature_headers

pytestmark = pytest.mark.integration

SECRET = "e2e-tracking-secret-0123456789-abcdef"
EVENTS_KEY = "test:app-events"
TIMEOUT_S = 40.0
POLL_FIRST_S = 600.0


@pytest.fixture(scope="module")
def postal_public_key(sandbox_url: str) -> str:
    key: str = httpx.get(sandbox_url + "/_admin/webhooks").json()["postal"]["public_key"]
    return key


@pytest.fixture(scope="module")
def e2e_env(stack_env: dict[str, str], redis_url: str, postal_public_key: str) -> dict[str, str]:
    return {
        **stack_env,
        "DELIVERY_BROKER_URL": f"{redis_url}/8",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/9",
        "DELIVERY_EVENTS_TASK": "trackapp.record_event",
        # The first poll 10 minutes after a send: polling cannot be what moves a state here.
        "DELIVERY_TRACKING_POLL_FIRST_S": str(POLL_FIRST_S),
        "DELIVERY_TRACKING_POLL_INTERVAL_S": "0.5",
        "DELIVERY_TRACKING_SECRET": SECRET,
        "DELIVERY_POSTAL_WEBHOOK_PUBLIC_KEY": postal_public_key,
        "DELIVERY_LOG_FORMAT": "json",
        "DELIVERY_LOG_LEVEL": "INFO",
    }


@pytest.fixture(scope="module")
def e2e_client(e2e_env: dict[str, str]) -> Celery:
    return client_app(
        e2e_env["DELIVERY_BROKER_URL"], e2e_env["DELIVERY_RESULT_BACKEND"], name="e2e"
    )


@pytest.fixture(scope="module")
def shared(e2e_env: dict[str, str]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(e2e_env["DELIVERY_BROKER_URL"])
    client.flushdb()
    yield client
    client.close()


@dataclass
class Stack:
    receiver: Proc
    worker: Proc
    events: Proc

    @property
    def receiver_url(self) -> str:
        return str(self.receiver.extra["url"])


@pytest.fixture(scope="module")
def stack(
    e2e_env: dict[str, str],
    e2e_client: Celery,
    shared: redis.Redis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    workdir = Path(tmp_path_factory.mktemp("tracking-e2e"))
    receiver = start_receiver(workdir, e2e_env)
    env = {**e2e_env, "DELIVERY_TRACKING_PUBLIC_URL": str(receiver.extra["url"])}
    worker = start_worker(
        workdir, env, name="e2e", concurrency=2,
        extra_args=["-B", "-s", str(workdir / "beat-schedule")],
    )  # fmt: skip
    argv = [
        sys.executable, "-m", "celery", "-A", "events_app", "worker", "-Q", "delivery-events",
        "--concurrency", "1", "--hostname", "e2e-events@%h", "--without-gossip",
        "--without-mingle",
    ]  # fmt: skip
    events_env = {
        **os.environ,
        **env,
        "EVENTS_BROKER_URL": env["DELIVERY_BROKER_URL"],
        "PYTHONPATH": str(Path(__file__).parent),
    }
    events = _spawn("worker-e2e-events", argv, workdir / "events.log", events_env)
    try:
        wait_ready(e2e_client, worker)
        wait_ready(e2e_client, events)
        yield Stack(receiver, worker, events)
    finally:
        events.stop()
        worker.stop()
        receiver.stop()


@pytest.fixture
def store(stack: Stack, sandbox: SandboxAdmin, shared: redis.Redis) -> RedisTrackingStore:
    """The tracking store the worker writes (what ``worker.delivery_status`` reads)."""
    return RedisTrackingStore(shared)


def send(client: Celery, shared: redis.Redis, kind: str, message: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = (
        Producer(app=client, ledger=RedisLedger(shared)).enqueue(kind, message).get(TIMEOUT_S)
    )
    assert result["status"] == "sent", result
    return result


def postal_message(*addresses: str) -> dict[str, Any]:
    return {
        "provider": "postal",
        "to": [{"email": a} for a in addresses],
        "from": {"email": "shop@example.org"},
        "subject": "Your order",
        "text": "BODY-E2E-4411",
    }


def status_of(store: RedisTrackingStore, delivery_id: str) -> dict[str, Any]:
    found = store.status(delivery_id)
    assert found is not None, delivery_id
    return found.as_dict()


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


def app_events(shared: redis.Redis, delivery_id: str) -> list[dict[str, Any]]:
    every = [json.loads(e) for e in shared.lrange(EVENTS_KEY, 0, -1)]
    return [e for e in every if e["delivery_id"] == delivery_id]


def wait_app_events(shared: redis.Redis, delivery_id: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + TIMEOUT_S
    while len(app_events(shared, delivery_id)) < count:
        assert time.monotonic() < deadline, app_events(shared, delivery_id)
        time.sleep(0.2)
    time.sleep(1.5)  # nothing more may arrive: exactly once
    return app_events(shared, delivery_id)


def push_attempts(sandbox: SandboxAdmin, provider: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        attempts = sandbox.http.get("/_admin/webhooks").json()["attempts"]
        mine = [a for a in attempts if a["provider"] == provider]
        if len(mine) >= count or time.monotonic() > deadline:
            return mine
        time.sleep(0.1)


def set_postal_url(sandbox: SandboxAdmin, url: str) -> None:
    sandbox.http.post("/_admin/webhooks", json={"postal_url": url}).raise_for_status()


# -- Postal: signed webhooks ------------------------------------------------------------------


def test_postal_webhooks_take_each_recipient_to_its_final_state(
    stack: Stack, store: RedisTrackingStore, sandbox: SandboxAdmin, e2e_client: Celery,
    shared: redis.Redis,
) -> None:  # fmt: skip
    set_postal_url(sandbox, stack.receiver_url + "/hooks/postal")
    result = send(
        e2e_client, shared, "email",
        postal_message("ann@example.com", "bounce@example.com", "hold@example.com"),
    )  # fmt: skip
    delivery_id = result["delivery_id"]
    found = wait_states(
        store, delivery_id,
        {"a***@example.com": "delivered", "b***@example.com": "bounced",
         "h***@example.com": "held"},
    )  # fmt: skip
    ids = result["provider_message_ids"]
    # Nothing but the send and the webhooks wrote this history (the first poll is 10 min away).
    assert {e["source"] for e in found["history"]} == {"send", "webhook"}
    assert found["recipients"]["b***@example.com"]["provider_message_id"] == ids["b***@example.com"]
    [bounce] = [e for e in found["history"] if e["type"] == "bounced"]
    # Linked to the original message: the id the send recorded, not the bounce message's.
    assert bounce["provider_message_id"] == ids["b***@example.com"]
    assert str(bounce["raw"]["original_message"]["id"]) == ids["b***@example.com"]
    assert bounce["raw"]["bounce"]["id"] != bounce["raw"]["original_message"]["id"]
    text = json.dumps(found)
    for personal in ("ann@example.com", "bounce@example.com", "hold@example.com",
                     "BODY-E2E-4411", "sandbox-postal-key"):  # fmt: skip
        assert personal not in text
    attempts = push_attempts(sandbox, "postal", 4)
    assert attempts and all(a["status"] == 200 for a in attempts), attempts

    # The application heard each event exactly once, in order per recipient: 3 sends, ann's
    # and bounce's MessageSent (delivered), the bounce, the hold.
    events = wait_app_events(shared, delivery_id, 7)
    assert len(events) == 7, events
    assert len({e["event_id"] for e in events}) == 7
    per_recipient: dict[str, list[str]] = {}
    for e in events:
        per_recipient.setdefault(e["recipient"], []).append(e["type"])
    assert per_recipient == {
        "a***@example.com": ["sent", "delivered"],
        "b***@example.com": ["sent", "delivered", "bounced"],
        "h***@example.com": ["sent", "held"],
    }
    assert [e["current_state"] for e in events if e["recipient"] == "b***@example.com"] == [
        "sent", "delivered", "bounced"]  # fmt: skip


@pytest.fixture
def catcher() -> Iterator[Catcher]:
    with catching(TIMEOUT_S) as caught:
        yield caught


def test_a_forged_webhook_changes_nothing_and_a_replay_is_applied_once(
    stack: Stack, store: RedisTrackingStore, sandbox: SandboxAdmin, e2e_client: Celery,
    shared: redis.Redis, catcher: Catcher,
) -> None:  # fmt: skip
    # The sandbox signs its MessageSent for a catcher; the test then plays the network.
    set_postal_url(sandbox, catcher.url)
    result = send(e2e_client, shared, "email", postal_message("zoe@example.com"))
    delivery_id = result["delivery_id"]
    [(body, headers)] = catcher.wait(1)
    assert json.loads(body)["event"] == "MessageSent"
    signed = signature_headers(headers)
    hooks = stack.receiver_url + "/hooks/postal"

    # Forged: the same body under another key, and a bounce under the real signature.
    forged = {**signed, **PostalSigner().headers(body)}
    assert httpx.post(hooks, content=body, headers=forged).status_code == 403
    tampered = body.replace(b'"MessageSent"', b'"MessageBounced"')
    assert tampered != body
    assert httpx.post(hooks, content=tampered, headers=signed).status_code == 403
    unsigned = {"Content-Type": "application/json"}
    assert httpx.post(hooks, content=body, headers=unsigned).status_code == 401
    time.sleep(2.0)
    before = status_of(store, delivery_id)
    assert before["recipients"]["z***@example.com"]["state"] == "sent"
    assert [e["source"] for e in before["history"]] == ["send"]

    # The real envelope, then two replays of it (a provider retry, an attacker's copy).
    answers = [httpx.post(hooks, content=body, headers=signed).json()["status"] for _ in range(3)]
    assert answers == ["published", "duplicate", "duplicate"]
    found = wait_states(store, delivery_id, {"z***@example.com": "delivered"})
    time.sleep(1.5)
    found = status_of(store, delivery_id)
    uuid = json.loads(body)["uuid"]
    assert [(e["source"], e["event_id"]) for e in found["history"][1:]] == [("webhook", uuid)]
    events = wait_app_events(shared, delivery_id, 2)
    assert [(e["type"], e["current_state"]) for e in events] == [
        ("sent", "sent"), ("delivered", "delivered")]  # fmt: skip


# -- SMS Partner: urlDlr hints, confirmed by the status lookup --------------------------------


def _lookups(sandbox: SandboxAdmin) -> int:
    """SMS Partner status lookups the sandbox answered
    (docs/providers/smspartner.md §1.2.7-§1.2.9)."""
    paths = ("/message-status", "/multi-status", "/bulk-status", "/bulk-status-by-tag")
    return sum(1 for r in sandbox.requests("smspartner") if r["path"].endswith(paths))


def test_sms_callbacks_are_hints_confirmed_by_the_lookup(
    stack: Stack, store: RedisTrackingStore, sandbox: SandboxAdmin, e2e_client: Celery,
    shared: redis.Redis,
) -> None:  # fmt: skip
    started = time.monotonic()
    result = send(
        e2e_client, shared, "sms",
        {"provider": "smspartner", "to": ["+33611000021", "+33600000404"], "text": "hi"},
    )  # fmt: skip
    delivery_id = result["delivery_id"]
    [recorded] = sandbox.messages("smspartner")
    url_dlr = recorded["fields"]["urlDlr"]
    # The token carries the second it was issued at (the send's): recompute it for that second.
    issued_hex = url_dlr.rsplit("/", 1)[1].split(".", 1)[0]
    issued_at = int(issued_hex, 16)
    assert abs(time.time() - issued_at) < 120
    token = callback_token(SECRET, "smspartner", delivery_id, issued_at=issued_at)
    assert url_dlr == f"{stack.receiver_url}/hooks/smspartner/{delivery_id}/{token}"

    # The sandbox delivers after 1 s and calls urlDlr; the receiver publishes a hint; the
    # worker asks message-status / bulk-status and applies what the provider says.
    found = wait_states(store, delivery_id, {"+3361*****21": "delivered", "+3360*****04": "failed"})
    assert time.monotonic() - started < POLL_FIRST_S / 10  # long before the first poll
    assert found["recipients"]["+3360*****04"]["reason"] == "Not delivered"
    attempts = push_attempts(sandbox, "smspartner", 2)
    assert len(attempts) == 2 and all(a["status"] == 200 for a in attempts), attempts
    assert _lookups(sandbox) >= 1
    assert "+33611000021" not in json.dumps(found) and token not in json.dumps(found)


def test_an_sms_callback_with_a_bad_token_changes_nothing(
    stack: Stack, store: RedisTrackingStore, sandbox: SandboxAdmin, e2e_client: Celery,
    shared: redis.Redis,
) -> None:  # fmt: skip
    # Delivered at the provider only after an hour: no push of its own during this test.
    sandbox.http.post("/_admin/config", json={"sms_delivery_delay_s": 3600}).raise_for_status()
    result = send(
        e2e_client, shared, "sms", {"provider": "smspartner", "to": ["+33611000031"], "text": "x"}
    )
    delivery_id = result["delivery_id"]
    [recorded] = sandbox.messages("smspartner")
    forced = {"provider": "smspartner", "message_id": recorded["message_id"], "status": "Delivered"}
    sandbox.http.post("/_admin/status", json=forced).raise_for_status()
    push_attempts(sandbox, "smspartner", 1)  # the forced change's own callback…
    found = wait_states(store, delivery_id, {"+3361*****31": "delivered"})  # …is a real hint
    assert {e["source"] for e in found["history"]} == {"send", "poll"}

    # A second delivery, still Waiting: a wrong token neither publishes nor looks anything up.
    other = send(
        e2e_client, shared, "sms", {"provider": "smspartner", "to": ["+33611000032"], "text": "x"}
    )["delivery_id"]
    lookups = _lookups(sandbox)
    assert lookups >= 1  # the good hint above was looked up: the count below can move
    wrong = callback_token(SECRET, "smspartner", delivery_id)  # another delivery's token
    for token in (wrong, "x" * 43, ""):
        answer = httpx.post(
            f"{stack.receiver_url}/hooks/smspartner/{other}/{token}", data={"status": "Delivered"}
        )
        assert answer.status_code in (403, 404, 405), answer
    time.sleep(2.0)
    assert _lookups(sandbox) == lookups
    assert [e["source"] for e in status_of(store, other)["history"]] == ["send"]


# -- Voice Partner: callbacks accepted, no lookup to confirm them ----------------------------


def test_voice_callbacks_are_accepted_but_deliveries_stay_sent(
    stack: Stack, store: RedisTrackingStore, sandbox: SandboxAdmin, e2e_client: Celery,
    shared: redis.Redis,
) -> None:  # fmt: skip
    result = send(
        e2e_client, shared, "voice",
        {"provider": "voicepartner", "mode": "tts", "to": ["+33611000041"], "text": "Bonjour",
         "lang": "fr"},
    )  # fmt: skip
    delivery_id = result["delivery_id"]
    [recorded] = sandbox.messages("voicepartner")
    notify_url = recorded["fields"]["notifyUrl"]
    # The token carries the second it was issued at (the send's): recompute it for that second.
    issued_at = int(notify_url.rsplit("/", 1)[1].split(".", 1)[0], 16)
    assert abs(time.time() - issued_at) < 120
    token = callback_token(SECRET, "voicepartner", delivery_id, issued_at=issued_at)
    assert notify_url == f"{stack.receiver_url}/hooks/voicepartner/{delivery_id}/{token}"
    # The sandbox calls notifyUrl after 1 s; the receiver accepts it (200) and publishes a
    # hint; the worker has no lookup to confirm it with (docs/providers/voicepartner.md §3.3) and
    # trusts no body, so the delivery stays "sent".
    [attempt] = push_attempts(sandbox, "voicepartner", 1)
    assert attempt["status"] == 200
    # The worker took the hint and said why it changes nothing (its task result, logged).
    ignored = "'status': 'ignored', 'reason': 'voicepartner has no status lookup'"
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        lines = stack.worker.log_path.read_text(errors="replace").splitlines()
        taken = [line for line in lines if "delivery.track_hint[" in line and ignored in line]
        if taken:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the worker never took the voice hint")
    # Its log line is about this delivery only: nothing bound by an earlier send in the same
    # pool process (channel, attempt) rides along.
    line = json.loads(taken[0])
    assert line["delivery_id"] == delivery_id and line["provider"] == "voicepartner", line
    assert "channel" not in line and "attempt" not in line, line
    time.sleep(1.0)
    found = status_of(store, delivery_id)
    assert found["recipients"]["+3361*****41"]["state"] == "sent"
    assert [e["source"] for e in found["history"]] == ["send"]
    assert not found["polling"]


def test_late_webhooks_never_move_a_state_back(
    stack: Stack, store: RedisTrackingStore, sandbox: SandboxAdmin, e2e_client: Celery,
    shared: redis.Redis,
) -> None:  # fmt: skip
    set_postal_url(sandbox, stack.receiver_url + "/hooks/postal")
    result = send(e2e_client, shared, "email", postal_message("max@example.com"))
    delivery_id = result["delivery_id"]
    [message_id] = result["provider_message_ids"].values()
    wait_states(store, delivery_id, {"m***@example.com": "delivered"})

    def force(word: str, pushes: int) -> None:
        # The provider changes its mind: the sandbox shows the word and pushes its webhook.
        change = {"provider": "postal", "message_id": message_id, "status": word}
        sandbox.http.post("/_admin/status", json=change).raise_for_status()
        attempts = push_attempts(sandbox, "postal", pushes)
        assert len(attempts) == pushes and attempts[-1]["status"] == 200, attempts

    force("SoftFail", 2)  # a late MessageDelayed: kept in the history, the state stays
    deadline = time.monotonic() + TIMEOUT_S
    while "deferred" not in [e["type"] for e in status_of(store, delivery_id)["history"]]:
        assert time.monotonic() < deadline, status_of(store, delivery_id)
        time.sleep(0.2)
    assert status_of(store, delivery_id)["recipients"]["m***@example.com"]["state"] == "delivered"
    force("Sent", 3)  # a second MessageSent (another uuid): nothing new to say
    force("Bounced", 4)  # an asynchronous bounce after the delivery: it wins
    found = wait_states(store, delivery_id, {"m***@example.com": "bounced"})
    assert [e["type"] for e in found["history"]] == [
        "sent", "delivered", "deferred", "delivered", "bounced"]  # fmt: skip
    events = wait_app_events(shared, delivery_id, 5)
    assert [(e["type"], e["current_state"]) for e in events] == [
        ("sent", "sent"), ("delivered", "delivered"), ("deferred", "delivered"),
        ("delivered", "delivered"), ("bounced", "bounced"),
    ]  # fmt: skip
