"""The receiver's deadlines: a request head and a request body must arrive in bounded time.

uvicorn bounds some things itself, and ``serve`` sets them: ``timeout_keep_alive`` (an idle
keep-alive connection), ``limit_concurrency`` (503 past the cap), ``h11_max_incomplete_event_size``
(the largest request head) and ``backlog``. Two gaps remain, filled here:

* **The request head.** uvicorn (0.55 included) starts no timer when a connection opens, and
  cancels the keep-alive timer on the first byte of the next request: a client that opens a
  connection and sends nothing, or half a header, holds it for ever (slowloris).
  :class:`HeaderDeadlineH11Protocol` is uvicorn's own h11 protocol with one timer added: armed
  when the connection opens (or when the first byte of a later request arrives), cancelled when
  h11 has parsed a whole request head, and closing the connection when it fires. It is the
  least code that does it: uvicorn's ``--http`` accepts a protocol class, and the timer uses the
  same ``loop.call_later`` handle uvicorn uses for its keep-alive timeout; a connection-level
  timer elsewhere (an ASGI middleware) never sees a request whose head did not arrive.
* **The body.** :class:`BodyDeadline` (ASGI middleware) reads the whole body under one
  ``asyncio.timeout`` (a deadline, not a per-chunk timeout: a byte every few seconds does not
  extend it) and answers 408 with ``Connection: close`` when it passes. It also bounds the body's
  size (413) and turns a client that disconnects mid-body into a quiet info event
  (``receiver.client_disconnected``) instead of a ``ClientDisconnect`` traceback. The app then
  receives the body already read.

Logs name no path: hint URLs carry their token.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import structlog
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["BodyDeadline", "HeaderDeadlineH11Protocol"]

log = structlog.get_logger("worker.receiver")


def _route(scope: Scope) -> str:
    path = str(scope.get("path", ""))
    if path == "/hooks/postal":
        return "postal"
    return "hint" if path.startswith("/hooks/") else "other"


class BodyDeadline:
    """Read the body within ``timeout_s`` and ``max_body_bytes``, then call ``app`` with it."""

    def __init__(self, app: ASGIApp, *, timeout_s: float, max_body_bytes: int) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = _route(scope)
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        # Nobody to answer: a quiet event, no traceback (the client went away).
                        log.info("receiver.client_disconnected", route=route, received_bytes=size)
                        return
                    body = message.get("body", b"")
                    size += len(body)
                    if size > self.max_body_bytes:
                        log.info("receiver.refused", route=route, status=413)
                        error = f"body larger than {self.max_body_bytes} bytes"
                        await _closing(413, error)(scope, receive, send)
                        return
                    chunks.append(body)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            log.info("receiver.body_timeout", route=route, received_bytes=size, status=408)
            error = f"request body not received within {self.timeout_s:g} s"
            await _closing(408, error)(scope, receive, send)
            return

        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect, when it comes

        await self.app(scope, replay, send)


def _closing(status: int, error: str) -> JSONResponse:
    """A refusal that also closes the connection: the rest of the body is never read."""
    return JSONResponse(
        {"status": "refused", "error": error}, status_code=status, headers={"Connection": "close"}
    )


class HeaderDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline from a request's first byte to its complete head.

    ``header_timeout_s`` is read from the ``DELIVERY_*`` settings, so that every server process
    (``--workers``) gets it from its environment: uvicorn imports this class by name in each.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from worker.config import get_settings

        self.header_timeout_s = get_settings().receiver_header_timeout_s
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()  # a connection that never sends a byte is closed too

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._arm_header_deadline()  # a head started (or not yet): the deadline holds
        else:
            self._cancel_header_deadline()  # the head is parsed: the body has its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        # The keep-alive timer (uvicorn's) covers the wait for the next request's first byte.
        self._cancel_header_deadline()
        super().on_response_complete()

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None and self.timeout_keep_alive_task is None:
            self._header_deadline = self.loop.call_later(
                self.header_timeout_s, self._header_deadline_passed
            )

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            log.info("receiver.header_timeout", timeout_s=self.header_timeout_s)
            self.transport.close()
