"""The shared driver algorithm: build the request → transmit → parse the answer.

A provider module fills in :meth:`Driver.build_request` and :meth:`Driver.parse_response`
(and, where the provider has one, :meth:`Driver.check_balance` / :meth:`Driver.reconcile`).
Transmission, bounded reads, connection-level retries and the mapping of httpx errors live
here once.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import httpx
import structlog
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from worker.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentError,
    ThrottledError,
    TransientError,
    UnknownOutcomeError,
)
from worker.http import join_url, map_transport_error, parse_retry_after, read_bounded
from worker.models import Channel, EmailMessage, SmsMessage, VoiceMessage
from worker.redaction import register_secret

__all__ = ["Balance", "Driver", "SendContext", "SendOutcome"]

log = structlog.get_logger(__name__)

M = TypeVar("M", EmailMessage, SmsMessage, VoiceMessage)


@dataclass(frozen=True)
class SendContext:
    """What a driver may know about the delivery besides the message itself."""

    delivery_id: str
    idempotency_key: str
    """Stable across every attempt of one delivery; sent to providers that support one."""
    attempt: int = 1
    tag: str | None = None
    """The provider-side tag sent on every attempt (SMS Partner): the caller's, else one unique to
    this delivery; an unknown outcome is reconciled by it."""
    tag_is_callers: bool = False
    """The tag was chosen by the caller, so other sends may carry it too."""
    sent_after: float | None = None
    """When the delivery's first attempt started (epoch seconds): a send found by a shared tag
    that is older than this is not this delivery's."""


@dataclass(frozen=True)
class SendOutcome:
    """A provider accepted the message."""

    provider: str
    provider_message_ids: dict[str, str] = field(default_factory=dict)
    """Provider id per recipient (raw address/number; masked before it leaves the worker)."""
    rejected_recipients: dict[str, str] = field(default_factory=dict)
    """Recipients the provider refused or did not confirm although it accepted the message,
    raw address/number → reason (masked and scrubbed before it leaves the worker)."""
    cost: float | None = None
    currency: str | None = None
    warnings: tuple[str, ...] = ()
    """Caller fields the provider did not receive, each ``"<field>: why"`` (never a value)."""


@dataclass(frozen=True)
class Balance:
    """An account balance as the provider reports it."""

    provider: str
    has_credit: bool
    credits: float | None = None
    currency: str | None = None


class _ConnectFailed(Exception):
    """Internal: a connection-level failure that is safe to retry within the attempt."""

    def __init__(self, error: DeliveryError) -> None:
        self.error = error


class Driver(ABC, Generic[M]):
    """One provider's wire format over a shared, injected ``httpx.Client``."""

    name: ClassVar[str]
    channel: ClassVar[Channel]
    default_base_url: ClassVar[str | None] = None
    connect_attempts: ClassVar[int] = 3

    def __init__(self, client: httpx.Client, *, api_key: str, base_url: str | None = None) -> None:
        base = base_url or self.default_base_url
        if not base:
            raise ConfigurationError(
                f"DELIVERY_{self.name.upper()}_BASE_URL is not set", provider=self.name
            )
        if not api_key:
            raise ConfigurationError(
                f"DELIVERY_{self.name.upper()}_API_KEY is not set", provider=self.name
            )
        try:
            parsed = httpx.URL(base)
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            # A bad base URL would otherwise surface as httpx.InvalidURL (not an httpx.HTTPError)
            # from build_request, outside the error taxonomy.
            raise ConfigurationError(
                f"DELIVERY_{self.name.upper()}_BASE_URL is not an http(s) URL", provider=self.name
            )
        # Errors scrub registered secrets; a driver built outside Settings registers its own key.
        register_secret(api_key)
        self.client = client
        self.base_url = base
        self._api_key = api_key

    def __repr__(self) -> str:  # never the key
        return f"<{type(self).__name__} base_url={self.base_url!r}>"

    # -- the fixed algorithm -------------------------------------------------------------------

    def send(self, message: M, ctx: SendContext) -> SendOutcome:
        request = self.build_request(message, ctx)
        response = self.transmit(request)
        return self.parse_response(response, message, ctx)

    def transmit(self, request: httpx.Request) -> httpx.Response:
        """Send with a short in-attempt retry for failures that happen before the request leaves.

        Failures after it left (read timeouts, dropped connections) are not retried here: they
        are unknown outcomes for the delivery service to reconcile or retry durably.
        """
        retrying = Retrying(
            retry=retry_if_exception_type(_ConnectFailed),
            stop=stop_after_attempt(self.connect_attempts),
            # Not wait_exponential_jitter(initial=...): deprecated in recent tenacity (and a
            # DeprecationWarning is an error under the test settings).
            wait=wait_exponential(multiplier=0.05, max=0.5) + wait_random(0, 0.05),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    try:
                        return read_bounded(self.client, request)
                    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                        log.info(
                            "driver.connect_failed",
                            provider=self.name,
                            error=type(exc).__name__,
                            try_number=attempt.retry_state.attempt_number,
                        )
                        raise _ConnectFailed(map_transport_error(exc, provider=self.name)) from exc
        except _ConnectFailed as failed:
            raise failed.error from failed.__cause__
        except httpx.HTTPError as exc:
            raise map_transport_error(exc, provider=self.name) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- provider hooks ------------------------------------------------------------------------

    @abstractmethod
    def build_request(self, message: M, ctx: SendContext) -> httpx.Request:
        """The provider's send request for ``message``."""

    @abstractmethod
    def parse_response(self, response: httpx.Response, message: M, ctx: SendContext) -> SendOutcome:
        """A :class:`SendOutcome`, or raise a :class:`~worker.errors.DeliveryError`."""

    def check_balance(self) -> Balance | None:
        """The account balance, or ``None`` where the provider has no balance endpoint."""
        return None

    def reconcile(self, message: M, ctx: SendContext) -> SendOutcome | None:
        """After an unknown outcome: the outcome of the earlier send if the provider can tell.

        ``None`` means the provider cannot tell (or says nothing was accepted); the service
        then decides whether a resend is acceptable.
        """
        return None

    supports_reconcile: ClassVar[bool] = False
    supports_idempotency: ClassVar[bool] = False

    # -- helpers for provider modules ----------------------------------------------------------

    def url(self, path: str) -> str:
        return join_url(self.base_url, path)

    def post_json(
        self, path: str, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> httpx.Request:
        return self.client.build_request("POST", self.url(path), json=payload, headers=headers)

    def json_object(self, response: httpx.Response) -> dict[str, Any]:
        """The body as a JSON object, or a classified error (never a crash)."""
        try:
            data = json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            raise self._unparseable(response, "answer is not JSON") from None
        if not isinstance(data, dict):
            raise self._unparseable(
                response, f"answer is JSON {type(data).__name__}, not an object"
            )
        return data

    def _unparseable(self, response: httpx.Response, why: str) -> DeliveryError:
        status = response.status_code
        if status == 429:
            return ThrottledError(
                f"{self.name} throttled the request ({why})",
                provider=self.name,
                status_code=status,
                retry_after_s=parse_retry_after(response.headers.get("Retry-After")) or 1.0,
            )
        if 200 <= status < 300:
            # The provider may have accepted the send but the answer is unreadable.
            return UnknownOutcomeError(
                f"{self.name} {why} (HTTP {status})", provider=self.name, status_code=status
            )
        return TransientError(
            f"{self.name} {why} (HTTP {status})", provider=self.name, status_code=status
        )

    def http_status_error(self, response: httpx.Response, message: str) -> DeliveryError:
        """Classify a non-success HTTP status that the provider module does not know better."""
        status = response.status_code
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == 429:
            return ThrottledError(
                message, provider=self.name, status_code=status, retry_after_s=retry_after or 1.0
            )
        if status >= 500 or status == 408:
            return TransientError(
                message, provider=self.name, status_code=status, retry_after_s=retry_after
            )
        if status in (401, 403):
            return ConfigurationError(message, provider=self.name, status_code=status)
        return PermanentError(message, provider=self.name, status_code=status)
