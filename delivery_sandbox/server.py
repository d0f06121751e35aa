"""``Sandbox``: all five simulated providers behind one HTTP server, each under its prefix.

Per provider request: fault plan → rate limiter → provider → record → answer. Every attempt
counts in the provider's rate windows, including those the fault plan answers. ::

    with Sandbox(port=0, log_file="sandbox.jsonl") as sandbox:
        httpx.post(sandbox.url + "/emailmassivo/api/v1/external-mails/send", ...)
        sandbox.recorder.messages("emailmassivo")
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from delivery_sandbox.accounts import PREFIXES, Accounts
from delivery_sandbox.admin import ADMIN_PREFIX, handle_admin
from delivery_sandbox.config import SandboxConfig
from delivery_sandbox.faults import FaultPlan, FaultRule
from delivery_sandbox.httpd import Connection, SandboxHTTPServer
from delivery_sandbox.inbox import INBOX_PREFIX, handle_inbox
from delivery_sandbox.lifecycle import Listeners
from delivery_sandbox.providers import Env, Provider, build_providers
from delivery_sandbox.ratelimit import SlidingWindowLimiter, retry_after_header
from delivery_sandbox.state import Recorder
from delivery_sandbox.timeline import Timeline
from delivery_sandbox.webhooks import Webhooks
from delivery_sandbox.wire import Reply, Request, json_reply

__all__ = ["Sandbox"]

# Longest prefix first, so a prefix that extends another one wins.
_ROUTING = sorted(PREFIXES.items(), key=lambda item: len(item[1]), reverse=True)


class Sandbox:
    """The simulator, in-process (``start``/``stop``) or as ``python -m delivery_sandbox``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        log_file: str | Path | None = None,
        *,
        config: SandboxConfig | None = None,
        credits: Mapping[str, int] | None = None,
        fault_rules: Sequence[FaultRule] = (),
        quiet: bool = True,
    ) -> None:
        self.config = config or SandboxConfig()
        self._starting_config = self.config
        self.quiet = quiet
        self.max_body_bytes = self.config.max_body_bytes
        self.idle_timeout_s = self.config.idle_timeout_s
        self.accounts = Accounts(credits)
        self.listeners = Listeners()
        self.env = Env(
            accounts=self.accounts, config=self.config, timeline=Timeline(self.listeners)
        )
        self.providers: dict[str, Provider] = build_providers(self.env)
        self.faults = FaultPlan(fault_rules)
        self.limiter = SlidingWindowLimiter()
        self.recorder = Recorder(log_file)
        self._httpd = SandboxHTTPServer((host, port), self)
        self._host = host
        self._thread: threading.Thread | None = None
        self._started_at = time.monotonic()
        # Postal webhooks and SMS/Voice callbacks, sent off the request threads (webhooks.py).
        self.webhooks = Webhooks()
        self.webhooks.subscribe_to(self.listeners)

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def uptime_s(self) -> float:
        return round(time.monotonic() - self._started_at, 3)

    def provider_url(self, provider: str) -> str:
        """The base URL a driver uses: ``DELIVERY_<NAME>_BASE_URL``."""
        return self.url + PREFIXES[provider]

    def start(self) -> Sandbox:
        """Serve on a background thread; returns at once, ready to accept connections."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.02},
                name=f"sandbox-{self.port}",
                daemon=True,
            )
            self._thread.start()
        self.env.timeline.start()
        return self

    def stop(self) -> None:
        """Stop accepting, wake sleeping faults and idle connections, close the log file."""
        self.env.stopping.set()
        self.env.timeline.stop()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
        self._httpd.close_connections()
        self.recorder.close()
        self.webhooks.close()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def configure(self, **changes: Any) -> SandboxConfig:
        """Change :data:`~delivery_sandbox.config.RUNTIME_FIELDS` while running."""
        self.config = self.env.config = dataclasses.replace(self.config, **changes)
        return self.config

    def reset(self) -> None:
        """Forget records, faults, rate windows and provider state; restore the balances and
        the starting config."""
        self.config = self.env.config = self._starting_config
        self.faults.clear()
        self.limiter.reset()
        self.accounts.restore()
        for provider in self.providers.values():
            provider.reset()
        self.webhooks.reset()
        self.env.timeline.reset()
        self.recorder.reset(time=round(time.time(), 6))

    # --- request flow -----------------------------------------------------------------------

    def public_path(self, target: str) -> str:
        path = target.partition("?")[0]
        for name, prefix in _ROUTING:
            if path.startswith(prefix + "/"):
                return prefix + self.providers[name].public_route(path[len(prefix) :])
        return path

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
    ) -> None:
        path, _, raw_query = target.partition("?")
        query = parse_qs(raw_query, keep_blank_values=True)
        if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
            conn.send(handle_admin(self, method, path, query, body))
            return
        if path == INBOX_PREFIX or path.startswith(INBOX_PREFIX + "/"):
            conn.send(handle_inbox(self, method, path, query))
            return
        for name, prefix in _ROUTING:
            if path == prefix or path.startswith(prefix + "/"):
                request = Request(
                    method=method,
                    path=path,
                    route=path[len(prefix) :] or "/",
                    query=query,
                    headers=headers,
                    body=body,
                    client_ip=client_ip,
                    received_at=received_at,
                )
                self._serve_provider(self.providers[name], request, conn)
                return
        known = {name: prefix for name, prefix in PREFIXES.items()}
        conn.send(json_reply(404, {"error": f"no provider at {path}", "providers": known}))

    def _serve_provider(self, provider: Provider, request: Request, conn: Connection) -> None:
        started = time.perf_counter()
        rule = self.faults.pick(provider.name, request.method, request.path)
        action = rule.action if rule is not None else None
        if rule is not None and action in ("reset", "status"):
            # The provider's throttler saw the attempt too (ratelimit: every attempt counts).
            self.limiter.count(provider.name, request.client_ip, provider.windows(request))
        if rule is not None and action == "reset":
            conn.reset()
            self._record(provider, request, conn, None, "reset", started, answered=False)
            return
        if rule is not None and action == "status":
            reply = provider.fault_reply(rule.status)
            if rule.retry_after is not None:
                reply.headers["Retry-After"] = rule.retry_after
            reply.outcome, reply.admitted = "fault", False
            self._record(provider, request, conn, reply, "status", started)
            conn.send(reply)
            return
        if rule is not None and action in ("latency", "timeout"):
            # ``timeout`` waits *before* the provider processes the request: a real provider can
            # accept a send seconds after the client gave up (late acceptance).
            self.env.stopping.wait(rule.delay_ms / 1000)
        reply = self._answer(provider, request)
        if rule is not None and action == "accept_then_drop":
            self._record(provider, request, conn, reply, action, started, answered=False)
            conn.drop()
            return
        self._record(provider, request, conn, reply, action, started)
        conn.send(reply)  # after a ``timeout``, to a client that is usually gone

    def _answer(self, provider: Provider, request: Request) -> Reply:
        wait_s = self.limiter.admit(provider.name, request.client_ip, provider.windows(request))
        if wait_s is not None:
            reply = provider.throttled(request, retry_after_header(wait_s))
            reply.outcome, reply.admitted = "refused", False
            return reply
        try:
            return provider.handle(request)
        except Exception:  # a sandbox bug must not kill the connection thread
            traceback.print_exc(file=sys.stderr)
            return json_reply(500, {"error": "sandbox internal error"}, outcome="error")

    def _record(
        self,
        provider: Provider,
        request: Request,
        conn: Connection,
        reply: Reply | None,
        fault: str | None,
        started: float,
        *,
        answered: bool = True,
    ) -> None:
        """Store the request (status ``None`` when no answer was written) and its message."""
        route = provider.public_route(request.route)
        record: dict[str, Any] = {
            "time": round(request.received_at, 6),
            "provider": provider.name,
            "method": request.method,
            "path": PREFIXES[provider.name] + route,
            "route": route,
            "client_ip": request.client_ip,
            "connection": conn.connection_id,
            "status": reply.status if answered and reply is not None else None,
            "outcome": reply.outcome if reply is not None else "fault",
            "fault": fault,
            "admitted": reply.admitted if reply is not None else False,
            "message_id": reply.message_id if reply is not None else None,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        message = reply.message if reply is not None else None
        self.recorder.record(record, message, time=record["time"])
