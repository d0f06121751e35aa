"""A stand-in for the receiver: an HTTP server that keeps what the sandbox signs and pushes,
so a test can replay, forge or deliver it itself."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SIGNING_HEADERS = ("content-type", "user-agent", "x-postal-signature", "x-postal-signature-256",
                   "x-postal-signature-kid")  # fmt: skip


def signature_headers(headers: dict[str, str]) -> dict[str, str]:
    """The headers a Postal signature covers, as the sandbox sent them."""
    return {k: v for k, v in headers.items() if k.lower() in SIGNING_HEADERS}


@dataclass
class Catcher:
    server: ThreadingHTTPServer
    timeout_s: float
    seen: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/postal"

    def wait(self, count: int) -> list[tuple[bytes, dict[str, str]]]:
        """The first ``count`` requests caught (waits for them)."""
        deadline = time.monotonic() + self.timeout_s
        while len(self.seen) < count:
            assert time.monotonic() < deadline, "the sandbox sent no webhook"
            time.sleep(0.05)
        return list(self.seen)

    def wait_for(self, event: str) -> tuple[bytes, dict[str, str]]:
        """The first request caught whose JSON ``event`` is ``event`` (waits for it)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            for body, headers in list(self.seen):
                if json.loads(body)["event"] == event:
                    return body, headers
            assert time.monotonic() < deadline, f"the sandbox pushed no {event}"
            time.sleep(0.05)


@contextmanager
def catching(timeout_s: float) -> Iterator[Catcher]:
    """A catcher on a free loopback port, answering every POST 200, for the block's length."""
    holder: list[Catcher] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            holder[0].seen.append((body, dict(self.headers)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder.append(Catcher(server, timeout_s))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
