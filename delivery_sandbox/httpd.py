"""The socket layer: a threaded HTTP/1.1 keep-alive server whose connections can misbehave.

Built on the standard library on purpose: the fault plan needs to abort a connection with a TCP
RST, or close it without answering, which HTTP frameworks do not allow.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import socketserver
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from delivery_sandbox.wire import Reply, json_reply, phrase

__all__ = ["App", "Connection", "SandboxHTTPServer"]


class Connection(Protocol):
    """What the request flow may do with the client connection."""

    connection_id: int

    def send(self, reply: Reply) -> None: ...

    def reset(self) -> None: ...

    def drop(self) -> None: ...


class App(Protocol):
    """The request flow behind the socket layer (``Sandbox`` implements it)."""

    quiet: bool
    max_body_bytes: int
    idle_timeout_s: float

    def public_path(self, target: str) -> str:
        """The request path as it may be logged: no query string, no key in the path."""

    def serve(
        self,
        conn: Connection,
        *,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        client_ip: str,
        received_at: float,
    ) -> None: ...


class SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # many clients open keep-alive connections at once
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        self._ids = itertools.count(1)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves socket.getfqdn(host): a DNS lookup we do not need.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def next_connection_id(self) -> int:
        return next(self._ids)

    def track(self, sock: socket.socket, open_: bool) -> None:
        with self._open_lock:
            if open_:
                self._open.add(sock)
            else:
                self._open.discard(sock)

    def close_connections(self) -> None:
        """Wake every handler blocked on an idle keep-alive connection, so stop is prompt."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, ValueError)):
            return  # the client went away (or we dropped it on purpose)
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "delivery-sandbox/0.1"
    sys_version = ""
    disable_nagle_algorithm = True  # headers and body go out in one write anyway
    server: SandboxHTTPServer

    def setup(self) -> None:
        self.request.settimeout(self.server.app.idle_timeout_s)  # idle keep-alive
        super().setup()
        self.connection_id = self.server.next_connection_id()
        self._gone = False
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        with contextlib.suppress(OSError, ValueError):
            super().finish()

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _serve(self) -> None:
        received_at = time.time()
        body = self._read_body()
        if body is None:
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.app.serve(
            self,
            method=self.command,
            target=self.path,
            headers=headers,
            body=body,
            client_ip=str(self.client_address[0]),
            received_at=received_at,
        )

    def _read_body(self) -> bytes | None:
        limit = self.server.app.max_body_bytes
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked(limit)
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        if not raw_length.strip().isdigit():
            self._refuse(400, "invalid Content-Length")
            return None
        length = int(raw_length)
        if length > limit:
            self._refuse(413, "request body too large")
            return None
        return self.rfile.read(length)

    def _read_chunked(self, limit: int) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                self._refuse(400, "invalid chunk size")
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > limit:
                self._refuse(413, "request body too large")
                return None
            chunks.append(self.rfile.read(size))
            self.rfile.readline(16)

    def _refuse(self, status: int, message: str) -> None:
        self.close_connection = True
        self.send(json_reply(status, {"error": message}, outcome="refused"))

    # --- Connection -------------------------------------------------------------------------

    def send(self, reply: Reply) -> None:
        if self._gone:
            return
        body = reply.body
        content_type = reply.content_type
        if content_type.startswith(("application/json", "text/")) and "charset" not in content_type:
            content_type += "; charset=utf-8"
        lines = [
            f"{self.protocol_version} {reply.status} {phrase(reply.status)}",
            f"Server: {self.version_string()}",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{name}: {value}" for name, value in reply.headers.items()]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # Logged before the write: a client that has its answer can rely on the line being there.
        self.log_request(reply.status, len(body))
        self.wfile.write(head + body)  # one write: no Nagle/delayed-ACK stall on keep-alive

    def reset(self) -> None:
        """Abort with a TCP RST: SO_LINGER on with a zero timeout, then close the descriptor."""
        self.close_connection = True
        self._gone = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.server.track(self.connection, False)
            os.close(self.connection.detach())

    def drop(self) -> None:
        """Close without answering (an orderly FIN once the handler returns)."""
        self.close_connection = True
        self._gone = True

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The stdlib logs the raw request line, whose query string carries Partner API keys.
        path = self.server.app.public_path(self.path)
        self.log_message('"%s %s" %s %s', self.command, path, str(code), str(size))

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.app.quiet:
            super().log_message(format, *args)
