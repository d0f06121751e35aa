"""The shared driver: everything a provider module declares, and the fixed send algorithm.

A provider is one module with one :class:`Driver` subclass. The class declares the provider's
identity (``name``, ``channel``), its settings (``default_base_url``, ``extra_settings``), its
documented rate limits (``rate_limits``, :meth:`Driver.limiter_bucket`), the message rules it adds
to the channel shape (:meth:`Driver.check_message`) and, for reconciliation,
:meth:`Driver.reconcile_tag` / :meth:`Driver.reconcile`. It fills in the wire format:
:meth:`Driver.build_request` and :meth:`Driver.parse_response`, and overrides
:meth:`Driver.classify_status` only for a documented quirk (citing its page under docs/providers/).

:meth:`Driver.send` is the algorithm every delivery follows: check the rules → build the
request → pass a gate → transmit → parse and classify the answer. The delivery flow runs the
same steps itself (:meth:`Driver.build`, its own gate in ``worker.delivery.pipeline``,
:meth:`transmit`, :meth:`parse_response`; for a batch :meth:`build_batch_request` and
:meth:`parse_batch_response`), so a driver never calls back into the flow. Transmission,
bounded reads, connection-level retries, the mapping of httpx errors and the shared status
mapping live here once.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Mapping, Sequence
from datetime import datetime
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
    AccountBlockedError,
    ConfigurationError,
    DeliveryError,
    PermanentError,
    ThrottledError,
    TransientError,
    UnknownOutcomeError,
)
from worker.http import join_url, map_transport_error, parse_retry_after, read_bounded
from worker.models import Channel, EmailMessage, SmsMessage, VoiceMessage
from worker.providers._util import as_float, provider_id
from worker.providers.lookup import LookupTarget
from worker.providers.types import (
    Balance,
    CancelAtProvider,
    Gate,
    RuleViolation,
    SendContext,
    SendOutcome,
)
from worker.redaction import register_secret
from worker.stores.limiter import Limit
from worker.stores.suppression import Reason
from worker.tracking.events import DeliveryEvent

__all__ = [
    "Balance",
    "CancelAtProvider",
    "Driver",
    "Gate",
    "RuleViolation",
    "SendContext",
    "SendOutcome",
]

log = structlog.get_logger(__name__)

M = TypeVar("M", EmailMessage, SmsMessage, VoiceMessage)


class _ConnectFailed(Exception):
    """Internal: a connection-level failure that is safe to retry within the attempt."""

    def __init__(self, error: DeliveryError) -> None:
        self.error = error


class Driver(ABC, Generic[M]):
    """One provider's declarations and wire format over a shared, injected ``httpx.Client``."""

    # -- declarations (read by the registry, config, the limiter and the router) ----------------

    name: ClassVar[str]
    channel: ClassVar[Channel]
    default_base_url: ClassVar[str | None] = None
    """``None``: the operator must set ``DELIVERY_<NAME>_BASE_URL`` (a self-hosted server)."""
    extra_settings: ClassVar[Mapping[str, str]] = {}
    """Settings beyond the API key and base URL, name → description. Each is read from
    ``DELIVERY_<NAME>_<SETTING>`` and passed to the constructor as a keyword argument."""
    rate_limits: ClassVar[Mapping[str, tuple[Limit, ...]]] = {"send": ()}
    """Documented limits per bucket, all per source IP (``DELIVERY_RATE_LIMITS`` overrides)."""
    accepts_raw: ClassVar[bool] = False
    """Email: takes a complete RFC 2822 message (``EmailMessage.raw``)."""
    batch_limit: ClassVar[int] = 0
    """Batching (``worker.batching``, with ``DELIVERY_BATCHING`` on): ``0``, every message is its
    own request; else the most messages one bulk request carries, sent by :meth:`send_batch`
    for messages of equal :meth:`batch_key`. Declared only where the provider answers per item
    and can look an item up after a lost answer."""
    supports_reconcile: ClassVar[bool] = False
    supports_idempotency: ClassVar[bool] = False
    default_retry_after_s: ClassVar[float] = 1.0
    """The wait after a 429 that carries no ``Retry-After``."""
    connect_attempts: ClassVar[int] = 3
    status_lookup: ClassVar[bool] = False
    """The provider documents a status lookup (:meth:`lookup_status`): its sent deliveries are
    polled until a final state. ``False``: they stay at ``sent`` unless a push says more."""
    status_batch_size: ClassVar[int] = 1
    """Targets per lookup request (:meth:`lookup_groups`)."""
    status_bucket: ClassVar[str] = "send"
    """The :attr:`rate_limits` bucket lookups draw on: the provider counts them with sends."""

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

    @classmethod
    def check_message(cls, message: M) -> None:
        """Raise :class:`RuleViolation` for a message this provider would refuse.

        The rules the provider adds to the channel shape (recipient counts, attachment limits,
        tag formats), each citing docs/providers/. Checked at enqueue for the named provider (or to
        route), and again by :meth:`send`.
        """

    @classmethod
    def limiter_bucket(cls, message: M) -> str:
        """Which of :attr:`rate_limits` a message draws on."""
        return "send"

    @classmethod
    def reconcile_tag(cls, message: M, delivery_id: str) -> str | None:
        """The tag sent on every attempt of a delivery, for :meth:`reconcile`; ``None``: none."""
        return None

    @classmethod
    def batch_key(cls, message: M) -> Hashable | None:
        """Messages with equal keys may share one batch request; ``None``: this one goes alone."""
        return None

    def send_batch(
        self, messages: Sequence[M], tag: str, gate: Gate, *, bulk: bool = False
    ) -> list[SendOutcome | DeliveryError | None]:
        """One request for ``messages`` (equal :meth:`batch_key`, distinct recipients), tagged
        ``tag``; ``gate`` is called once, right before it leaves.

        Answers one entry per message: accepted, refused (that message only), or ``None`` when
        the provider refused the request as a whole for some message's sake and accepted
        nothing (the caller sends those again, with ``bulk=True`` or one by one). An error that
        concerns the request (transport, envelope, account) is raised.
        """
        request = self.build_batch_request(messages, tag, bulk=bulk)
        gate()
        return self.parse_batch_response(self.transmit(request), messages, request)

    def build_batch_request(
        self, messages: Sequence[M], tag: str, *, bulk: bool = False
    ) -> httpx.Request:
        """The one request of :meth:`send_batch` (a provider that batches fills this in)."""
        raise NotImplementedError(f"{self.name} does not batch")

    def parse_batch_response(
        self, response: httpx.Response, messages: Sequence[M], request: httpx.Request
    ) -> list[SendOutcome | DeliveryError | None]:
        """One answer per message of :meth:`build_batch_request`'s ``request``."""
        raise NotImplementedError(f"{self.name} does not batch")

    # -- the fixed algorithm -------------------------------------------------------------------

    def send(self, message: M, ctx: SendContext, gate: Gate | None = None) -> SendOutcome:
        """Check → build → ``gate`` → transmit → parse (which classifies a refusal).

        ``gate`` runs last before the bytes leave: the provider counts arrivals, so any work
        between the limiter's grant and the send would only add jitter to our spacing.
        """
        request = self.build(message, ctx)
        if gate is not None:
            gate()
        response = self.transmit(request)
        return self.parse_response(response, message, ctx)

    def build(self, message: M, ctx: SendContext) -> httpx.Request:
        """Check, then build: the request :meth:`send` would transmit. The delivery flow calls
        ``build``, passes its own gate, then :meth:`transmit` and :meth:`parse_response`: the
        driver never calls back into the flow."""
        try:
            self.check_message(message)
        except RuleViolation as exc:
            # A message routed or enqueued under other rules must not lose content silently.
            raise PermanentError(f"{self.name}: {exc}", provider=self.name) from None
        return self.build_request(message, ctx)

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

    def classify_status(
        self, response: httpx.Response, message: str, *, provider_code: str | None = None
    ) -> DeliveryError:
        """The error for an answer whose HTTP status says it failed: the shared mapping.

        A provider overrides this only for a documented quirk, citing docs/providers/, and falls
        back to ``super()`` for everything else.
        """
        status = response.status_code
        retry_after = self.retry_after_s(response)
        context: dict[str, Any] = {
            "provider": self.name,
            "status_code": status,
            "provider_code": provider_code,
        }
        if status == 429:
            wait_s = retry_after or self.default_retry_after_s
            return ThrottledError(message, retry_after_s=wait_s, **context)
        if status >= 500 or status == 408:
            return TransientError(message, retry_after_s=retry_after, **context)
        if status in (401, 403) or 300 <= status < 400:
            # 3xx: redirects are not followed; the base URL points at the wrong place.
            return ConfigurationError(message, **context)
        if status == 402:
            # Payment required: no credit; pause the provider (house style, rule 4).
            return AccountBlockedError(message, **context)
        return PermanentError(message, **context)

    @staticmethod
    def retry_after_s(response: httpx.Response) -> float | None:
        """The answer's ``Retry-After``, in seconds (delta or HTTP-date), if it has one."""
        return parse_retry_after(response.headers.get("Retry-After"))

    def check_balance(self) -> Balance | None:
        """The account balance, or ``None`` where the provider has no balance endpoint."""
        return None

    # -- status lookups (delivery tracking) ----------------------------------------------------

    @classmethod
    def lookup_ref(cls, recipient: str) -> str | None:
        """What :meth:`lookup_status` needs of a recipient beyond its provider id (kept only
        while the delivery is polled); ``None``: nothing."""
        return None

    @classmethod
    def lookup_groups(cls, targets: list[LookupTarget]) -> list[list[LookupTarget]]:
        """Targets batched as the lookup asks for them: :attr:`status_batch_size` a request."""
        size = max(1, cls.status_batch_size)
        return [targets[i : i + size] for i in range(0, len(targets), size)]

    def lookup_status(
        self, targets: list[LookupTarget], gate: Gate | None = None
    ) -> list[DeliveryEvent]:
        """What the provider says of one group of targets, as ``poll`` events. ``gate`` runs
        before every request (the global limiter). A request-level failure raises a classified
        :class:`~worker.errors.DeliveryError`; an unreadable item is ``unknown`` or skipped."""
        raise NotImplementedError(f"{self.name} declares no status lookup")

    @classmethod
    def suppression_reason(cls, event: DeliveryEvent) -> Reason | None:
        """What the provider's own words in ``event`` say of the recipient for the suppression
        lists, beyond what its type says (``worker.tracking.service``): a hold on the
        provider's own suppression list, say. ``None``: nothing more."""
        return None

    def reconcile(self, message: M, ctx: SendContext) -> SendOutcome | None:
        """After an unknown outcome: the outcome of the earlier send if the provider can tell.

        ``None`` means the provider cannot tell (or says nothing was accepted); the service
        then decides whether a resend is acceptable.
        """
        return None

    # -- provider-native scheduling and cancel (worker.scheduling) ------------------------------

    native_schedule_min_lead_s: ClassVar[float | None] = None
    """``None``: the provider cannot schedule a send (the worker holds the message until its
    ``send_at``). Otherwise the least time ahead a ``send_at`` must be to be handed over; a
    nearer one is held by the worker, which can still cancel it up to the last moment."""

    @classmethod
    def native_schedule_fits(cls, when: datetime) -> bool:
        """Whether the provider's schedule format expresses ``when`` exactly."""
        return False

    def schedule_fields(self, when: datetime) -> dict[str, Any]:
        """The request fields that schedule a send at ``when`` (only called when it fits)."""
        raise NotImplementedError

    def scheduled_payload(self, ctx: SendContext) -> dict[str, Any]:
        """For ``build_request``: the schedule fields of a natively scheduled send, else ``{}``."""
        return {} if ctx.schedule_at is None else self.schedule_fields(ctx.schedule_at)

    def cancel_scheduled(self, provider_message_id: str) -> CancelAtProvider:
        """Cancel a send scheduled at the provider."""
        return CancelAtProvider("error", f"{self.name} has no cancel endpoint")

    # -- helpers for provider modules ----------------------------------------------------------

    def url(self, path: str) -> str:
        return join_url(self.base_url, path)

    def post_json(
        self, path: str, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> httpx.Request:
        return self.client.build_request("POST", self.url(path), json=payload, headers=headers)

    def one_id_outcome(
        self,
        response: httpx.Response,
        data: Mapping[str, Any],
        raw_id: Any,
        recipients: Iterable[str],
        *,
        id_field: str,
        warnings: tuple[str, ...] = (),
    ) -> SendOutcome:
        """A success answer whose one id covers every recipient of the request (SMS Partner's
        ``message_id``, Mail Partner's ``messageId``, Voice Partner's ``campaignId``), with its
        ``cost``/``currency``. Success without a readable id is an unknown outcome: the
        provider may have accepted the send and a blind resend could duplicate it, so the
        pipeline reconciles first where the provider can be asked."""
        message_id = provider_id(raw_id)
        if message_id is None:
            raise UnknownOutcomeError(
                f"{self.name} success answer has no {id_field}",
                provider=self.name,
                status_code=response.status_code,
            )
        currency = data.get("currency")
        return SendOutcome(
            provider=self.name,
            provider_message_ids=dict.fromkeys(recipients, message_id),
            cost=as_float(data.get("cost")),
            currency=currency if isinstance(currency, str) else None,
            warnings=warnings,
        )

    def per_number(self, whole: SendOutcome, numbers: list[str]) -> list[SendOutcome]:
        """One outcome per number of a request whose one answer covers them all
        (:meth:`one_id_outcome`): each its own id, and an even share of the request's cost
        (the providers give only the total; destination prices may differ)."""
        share = None if whole.cost is None else round(whole.cost / len(numbers), 6)
        return [
            SendOutcome(
                provider=self.name,
                provider_message_ids={n: whole.provider_message_ids[n]},
                cost=share,
                currency=whole.currency,
            )
            for n in numbers
        ]

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
        message = f"{self.name} {why} (HTTP {status})"
        if status == 429:
            return self.classify_status(response, f"{self.name} throttled the request ({why})")
        if 200 <= status < 300:
            # The provider may have accepted the send but the answer is unreadable.
            return UnknownOutcomeError(message, provider=self.name, status_code=status)
        return TransientError(message, provider=self.name, status_code=status)
