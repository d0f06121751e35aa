"""The tracking receiver as a real uvicorn process on a real Redis broker, fed by the sandbox.

Up to the broker: what the receiver accepted is read back from the kombu queue list, the way a
worker would receive it (the tasks that apply it are the worker's side of issue 10).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from delivery_sandbox import Sandbox, SandboxConfig
from delivery_sandbox.lifecycle import StatusChange
from delivery_sandbox.webhooks import PostalSigner
from devstack.processes import Proc
from devstack.receiver import queued_tasks, start_receiver
from worker.tasknames import TRACK_EVENTS_TASK, TRACK_HINT_TASK
from worker.tracking.callbacks import callback_token, callback_url
from worker.tracking.events import DeliveryEvent, EventType

pytestmark = pytest.mark.integration

SECRET = "integration-tracking-secret-0123456789"
BROKER_DB = 5  # apart from the other integration tests' databases (0, 1): no worker consumes it
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    # The timeline's own pushes (a Postal send is Sent at once, an SMS Delivered after a second)
    # are put an hour away: these tests publish each change by hand and count what lands.
    quiet = SandboxConfig(postal_delivery_delay_s=3600.0, sms_delivery_delay_s=3600.0)
    with Sandbox("127.0.0.1", 0, config=quiet) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def receiver(
    redis_url: str, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    env = {
        "DELIVERY_BROKER_URL": f"{redis_url}/{BROKER_DB}",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/{BROKER_DB + 1}",
        "DELIVERY_POSTAL_WEBHOOK_PUBLIC_KEY": sandbox.webhooks.signer.public_key,
        "DELIVERY_TRACKING_SECRET": SECRET,
        "DELIVERY_RECEIVER_MAX_BODY_BYTES": str(MAX_BODY),
        "DELIVERY_LOG_FORMAT": "json",
        "DELIVERY_LOG_LEVEL": "INFO",
    }
    proc = start_receiver(Path(tmp_path_factory.mktemp("receiver")), env)
    yield proc
    proc.stop()


@pytest.fixture
def broker(redis_url: str, receiver: Proc) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{redis_url}/{BROKER_DB}")
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def http(receiver: Proc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=str(receiver.extra["url"]), timeout=10) as client:
        yield client


def _wait_tasks(broker: redis.Redis, count: int, timeout_s: float = 15.0) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        tasks = queued_tasks(broker)
        if len(tasks) >= count or time.monotonic() > deadline:
            return tasks
        time.sleep(0.05)


def _postal_message(sandbox: Sandbox, to: str) -> tuple[dict[str, Any], str]:
    params = {"to": [to], "from": "app@example.test", "subject": "Hi", "plain_body": "hi"}
    response = httpx.post(
        sandbox.url + "/postal/api/v1/send/message",
        json=params,
        headers={"X-Server-API-Key": "sandbox-postal-key"},
    )
    assert response.json()["status"] == "success"
    recorded = sandbox.recorder.messages("postal")[-1]
    return recorded, str(recorded["recipient_ids"][to])


def test_health(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}


def test_a_sandbox_signed_webhook_lands_on_the_broker_once(
    sandbox: Sandbox, receiver: Proc, broker: redis.Redis
) -> None:
    sandbox.webhooks.set_postal_url(str(receiver.extra["url"]) + "/hooks/postal")
    recorded, message_id = _postal_message(sandbox, "ann@example.com")
    sandbox.listeners.publish(
        StatusChange(
            "postal", message_id, "ann@example.com", "MessageSent", time.time(), message=recorded
        )
    )
    [(name, args)] = _wait_tasks(broker, 1)
    assert name == TRACK_EVENTS_TASK
    [[data]] = args
    event = DeliveryEvent.model_validate(data)
    assert event.type is EventType.DELIVERED
    assert event.provider == "postal" and event.provider_message_id == message_id
    assert event.recipient == "a***@example.com"
    assert "ann@example.com" not in json.dumps(args)
    deadline = time.monotonic() + 10
    while not sandbox.webhooks.describe()["attempts"] and time.monotonic() < deadline:
        time.sleep(0.02)  # the sandbox records the attempt once the answer is read
    attempt = sandbox.webhooks.describe()["attempts"][-1]
    assert attempt["status"] == 200 and attempt["uuid"] == event.event_id


def test_a_bounce_lands_linked_to_its_message(
    sandbox: Sandbox, receiver: Proc, broker: redis.Redis
) -> None:
    sandbox.webhooks.set_postal_url(str(receiver.extra["url"]) + "/hooks/postal")
    recorded, message_id = _postal_message(sandbox, "bob@example.com")
    sandbox.listeners.publish(
        StatusChange(
            "postal", message_id, "bob@example.com", "MessageBounced", time.time(), message=recorded
        )
    )
    [(_, [[data]])] = _wait_tasks(broker, 1)
    assert data["type"] == "bounced" and data["provider_message_id"] == message_id


def test_replays_forgeries_and_junk_publish_nothing(
    sandbox: Sandbox, http: httpx.Client, broker: redis.Redis
) -> None:
    payload = {
        "message": {"id": 9, "direction": "outgoing", "to": "c@example.com"},
        "status": "HardFail",
        "timestamp": time.time(),
    }
    uuid, body, headers = sandbox.webhooks.signer.signed_request("MessageDeliveryFailed", payload)
    assert http.post("/hooks/postal", content=body, headers=headers).json()["status"] == (
        "published"
    )
    replay = http.post("/hooks/postal", content=body, headers=headers)
    assert replay.status_code == 200 and replay.json()["status"] == "duplicate"

    forged = PostalSigner().headers(body)
    assert http.post("/hooks/postal", content=body, headers=forged).status_code == 403
    assert http.post("/hooks/postal", content=body).status_code == 401
    big = b"{" + b" " * MAX_BODY + b"}"
    signer = sandbox.webhooks.signer
    assert http.post("/hooks/postal", content=big, headers=signer.headers(big)).status_code == 413
    junk = b'{"event": "MessageSent", "uuid": 7}'
    assert http.post("/hooks/postal", content=junk, headers=signer.headers(junk)).status_code == (
        400
    )
    time.sleep(0.3)
    tasks = queued_tasks(broker)
    assert len(tasks) == 1 and tasks[0][1][0][0]["event_id"] == uuid


def test_an_sms_callback_with_its_token_publishes_one_hint(
    sandbox: Sandbox, receiver: Proc, http: httpx.Client, broker: redis.Redis
) -> None:
    # The real push path: the driver-side URL goes to the sandbox as urlDlr, the sandbox calls it.
    url = callback_url(str(receiver.extra["url"]), SECRET, "smspartner", "dlv-sms-1")
    assert url is not None
    sent = httpx.post(
        sandbox.url + "/smspartner/v1/send",
        json={"apiKey": "sandbox-smspartner-key", "phoneNumbers": "0600000001",
              "message": "Hello", "urlDlr": url},
    )  # fmt: skip
    assert sent.json()["success"] is True
    recorded = sandbox.recorder.messages("smspartner")[-1]
    sandbox.listeners.publish(
        StatusChange(
            "smspartner",
            str(recorded["message_id"]),
            recorded["recipients"][0],
            "Delivered",
            time.time(),
            message=recorded,
        )
    )
    assert _wait_tasks(broker, 1) == [(TRACK_HINT_TASK, ["smspartner", "dlv-sms-1"])]

    wrong = callback_token(SECRET, "smspartner", "dlv-sms-2")
    refused = http.post(f"/hooks/smspartner/dlv-sms-1/{wrong}", data={"status": "Delivered"})
    assert refused.status_code == 403
    time.sleep(0.3)
    assert len(queued_tasks(broker)) == 1


def test_the_log_holds_no_secret_token_or_address(
    receiver: Proc, http: httpx.Client, broker: redis.Redis
) -> None:
    token = callback_token(SECRET, "voicepartner", "dlv-v-1")
    assert http.get(f"/hooks/voicepartner/dlv-v-1/{token}").status_code == 200
    assert _wait_tasks(broker, 1) == [(TRACK_HINT_TASK, ["voicepartner", "dlv-v-1"])]
    time.sleep(0.3)
    log = Path(receiver.log_path).read_text(errors="replace")
    assert "receiver.published" in log  # it does log, by route
    for secret in (SECRET, token, "ann@example.com", "bob@example.com"):
        assert secret not in log


def test_the_startup_line_and_a_receiver_with_nothing_to_receive(receiver: Proc) -> None:
    log = Path(receiver.log_path).read_text(errors="replace")
    assert "receiver listening on http://127.0.0.1:" in log
    assert "/hooks/postal on" in log and "voicepartner on" in log
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELIVERY_")}
    done = subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "receiver", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "DELIVERY_POSTAL_WEBHOOK_PUBLIC_KEY" in done.stderr


def test_a_replayed_hint_url_publishes_one_task_per_interval(
    receiver: Proc, http: httpx.Client, broker: redis.Redis
) -> None:
    """Each hint costs a task and a provider lookup: replays within the interval (15 s by
    default, kept in Redis with SET NX PX, shared by every receiver process) publish nothing."""
    token = callback_token(SECRET, "smspartner", "dlv-replay")
    answers = [http.post(f"/hooks/smspartner/dlv-replay/{token}").json() for _ in range(5)]
    assert answers == [{"status": "published"}] + [{"status": "throttled"}] * 4
    assert _wait_tasks(broker, 1) == [(TRACK_HINT_TASK, ["smspartner", "dlv-replay"])]
    ttl_ms = broker.pttl("dw:track:seen:hint:smspartner:dlv-replay")
    assert 0 < ttl_ms <= 15_000


def test_an_expired_hint_url_is_refused(receiver: Proc, http: httpx.Client) -> None:
    issued = time.time() - 48 * 3600 - 60  # past the tracking horizon
    token = callback_token(SECRET, "smspartner", "dlv-old", issued_at=issued)
    assert http.post(f"/hooks/smspartner/dlv-old/{token}").status_code == 403
