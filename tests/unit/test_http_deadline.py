"""The whole-request deadline: a provider answer trickled past it ends the send, never a 200.

httpx's read timeout bounds each read only. These tests serve an answer over a real socket one
byte at a time, each byte well inside the read timeout, the whole well past the deadline.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from worker.errors import UnknownOutcomeError
from worker.http import build_client
from worker.models import EmailMessage
from worker.providers.base import SendContext
from worker.providers.postal import PostalDriver

_DATA = {"message_id": "m-1", "messages": {"ada@example.com": {"id": 1, "token": "t"}}}
BODY = json.dumps({"status": "success", "time": 0.01, "flags": {}, "data": _DATA}).encode()
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(
    BODY
)
BYTE_EVERY_S = 0.2
"""Far below the 1 s read timeout: every single read succeeds."""


@dataclass
class Trickler:
    """A one-connection HTTP server that writes its answer one byte per ``BYTE_EVERY_S``."""

    trickle_head: bool
    byte_every_s: float = BYTE_EVERY_S
    port: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    client_gone: threading.Event = field(default_factory=threading.Event)
    """Set when a write fails: the client closed the connection before the answer ended."""
    completed: threading.Event = field(default_factory=threading.Event)

    def serve(self, listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head = data.split(b"\r\n\r\n", 1)[0].lower()
            length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0].strip())
            rest = data.split(b"\r\n\r\n", 1)[1]
            while len(rest) < length:
                rest += conn.recv(65536)
            answer = HEAD + BODY
            if not self.trickle_head:
                conn.sendall(HEAD)
                answer = BODY
            try:
                for i in range(len(answer)):
                    if self.stop.wait(self.byte_every_s):
                        return
                    conn.sendall(answer[i : i + 1])
            except OSError:
                self.client_gone.set()
                return
            self.completed.set()


@contextmanager
def serving(server: Trickler) -> Iterator[Trickler]:
    listener = socket.create_server(("127.0.0.1", 0))
    server.port = listener.getsockname()[1]
    thread = threading.Thread(target=server.serve, args=(listener,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        thread.join(timeout=10)
        listener.close()


@pytest.fixture(params=["body", "head"])
def trickler(request: pytest.FixtureRequest) -> Iterator[Trickler]:
    with serving(Trickler(trickle_head=request.param == "head")) as server:
        yield server


def _message() -> EmailMessage:
    return EmailMessage.model_validate(
        {
            "provider": "postal",
            "to": [{"email": "ada@example.com"}],
            "from": {"email": "news@example.com"},
            "subject": "s",
            "text": "t",
        }
    )


def test_an_answer_trickled_past_the_total_deadline_is_an_unknown_outcome(
    trickler: Trickler,
) -> None:
    # The answer takes len(HEAD + BODY) * 0.2 s (tens of seconds); each read waits 0.2 s.
    client = build_client(connect_timeout_s=1.0, read_timeout_s=1.0, total_timeout_s=1.5)
    driver = PostalDriver(client, api_key="k" * 20, base_url=f"http://127.0.0.1:{trickler.port}")
    ctx = SendContext(delivery_id="dlv-deadline", idempotency_key="idem", tag="dw")
    with client, pytest.raises(UnknownOutcomeError):
        driver.send(_message(), ctx)
    # The client hung up mid-answer: the server's next byte finds the connection closed.
    assert trickler.client_gone.wait(timeout=10)
    assert not trickler.completed.is_set()


def test_an_answer_within_the_deadline_is_read_whole() -> None:
    """The same bounded transport, a deadline far above the trickle: the send succeeds."""
    with serving(Trickler(trickle_head=True, byte_every_s=0.001)) as server:
        client = build_client(connect_timeout_s=5.0, read_timeout_s=5.0, total_timeout_s=600.0)
        base_url = f"http://127.0.0.1:{server.port}"
        driver = PostalDriver(client, api_key="k" * 20, base_url=base_url)
        ctx = SendContext(delivery_id="dlv-deadline", idempotency_key="idem", tag="dw")
        with client:
            outcome = driver.send(_message(), ctx)
        assert server.completed.wait(timeout=10)
    assert outcome.provider_message_ids
