"""The HTTP boundary: client construction, bounded reads, and httpx errors mapped in one place."""

from __future__ import annotations

import email.utils
import time
from datetime import UTC

import httpcore  # noqa: F401  (httpx imports it when a client is built: here, before a fork)
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


def build_client(
    *,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    local_address: str | None = None,
    max_connections: int = 20,
) -> httpx.Client:
    """One client per worker process, reused for keep-alive and pooling.

    ``local_address`` binds outgoing connections to one source IP: the egress identity that
    providers rate-limit on.
    """
    transport = httpx.HTTPTransport(
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
