"""The delivery error taxonomy: the exception type says what the worker does next.

::

    DeliveryError                       base; carries provider=, status_code=, provider_code=
    ├── TransientError                  retry with exponential backoff (5xx, 503, code 500, resets)
    │   ├── UnknownOutcomeError         the request may have reached the provider (read timeout,
    │   │                               connection dropped after sending): reconcile, then resend
    │   ├── RecipientDeferredError      the provider is up but this recipient is temporarily
    │   │                               unavailable: retried on the error budget, never feeds
    │   │                               the circuit breaker (``provider_fault = False``)
    │   └── ThrottledError              the provider asked us to slow down (429, Retry-After);
    │                                   waits on its own budget, never consumes error retries
    ├── DeferredError                   not this message before ``not_before`` (a legal sending
    │                                   window, SMS Partner codes 22/23): reschedule only it; never
    │                                   holds the shared limiter, feeds the breaker or consumes
    │                                   error retries
    ├── AccountBlockedError             no credit (402, code 11, NOT_CREDIT): pause the provider,
    │                                   park the message
    ├── PermanentError                  never retried (validation, unroutable destination)
    │   └── RecipientRejectedError      the recipient opted out / is suppressed (STOP, unsubscribed)
    └── ConfigurationError              bad key, missing base URL, disabled account: fail loudly

Each class says what the delivery pipeline does with it as data, read by
``worker.delivery.pipeline`` (no ``isinstance`` chain there):

==========================  ===========  =====================  ==========================
class                       ``policy``   breaker hears          counts
==========================  ===========  =====================  ==========================
TransientError              retry        failure                an attempt
UnknownOutcomeError         reconcile    failure (none if the   an attempt
                                         answer was a 2xx)
RecipientDeferredError      retry        success                an attempt
ThrottledError              throttle     nothing                a throttle
DeferredError               defer        success                nothing
AccountBlockedError         pause        nothing                nothing
PermanentError (+ child)    fail         success                an attempt
ConfigurationError          fail         nothing                an attempt (logged as error)
==========================  ===========  =====================  ==========================

Errors print their context (``provider=postal status_code=200 provider_code=NoRecipients``) and
never a secret: drivers build messages from provider answers, which never echo API keys back,
and :func:`worker.redaction.scrub` is applied to the text as a last line of defence.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Literal

from worker.redaction import scrub

__all__ = [
    "AccountBlockedError",
    "BreakerSignal",
    "ConfigurationError",
    "DeferredError",
    "DeliveryError",
    "PermanentError",
    "Policy",
    "RecipientDeferredError",
    "RecipientRejectedError",
    "ThrottledError",
    "TransientError",
    "UnknownOutcomeError",
]

_MAX_MESSAGE_CHARS = 500

BreakerSignal = Literal["failure", "success"]


class Policy(StrEnum):
    """What the delivery pipeline does with an error (``DeliveryError.policy``)."""

    RETRY = "retry"
    """Reschedule with exponential backoff (or the provider's ``Retry-After`` if longer);
    counts an attempt against ``max_retries``, then fails with this error."""
    RECONCILE = "reconcile"
    """As ``RETRY``, but the provider may have accepted the request: where the driver can look
    the send up, ask it after the reconcile grace, before anything is resent."""
    THROTTLE = "throttle"
    """Wait ``retry_after_s`` and hold the shared limiter key so every worker holds back;
    counts a throttle, never an attempt."""
    DEFER = "defer"
    """Reschedule only this message at ``not_before`` (expire it if that is past its deadline);
    no hold on the shared limiter, no attempt counted."""
    PAUSE = "pause"
    """Pause the provider for every worker; fail over to another provider, else park."""
    FAIL = "fail"
    """Final: the delivery fails with this error; counts an attempt."""


class DeliveryError(Exception):
    """Base of every classified delivery failure."""

    kind: ClassVar[str] = "error"
    policy: ClassVar[Policy] = Policy.FAIL
    """What the delivery pipeline does next (see :class:`Policy`)."""
    retryable: ClassVar[bool] = False
    provider_fault: ClassVar[bool] = False
    """Whether a retryable failure says the provider itself is unhealthy (feeds the breaker)."""
    provider_up: ClassVar[bool] = True
    """Whether the error shows the provider up, answering about this message: the breaker hears
    a success (which also ends a half-open probe). With neither flag it hears nothing."""
    log_level: ClassVar[Literal["warning", "error"]] = "warning"
    """How loudly a delivery that fails with this error is logged."""

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status_code: int | None = None,
        provider_code: str | int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        # Provider answers can be huge or hostile; keep a bounded, scrubbed excerpt.
        self.message = scrub(str(message))[:_MAX_MESSAGE_CHARS]
        self.provider = provider
        self.status_code = status_code
        self.provider_code = None if provider_code is None else scrub(str(provider_code))[:100]
        self.retry_after_s = retry_after_s
        super().__init__(self.message)

    def breaker_signal(self) -> BreakerSignal | None:
        """What the provider's circuit breaker hears about this error, from the flags above."""
        if self.provider_fault:
            return "failure"
        return "success" if self.provider_up else None

    def context(self) -> dict[str, Any]:
        ctx: dict[str, Any] = {}
        if self.provider is not None:
            ctx["provider"] = self.provider
        if self.status_code is not None:
            ctx["status_code"] = self.status_code
        if self.provider_code is not None:
            ctx["provider_code"] = self.provider_code
        if self.retry_after_s is not None:
            ctx["retry_after_s"] = self.retry_after_s
        return ctx

    def __str__(self) -> str:
        ctx = " ".join(f"{k}={v}" for k, v in self.context().items())
        return f"{self.message} ({ctx})" if ctx else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.context()!r})"

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of a result: ``{kind, code, message}``."""
        code: str | None = self.provider_code
        if code is None and self.status_code is not None:
            code = str(self.status_code)
        return {"kind": self.kind, "code": code, "message": self.message}


class TransientError(DeliveryError):
    """Worth retrying later: the provider or the network failed, not the message."""

    kind = "transient"
    policy = Policy.RETRY
    retryable = True
    provider_fault = True
    provider_up = False


class UnknownOutcomeError(TransientError):
    """The request may have been accepted; a blind resend could duplicate the message."""

    kind = "unknown_outcome"
    policy = Policy.RECONCILE

    def breaker_signal(self) -> BreakerSignal | None:
        # An unreadable 2xx: the provider answered, and may have accepted; neither signal.
        return None if self.status_code is not None else super().breaker_signal()


class RecipientDeferredError(TransientError):
    """The provider answered, and says this recipient is temporarily unavailable: retry later.

    The provider is healthy, so the failure does not count towards its circuit breaker.
    """

    kind = "recipient_deferred"
    provider_fault = False
    provider_up = True


class ThrottledError(TransientError):
    """The provider refused for rate reasons; retry after ``retry_after_s`` (default 1 s)."""

    kind = "throttled"
    policy = Policy.THROTTLE
    provider_fault = False
    """A request to slow down is no health signal: the breaker hears nothing."""


class DeferredError(DeliveryError):
    """Refused for now, for this message only: retry it at ``not_before`` (epoch seconds)."""

    kind = "deferred"
    policy = Policy.DEFER

    def __init__(self, message: str, *, not_before: float, **context: Any) -> None:
        super().__init__(message, **context)
        self.not_before = not_before

    def context(self) -> dict[str, Any]:
        return {**super().context(), "not_before": round(self.not_before)}


class AccountBlockedError(DeliveryError):
    """The account cannot pay for sends; every message to this provider would fail the same way."""

    kind = "account_blocked"
    policy = Policy.PAUSE
    provider_up = False
    """Pausing the provider supersedes its breaker."""


class PermanentError(DeliveryError):
    """The provider will never accept this message as it is."""

    kind = "permanent"


class RecipientRejectedError(PermanentError):
    """The recipient is on an opt-out or suppression list."""

    kind = "recipient_rejected"


class ConfigurationError(DeliveryError):
    """The worker is misconfigured (API key, base URL, account disabled): an operator must act."""

    kind = "configuration"
    provider_up = False
    """The provider may never have been reached (no driver, no key)."""
    log_level = "error"
