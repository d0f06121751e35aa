"""Every door holds: the receiver's deadlines and caps, over a real uvicorn process and raw sockets.

The receiver runs as an operator starts it (``delivery-worker receiver``) with short deadlines
(1-2 s) so the tests are quick; each test waits on what the server does (a close, an answer, a
log line) with a bounded deadline, never a fixed sleep.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack.processes import Proc
from devstack.receiver import start_receiver

pytestmark = pytest.mark.integration

SECRET = "integration-tracking-secret-0123456789"
BROKER_DB = 7
WAIT_S = 15.0  # the most any test waits for the server: far past every deadline below


def _env(redis_url: str, **limits: str) -> dict[str, str]:
    return {
        "DELIVERY_BROKER_URL": f"{redis_url}/{BROKER_DB}",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/{BROKER_DB + 1}",
        "DELIVERY_TRACKING_SECRET": SECRET,
        "DELIVERY_LOG_FORMAT": "json",
        "DELIVERY_LOG_LEVEL": "INFO",
        **{f"DELIVERY_RECEIVER_{name.upper()}": value for name, value in limits.items()},
    }


@pytest.fixture(scope="module")
def receiver(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """Short deadlines: head 1 s, body 1.5 s, keep-alive 1 s."""
    env = _env(redis_url, header_timeout_s="1", body_timeout_s="1.5", keep_alive_s="1")
    proc = start_receiver(Path(tmp_path_factory.mktemp("receiver-limits")), env)
    yield proc
    proc.stop()


CAP = 4


@pytest.fixture(scope="module")
def capped_receiver(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """Long deadlines (held connections stay held), at most ``CAP`` connections."""
    env = _env(redis_url, header_timeout_s="60", max_connections=str(CAP))
    proc = start_receiver(Path(tmp_path_factory.mktemp("receiver-capped")), env)
    yield proc
    proc.stop()


def _connect(proc: Proc) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", int(proc.extra["port"])), timeout=WAIT_S)
    sock.setblocking(False)
    return sock


def _read_until_closed(sock: socket.socket, deadline: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or ``deadline`` passes (False)."""
    received = b""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, False


def _read_response(sock: socket.socket, deadline: float) -> bytes:
    """One full response head and JSON body (Content-Length framed)."""
    received = b""
    while time.monotonic() < deadline:
        head, sep, body = received.partition(b"\r\n\r\n")
        if sep:
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            if len(body) >= length:
                return received
        readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if readable:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    raise AssertionError(f"no full response before the deadline: {received!r}")


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _log_events(proc: Proc) -> list[dict[str, object]]:
    events = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


HEALTH = b"GET /health HTTP/1.1\r\nHost: receiver\r\n\r\n"


def test_a_partial_request_head_is_closed_within_the_deadline(receiver: Proc) -> None:
    sock = _connect(receiver)
    sock.sendall(b"POST /hooks/postal HTTP/1.1\r\nHost: receiver\r\nContent-Ty")
    _, closed = _read_until_closed(sock, time.monotonic() + WAIT_S)
    sock.close()
    assert closed, "a half-sent request head held its connection"


def test_a_connection_that_sends_nothing_is_closed(receiver: Proc) -> None:
    sock = _connect(receiver)
    _, closed = _read_until_closed(sock, time.monotonic() + WAIT_S)
    sock.close()
    assert closed


def test_a_trickled_head_does_not_extend_the_deadline(receiver: Proc) -> None:
    """A byte every 0.2 s: each byte is progress, but the head deadline runs from the first."""
    sock = _connect(receiver)
    deadline = time.monotonic() + WAIT_S
    closed = False
    for byte in b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 500:
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        _, closed = _read_until_closed(sock, min(deadline, time.monotonic() + 0.2))
        if closed or time.monotonic() > deadline:
            break
    sock.close()
    assert closed


def test_a_trickled_body_gets_408_and_a_close(receiver: Proc) -> None:
    sock = _connect(receiver)
    token = "0" * 40
    sock.sendall(
        f"POST /hooks/smspartner/d-1/{token} HTTP/1.1\r\nHost: receiver\r\n"
        "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n".encode()
    )
    # The token is wrong: the app would answer 403 at once, if the body ever arrived. It never
    # does (a byte every 0.2 s), and the body deadline answers first.
    deadline = time.monotonic() + WAIT_S
    received, closed = b"", False
    while not closed and time.monotonic() < deadline:
        try:
            sock.send(b"{")
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        chunk, closed = _read_until_closed(sock, time.monotonic() + 0.2)
        received += chunk
    sock.close()
    assert closed
    assert received.startswith(b"HTTP/1.1 408"), received
    assert b"connection: close" in received.lower()


def test_an_idle_keep_alive_connection_is_closed(receiver: Proc) -> None:
    sock = _connect(receiver)
    sock.sendall(HEALTH)
    response = _read_response(sock, time.monotonic() + WAIT_S)
    assert _status(response) == 200
    _, closed = _read_until_closed(sock, time.monotonic() + WAIT_S)
    sock.close()
    assert closed


def test_a_client_gone_mid_body_is_a_quiet_event(receiver: Proc) -> None:
    sock = _connect(receiver)
    sock.sendall(
        b'POST /hooks/postal HTTP/1.1\r\nHost: receiver\r\nContent-Length: 1000\r\n\r\n{"a": '
    )
    sock.close()
    _wait_for(
        lambda: any(e["event"] == "receiver.client_disconnected" for e in _log_events(receiver)),
        "the receiver.client_disconnected event",
    )
    log = receiver.log_path.read_text(errors="replace")
    assert "Traceback" not in log
    assert not [e for e in _log_events(receiver) if e.get("level") in ("error", "critical")]


def test_past_the_connection_cap_requests_get_503_and_the_server_still_answers(
    capped_receiver: Proc,
) -> None:
    held = [_connect(capped_receiver) for _ in range(CAP - 1)]
    try:
        # uvicorn has accepted all of them once each holds a half-sent head.
        for sock in held:
            sock.sendall(b"GET /health HTTP/1.1\r\n")
        refused_at = time.monotonic() + WAIT_S

        def refused() -> bool:
            sock = _connect(capped_receiver)
            try:
                sock.sendall(HEALTH)
                return _status(_read_response(sock, refused_at)) == 503
            finally:
                sock.close()

        _wait_for(refused, "a 503 past the cap")
    finally:
        for sock in held:
            sock.close()

    def answers() -> bool:
        sock = _connect(capped_receiver)
        try:
            sock.sendall(HEALTH)
            return _status(_read_response(sock, time.monotonic() + WAIT_S)) == 200
        finally:
            sock.close()

    _wait_for(answers, "a 200 once the held connections are gone")
