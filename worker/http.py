"""The HTTP boundary: client construction, bounded reads, and httpx errors mapped in one place."""

from __future__ import annotations

import contextvars
import email.utils
import ssl
import time
from collections.abc import Iterable, Iterator
from datetime import UTC
from typing import Any

import httpcore  # also imported here so it is loaded before a fork
import httpx

from worker.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_READ_TIMEOUT_S",
    "MAX_RESPONSE_BYTES",
    "DeadlineTransport",
    "build_client",
    "join_url",
    "map_transport_error",
    "parse_retry_after",
    "read_bounded",
]

MAX_RESPONSE_BYTES = 1024 * 1024
"""Provider answers are small JSON documents; anything larger is hostile or broken."""

USER_AGENT = "delivery-worker/0.1 (+httpx)"
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 30.0
"""The client's timeouts unless configured (``DELIVERY_HTTP_*_TIMEOUT_S`` default to these)."""
KEEPALIVE_EXPIRY_S = 30.0
"""How long an idle keep-alive connection is kept for reuse (httpx's default is 5 s).

A request on a fresh connection reaches the provider later than one on a warm connection (TCP,
and TLS against a real provider; here a new handler thread in the sandbox). That difference is
grant-to-arrival jitter the limiter's safety margin must absorb. In a large fleet each pool
process sends rarely: 16 workers x 8 processes share EmailMassivo's 10/s, so each process sends
about every 13 s, and with a 5 s expiry three requests in four went out on a new connection;
under load that jitter passed the 40 ms margin and the provider saw 11 requests in a second
(bench/rate_limit.py --processes 16). A connection the server has closed in the meantime is
noticed before reuse (httpcore checks that the socket is not readable) and replaced."""


# -- the whole-request deadline ---------------------------------------------------------------
#
# httpx's timeouts bound each socket operation, not a request: an answer trickled one byte per
# read timeout keeps a send alive forever, past the send lock that makes it the only one. The
# deadline below bounds the whole request (connect, write, headers, body). It is set when
# DeadlineTransport starts a request and cleared when its response is closed; the network
# backend, httpcore's extension point for sockets, gives each socket operation at most what is
# left of it, so a late byte ends the request with httpcore's own timeout (ReadTimeout once the
# request left: an unknown outcome, never a 200).

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "delivery_http_deadline", default=None
)


def _left(timeout: float | None, *, exc: type[Exception]) -> float | None:
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise exc("the request's total deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, exc=httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, exc=httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, exc=httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, exc=httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, left, local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, exc=httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _ClearOnClose(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            _deadline.set(None)


class DeadlineTransport(httpx.BaseTransport):
    """An HTTP transport whose every request ends within ``total_timeout_s``, body included.

    The sockets come from a network backend that caps each operation at the time left (see
    above); requests through any other transport are not bounded.
    """

    def __init__(self, *, total_timeout_s: float, **kwargs: Any) -> None:
        self.total_timeout_s = total_timeout_s
        self._inner = httpx.HTTPTransport(**kwargs)
        limits: httpx.Limits = kwargs.get("limits", httpx.Limits())
        # httpx does not pass a network backend through; the pool it builds without a proxy is
        # replaced by the same pool over the bounded backend (with the TLS context httpx has
        # already built: loading the CA bundle again would cost every process milliseconds).
        built = self._inner._pool
        self._inner._pool = httpcore.ConnectionPool(
            ssl_context=built._ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            local_address=kwargs.get("local_address"),
            retries=kwargs.get("retries", 0),
            network_backend=_DeadlineBackend(httpcore.SyncBackend()),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _deadline.set(time.monotonic() + self.total_timeout_s)
        try:
            response = self._inner.handle_request(request)
        except BaseException:
            _deadline.set(None)
            raise
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _ClearOnClose(response.stream)
        return response

    def close(self) -> None:
        self._inner.close()


def build_client(
    *,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    total_timeout_s: float | None = None,
    local_address: str | None = None,
    max_connections: int = 20,
) -> httpx.Client:
    """One client per worker process, reused for keep-alive and pooling.

    ``local_address`` binds outgoing connections to one source IP: the egress identity that
    providers rate-limit on. ``total_timeout_s`` bounds each request as a whole (connect to
    last byte; default: connect + read timeouts), which the per-operation timeouts do not.
    """
    total = total_timeout_s if total_timeout_s is not None else connect_timeout_s + read_timeout_s
    transport = DeadlineTransport(
        total_timeout_s=total,
        local_address=local_address,
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=10,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        ),
        retries=0,  # connection retries are ours (tenacity), so they can be counted and logged
    )
    timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s, pool=connect_timeout_s)
    return httpx.Client(
        transport=transport,
        timeout=timeout,
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
    )


def join_url(base_url: str, path: str) -> str:
    """Append ``path`` to ``base_url``, keeping any prefix the base has (a proxy, the sandbox)."""
    return base_url.rstrip("/") + "/" + path.lstrip("/")


def map_transport_error(exc: httpx.HTTPError, *, provider: str) -> DeliveryError:
    """Translate an httpx exception into the delivery taxonomy.

    The split that matters is whether the provider may have received the request: a failure
    before the request left (connect, pool) is safe to resend; a failure after it left (read
    timeout, dropped connection) is an unknown outcome that could duplicate a send.
    """
    name = type(exc).__name__
    message = f"{name} talking to {provider}"
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return TransientError(message, provider=provider)
    if isinstance(exc, httpx.WriteTimeout | httpx.WriteError):
        # The request body did not fully leave; a server cannot act on a half-read request.
        return TransientError(message, provider=provider)
    if isinstance(exc, httpx.ProxyError | httpx.UnsupportedProtocol | httpx.InvalidURL):
        return ConfigurationError(message, provider=provider)
    if isinstance(exc, httpx.LocalProtocolError):
        return PermanentError(message, provider=provider)
    if isinstance(exc, httpx.TooManyRedirects):
        return ConfigurationError(message, provider=provider)
    if isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)):
        return UnknownOutcomeError(message, provider=provider)
    if isinstance(exc, httpx.DecodingError):
        return UnknownOutcomeError(message, provider=provider)
    return UnknownOutcomeError(message, provider=provider)


def read_bounded(
    client: httpx.Client, request: httpx.Request, *, limit: int = MAX_RESPONSE_BYTES
) -> httpx.Response:
    """Send ``request`` and read at most ``limit`` bytes of the answer.

    The returned response is fully read and closed; a longer body is truncated (and will then
    fail to parse as JSON, which drivers classify).
    """
    response = client.send(request, stream=True)
    try:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
        body = b"".join(chunks)[:limit]
    finally:
        response.close()
    return httpx.Response(
        status_code=response.status_code,
        headers=[
            (k, v) for k, v in response.headers.multi_items() if k.lower() != "content-encoding"
        ],
        content=body,
        request=request,
    )


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), capped to 1 h."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = now if now is not None else time.time()
        seconds = when.timestamp() - current
        if seconds != seconds:  # NaN guard
            return None
    if seconds != seconds or seconds < 0:
        return 0.0 if seconds == seconds else None
    return min(seconds, 3600.0)
