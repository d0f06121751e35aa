"""The pushes the sandbox sends: Postal's signed webhooks (docs/providers/postal.md §4.6) and
SMS/Voice Partner callbacks (docs/providers/smspartner.md §1.4,
docs/providers/voicepartner.md §3.3), to a real HTTP server over a socket."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from delivery_sandbox import Sandbox
from delivery_sandbox.lifecycle import StatusChange
from delivery_sandbox.webhooks import POSTAL_RETRY_DELAYS_S

POSTAL_KEY = {"X-Server-API-Key": "sandbox-postal-key"}
QUIET_S = 3600.0
"""The sandbox's delivery timeline pushes by itself (a Postal send is ``Sent`` at once, an SMS
``Delivered`` after a second); these tests publish each change by hand, so the timeline's own
moves are put an hour away and only the hand-made push is seen."""
MESSAGE_KEYS = {
    "id", "token", "direction", "message_id", "to", "from", "subject", "timestamp",
    "spam_status", "tag",
}  # fmt: skip
STATUS_PAYLOAD_KEYS = {
    "message",
    "status",
    "details",
    "output",
    "sent_with_ssl",
    "timestamp",
    "time",
}


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox(
        config={"postal_delivery_delay_s": QUIET_S, "sms_delivery_delay_s": QUIET_S}
    )


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Catcher:
    """A tiny receiving server: records every request, answers the next planned status."""

    server: ThreadingHTTPServer
    seen: list[Seen] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Seen]:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while len(self.seen) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"expected {count} pushes, got {len(self.seen)}"
                self.cond.wait(left)
            return list(self.seen)


@pytest.fixture
def catcher() -> Iterator[Catcher]:
    holder: list[Catcher] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _handle(self) -> None:
            c = holder[0]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            parts = urlsplit(self.path)
            if c.delay_s:
                time.sleep(c.delay_s)
            with c.cond:
                c.seen.append(
                    Seen(self.command, parts.path, parse_qs(parts.query), dict(self.headers), body)
                )
                status = c.statuses.pop(0) if c.statuses else 200
                c.cond.notify_all()
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_POST = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder.append(Catcher(server))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()
    thread.join()


def _configure(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/_admin/webhooks", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def _attempts(client: httpx.Client, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The sandbox's record of push attempts, once it holds ``count`` of them."""
    deadline = time.monotonic() + timeout_s
    while True:
        attempts: list[dict[str, Any]] = client.get("/_admin/webhooks").json()["attempts"]
        if len(attempts) >= count or time.monotonic() > deadline:
            return attempts
        time.sleep(0.02)


def _public_key(client: httpx.Client) -> rsa.RSAPublicKey:
    text = client.get("/_admin/webhooks").json()["postal"]["public_key"]
    key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def _postal_send(
    client: httpx.Client, sandbox: Sandbox, to: str = "ann@example.com"
) -> dict[str, Any]:
    params = {"to": [to], "from": "Shop <app@example.test>", "subject": "Hello",
              "plain_body": "hi", "tag": "welcome"}  # fmt: skip
    body = client.post("/postal/api/v1/send/message", json=params, headers=POSTAL_KEY).json()
    assert body["status"] == "success", body
    [recorded] = sandbox.recorder.messages("postal")[-1:]
    return recorded


def _change(provider: str, recorded: dict[str, Any], status: str, recipient: str,
            message_id: str | None = None, detail: str | None = None) -> StatusChange:  # fmt: skip
    return StatusChange(
        provider=provider,
        message_id=message_id or str(recorded["message_id"]),
        recipient=recipient,
        status=status,
        at=time.time(),
        detail=detail,
        message=recorded,
    )


def test_the_public_key_is_exposed_in_postal_form(client: httpx.Client) -> None:
    postal = client.get("/_admin/webhooks").json()["postal"]
    der = base64.b64decode(postal["public_key"], validate=True)
    key = serialization.load_der_public_key(der)
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048
    assert postal["url"] is None
    assert postal["retry_delays_s"] == list(POSTAL_RETRY_DELAYS_S) == [120, 180, 360, 600, 900]
    assert postal["timeout_s"] == 5.0


@pytest.mark.parametrize(
    ("status", "event", "postal_status"),
    [
        ("MessageSent", "MessageSent", "Sent"),
        ("MessageDelayed", "MessageDelayed", "SoftFail"),
        ("MessageDeliveryFailed", "MessageDeliveryFailed", "HardFail"),
        ("MessageHeld", "MessageHeld", "Held"),
        ("Sent", "MessageSent", "Sent"),  # Postal's status word works too
    ],
)
def test_a_postal_status_change_is_a_signed_webhook(
    sandbox: Sandbox, client: httpx.Client, catcher: Catcher, status: str, event: str,
    postal_status: str,
) -> None:  # fmt: skip
    _configure(client, postal_url=catcher.url + "/hooks/postal")
    recorded = _postal_send(client, sandbox)
    message_id = str(recorded["recipient_ids"]["ann@example.com"])
    sandbox.listeners.publish(_change("postal", recorded, status, "ann@example.com", message_id))
    [seen] = catcher.wait_for(1)

    assert seen.method == "POST" and seen.path == "/hooks/postal"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"].startswith("Postal/")
    key = _public_key(client)
    key.verify(
        base64.b64decode(seen.headers["X-Postal-Signature-256"]), seen.body,
        padding.PKCS1v15(), hashes.SHA256(),
    )  # fmt: skip
    key.verify(
        base64.b64decode(seen.headers["X-Postal-Signature"]), seen.body,
        padding.PKCS1v15(), hashes.SHA1(),  # noqa: S303
    )  # fmt: skip
    assert seen.headers["X-Postal-Signature-KID"]
    envelope = json.loads(seen.body)
    assert set(envelope) == {"event", "timestamp", "payload", "uuid"}
    assert envelope["event"] == event
    assert isinstance(envelope["timestamp"], float)
    payload = envelope["payload"]
    assert set(payload) == STATUS_PAYLOAD_KEYS
    assert payload["status"] == postal_status
    assert len(payload["output"]) <= 512
    message = payload["message"]
    assert set(message) == MESSAGE_KEYS
    assert message["id"] == int(message_id)
    assert message["to"] == "ann@example.com" and message["from"] == "app@example.test"
    assert message["direction"] == "outgoing" and message["tag"] == "welcome"
    assert message["message_id"] == recorded["message_id"]
    assert len(message["token"]) == 16 and message["token"].isalnum()


def test_a_bounce_names_the_original_message(
    sandbox: Sandbox, client: httpx.Client, catcher: Catcher
) -> None:
    _configure(client, postal_url=catcher.url + "/hooks/postal")
    recorded = _postal_send(client, sandbox, to="bounce@example.com")
    message_id = str(recorded["recipient_ids"]["bounce@example.com"])
    sandbox.listeners.publish(
        _change("postal", recorded, "MessageBounced", "bounce@example.com", message_id)
    )
    [seen] = catcher.wait_for(1)
    envelope = json.loads(seen.body)
    assert envelope["event"] == "MessageBounced"
    assert set(envelope["payload"]) == {"original_message", "bounce"}
    original, bounce = envelope["payload"]["original_message"], envelope["payload"]["bounce"]
    assert set(original) == set(bounce) == MESSAGE_KEYS
    assert original["id"] == int(message_id)
    assert bounce["id"] != original["id"] and bounce["direction"] == "incoming"


def test_a_failed_push_is_retried_with_the_same_uuid_then_dropped(
    sandbox: Sandbox, client: httpx.Client, catcher: Catcher
) -> None:
    _configure(client, postal_url=catcher.url + "/hooks/postal", retry_delays_s=[0.05] * 5)
    recorded = _postal_send(client, sandbox)
    catcher.statuses = [500, 404, 200]
    sandbox.listeners.publish(_change("postal", recorded, "MessageSent", "ann@example.com", "1"))
    seen = catcher.wait_for(3)
    assert len({s.body for s in seen}) == 1  # the same request, uuid included
    attempts = _attempts(client, 3)
    assert [(a["attempt"], a["status"], a["will_retry"]) for a in attempts] == [
        (1, 500, True), (2, 404, True), (3, 200, False),
    ]  # fmt: skip

    catcher.statuses = [500] * 10
    sandbox.listeners.publish(_change("postal", recorded, "MessageHeld", "ann@example.com", "1"))
    catcher.wait_for(3 + 6)
    time.sleep(0.4)
    assert len(catcher.seen) == 9  # docs/providers/postal.md §4.6: 6 attempts in all, then dropped
    last = _attempts(client, 9)[-1]
    assert last["attempt"] == 6 and last["will_retry"] is False


def test_a_slow_receiver_never_blocks_the_timeline(
    sandbox: Sandbox, client: httpx.Client, catcher: Catcher
) -> None:
    _configure(client, postal_url=catcher.url + "/hooks/postal")
    recorded = _postal_send(client, sandbox)
    catcher.delay_s = 1.0
    started = time.monotonic()
    for _ in range(10):
        sandbox.listeners.publish(
            _change("postal", recorded, "MessageSent", "ann@example.com", "1")
        )
    assert time.monotonic() - started < 0.5
    assert client.get("/_admin/health").status_code == 200
    catcher.wait_for(10, timeout_s=15)


def test_nothing_is_sent_without_a_url_and_reset_restores_it(
    sandbox: Sandbox, client: httpx.Client, catcher: Catcher
) -> None:
    recorded = _postal_send(client, sandbox)
    sandbox.listeners.publish(_change("postal", recorded, "MessageSent", "ann@example.com", "1"))
    _configure(client, postal_url=catcher.url)
    assert client.post("/_admin/reset").status_code == 200
    assert client.get("/_admin/webhooks").json()["postal"]["url"] is None
    time.sleep(0.3)
    assert catcher.seen == []


@pytest.mark.parametrize(
    "body",
    [{"postal_url": "ftp://x"}, {"retry_delays_s": [-1]}, {"retry_delays_s": "soon"}, {"x": 1}, []],
)
def test_bad_webhook_config_is_400(client: httpx.Client, body: Any) -> None:
    assert client.post("/_admin/webhooks", json=body).status_code == 400


def test_sms_partner_calls_url_dlr(
    sandbox: Sandbox, client: httpx.Client, catcher: Catcher
) -> None:
    url = catcher.url + "/hooks/smspartner/d-1/tok"
    sent = client.post(
        "/smspartner/v1/send",
        json={"apiKey": "sandbox-smspartner-key", "phoneNumbers": "0600000001",
              "message": "Hello", "urlDlr": url, "tag": "t1"},
    )  # fmt: skip
    assert sent.json()["success"] is True
    [recorded] = sandbox.recorder.messages("smspartner")
    number = recorded["recipients"][0]
    sandbox.listeners.publish(_change("smspartner", recorded, "Delivered", number))
    [seen] = catcher.wait_for(1)
    assert seen.method == "POST" and seen.path == "/hooks/smspartner/d-1/tok"
    assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = parse_qs(seen.body.decode())
    assert form["messageId"] == [str(sent.json()["message_id"])]
    assert form["status"] == ["Delivered"] and form["phoneNumber"] == [number]
    assert form["tag"] == ["t1"]
    # The token in the path is never recorded.
    [attempt] = _attempts(client, 1)
    assert attempt["status"] == 200 and "tok" not in json.dumps(attempt)


@pytest.mark.parametrize(("route", "method"), [("tts/send", "POST"), ("campaign/send", "GET")])
def test_voice_partner_calls_notify_url(
    sandbox: Sandbox, client: httpx.Client, catcher: Catcher, route: str, method: str
) -> None:
    url = catcher.url + "/hooks/voicepartner/d-2/tok"
    payload: dict[str, Any] = {"apiKey": "sandbox-voicepartner-key", "phoneNumbers": "0600000001",
                               "notifyUrl": url}  # fmt: skip
    if route == "tts/send":
        payload.update(text="Bonjour", lang="fr")
    else:
        payload.update(tokenAudio="audio-1", emailForNotification="ops@example.com")
    sent = client.post(f"/voicepartner/v1/{route}", json=payload).json()
    assert sent["success"] is True, sent
    [recorded] = sandbox.recorder.messages("voicepartner")
    sandbox.listeners.publish(_change("voicepartner", recorded, "Delivered", "+33600000001"))
    [seen] = catcher.wait_for(1)
    assert seen.method == method and seen.path == "/hooks/voicepartner/d-2/tok"
    data = json.loads(seen.body) if method == "POST" else {k: v[0] for k, v in seen.query.items()}
    assert data["campaignId"] == sent["campaignId"] and data["status"] == "Delivered"


def test_the_cli_flag_and_the_startup_line(tmp_path: Any) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "delivery_sandbox", "--port", "0", "--quiet",
         "--postal-webhook-url", "http://127.0.0.1:9/hooks/postal"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        key_line = proc.stdout.readline().strip()
        assert key_line.startswith("postal webhook public key: ")
        shown = key_line.rsplit(" ", 1)[-1]
        postal = httpx.get(url + "/_admin/webhooks").json()["postal"]
        assert postal["public_key"] == shown
        assert postal["url"] == "http://127.0.0.1:9/hooks/postal"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
