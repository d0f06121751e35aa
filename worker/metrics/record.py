"""The facade the delivery pipeline calls, its one metrics path: per-attempt counters and
histograms (Prometheus, no Redis) and, where a call passes the runtime's ``shared`` store, the
per-provider counters every worker adds to (``dw:metrics:<provider>``, what
``delivery-worker providers`` shows). The flow calls nothing else to count: a figure the
operator reads comes from the same call as its Prometheus series.

With ``PROMETHEUS_MULTIPROC_DIR`` set (a worker under the exporter), prometheus-client's
multiprocess mode keeps each process's values in memory-mapped files in that directory; the
exporter (:mod:`worker.metrics.exporter`) sums the files of every process, dead ones included.
So a prefork child killed mid-flight keeps what it counted, and so does a worker restart as long
as the directory stays. Without it, values live in this process only (tests, one-off tools).

Labels are ``provider``, ``channel``, ``status``, ``kind`` and, for cost, ``unit``/``currency``:
never a recipient, a body or a key. ``provider`` is ``none`` before one is chosen.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.stores.metrics import Metrics

# Multiprocess mode opens a file in the directory when a labelled value is first used: make
# sure it exists before prometheus_client is imported (it reads the variable at import).
_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _DIR:
    os.makedirs(_DIR, exist_ok=True)

from prometheus_client import Counter, Histogram  # noqa: E402 - after the directory exists

__all__ = [
    "FINISHED",
    "NO_PROVIDER",
    "SENT_COUNTER",
    "accepted",
    "attempt_fields",
    "cost",
    "count",
    "currency_label",
    "enqueue_to_accept",
    "finished",
    "lane_waited",
    "limiter_hold",
    "limiter_rescheduled",
    "parked",
    "provider_request",
    "queue_item_rejected",
    "shared_name",
    "start_lane_series",
    "start_provider_series",
    "status_class",
    "suppressed_send",
    "suppression_added",
    "tenant_label",
]

NO_PROVIDER = "none"
FINISHED = ("sent", "failed", "expired", "dead")

MESSAGES_FINISHED = Counter(
    "delivery_messages_finished_total",
    "Deliveries that reached a final state (status) and why (kind: the error kind, none if sent).",
    ["provider", "channel", "status", "kind"],
)
MESSAGES_PARKED = Counter(
    "delivery_messages_parked_total",
    "Deliveries parked because their provider is paused (out of credit).",
    ["provider", "channel"],
)
PROVIDER_REQUESTS = Counter(
    "delivery_provider_requests_total",
    "Send requests that passed the gate, by HTTP status class (status: 2xx..5xx, none when no "
    "answer) and outcome (kind: accepted, or the error kind).",
    ["provider", "channel", "status", "kind"],
)
PROVIDER_THROTTLED = Counter(
    "delivery_provider_throttled_total",
    "Send requests the provider refused as too many (429, or its own throttling code).",
    ["provider", "channel"],
)
LIMITER_HOLDS = Counter(
    "delivery_limiter_holds_total",
    "Holds put on the shared limiter after a provider throttled us (Retry-After, or the "
    "provider's default wait).",
    ["provider"],
)
LIMITER_HOLD_SECONDS = Counter(
    "delivery_limiter_hold_seconds_total",
    "Seconds of hold put on the shared limiter after a provider throttled us.",
    ["provider"],
)
QUEUE_ITEMS_REJECTED = Counter(
    "delivery_queue_items_rejected_total",
    "Raw queue items that were not kombu envelopes, set aside before kombu read them "
    "(reason: not_json, not_an_object, not_an_envelope, bad_body_encoding).",
    ["reason"],
)
LIMITER_RESCHEDULED = Counter(
    "delivery_limiter_rescheduled_total",
    "Attempts the global limiter sent back to the queue (the wait exceeded the inline maximum).",
    ["provider"],
)
SUPPRESSION_ADDED = Counter(
    "delivery_suppression_added_total",
    "Recipients added to a channel's suppression list, by reason and source (send, tracking, "
    "manual, import).",
    ["channel", "reason", "source"],
)
SUPPRESSED_RECIPIENTS = Counter(
    "delivery_suppressed_recipients_total",
    "Recipients left out of a send because they are suppressed, by the entry's reason.",
    ["channel", "reason"],
)
COST = Counter(
    "delivery_cost_total",
    "What providers reported the accepted sends cost: unit money (with currency) or credits.",
    ["provider", "unit", "currency"],
)
REQUEST_SECONDS = Histogram(
    "delivery_provider_request_duration_seconds",
    "Time from the gate opening to the provider's answer (or the transport error).",
    ["provider", "channel"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
ENQUEUE_TO_ACCEPT_SECONDS = Histogram(
    "delivery_enqueue_to_accept_seconds",
    "Time from enqueue (the ledger record's creation) to the provider accepting the message.",
    ["provider", "channel"],
    buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0),
)
LIMITER_WAIT_SECONDS = Histogram(
    "delivery_limiter_wait_seconds",
    "Time an attempt slept in the gate for a global limiter slot (0 when granted at once).",
    ["provider"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
)

LANE_WAIT_SECONDS = Histogram(
    "delivery_lane_wait_seconds",
    "Time a delivery waited in its lane (worker.lanes) before the dispatcher published it.",
    ["priority", "tenant"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0),
)


def tenant_label(tenant: str, named: Iterable[str]) -> str:
    """A tenant as a metric label: itself if the operator named it (``DELIVERY_TENANT_WEIGHTS``)
    or it is the default tenant, else ``other``: the label's values stay bounded."""
    return tenant if tenant == "default" or tenant in named else "other"


@functools.cache
def _named_tenants(setting: str) -> frozenset[str]:
    from worker.lanes.weights import parse_weights

    return frozenset(parse_weights(setting))


def start_lane_series() -> None:
    """The wait series of each priority's default tenant at 0, from a dispatcher's start: the
    dashboard's and the alert's series exist before the first delivery leaves a lane."""
    for priority in ("high", "normal", "bulk"):
        LANE_WAIT_SECONDS.labels(priority, "default")


def lane_waited(priority: str, tenant: str, seconds: float) -> None:
    from worker.config import get_settings

    named = _named_tenants(get_settings().tenant_weights)
    LANE_WAIT_SECONDS.labels(priority, tenant_label(tenant, named)).observe(max(seconds, 0.0))


def status_class(status_code: int | None) -> str:
    """``2xx`` … ``5xx`` for an HTTP status, ``none`` when no answer came (transport error)."""
    if status_code is None or not 100 <= status_code <= 599:
        return "none"
    return f"{status_code // 100}xx"


def provider_request(
    provider: str,
    channel: str,
    status_code: int | None,
    kind: str,
    duration_s: float,
    limiter_wait_s: float = 0.0,
    *,
    accepted_after_s: float | None = None,
    cost: float | None = None,
    currency: str | None = None,
) -> dict[str, object]:
    """One send request that passed the gate; ``kind`` is ``accepted`` or the error kind;
    ``limiter_wait_s``: how long the gate waited for the limiter first. One call per request
    (its counters, durations and limiter wait); returns the ``delivery.attempt`` log fields.
    ``accepted_after_s``: a single delivery's request was accepted that long after it was
    enqueued; its reported ``cost`` is counted too (:func:`accepted`, in the same call)."""
    PROVIDER_REQUESTS.labels(provider, channel, status_class(status_code), kind).inc()
    REQUEST_SECONDS.labels(provider, channel).observe(duration_s)
    LIMITER_WAIT_SECONDS.labels(provider).observe(max(limiter_wait_s, 0.0))
    if kind == "throttled":
        PROVIDER_THROTTLED.labels(provider, channel).inc()
    if accepted_after_s is not None:
        accepted(provider, channel, accepted_after_s, cost, currency)
    return attempt_fields(status_code, kind, duration_s, limiter_wait_s)


def attempt_fields(
    status_code: int | None, kind: str, duration_s: float, limiter_wait_s: float
) -> dict[str, object]:
    """The ``delivery.attempt`` log event's fields, named like the metrics they feed."""
    return {
        "status": status_class(status_code),
        "kind": kind,
        "request_duration_seconds": round(duration_s, 4),
        "limiter_wait_seconds": round(limiter_wait_s, 4),
    }


SENT_COUNTER = "sent"
"""The shared counter of ``sent`` (:func:`shared_name`)."""


def shared_name(status: str, kind: str) -> str:
    """The shared counter a final state adds to: ``sent``, else ``<status>:<kind>``
    (``failed:transient``, ``expired:expired``); the hot path's last script adds to it when
    the ``sent`` is written there (``Closing.metric``)."""
    return SENT_COUNTER if status == "sent" else f"{status}:{kind}"


def finished(
    provider: str, channel: str, status: str, kind: str, shared: Metrics | None = None
) -> None:
    """A final state; with ``shared``, the provider's shared counter too (:func:`shared_name`)."""
    MESSAGES_FINISHED.labels(provider or NO_PROVIDER, channel, status, kind).inc()
    if shared is not None and provider:
        shared.incr(provider, shared_name(status, kind))


def parked(provider: str, channel: str, shared: Metrics | None = None) -> None:
    MESSAGES_PARKED.labels(provider, channel).inc()
    if shared is not None:
        shared.incr(provider, "parked")


def count(shared: Metrics, provider: str, name: str, amount: int = 1) -> None:
    """A per-provider figure only the shared counters keep (``throttled_ms``, ``deferred``,
    ``payment_failures``, ``scheduled_at_provider``, ``throttled_by_provider``,
    ``tracking_*``): fleet-wide, readable from any host without an exporter."""
    shared.incr(provider, name, amount)


def enqueue_to_accept(provider: str, channel: str, seconds: float) -> None:
    ENQUEUE_TO_ACCEPT_SECONDS.labels(provider, channel).observe(max(seconds, 0.0))


def accepted(
    provider: str,
    channel: str,
    enqueue_to_accept_s: float,
    amount: float | None,
    currency: str | None,
) -> None:
    """An accepted send: its enqueue-to-accept time and its reported cost, in one call."""
    enqueue_to_accept(provider, channel, enqueue_to_accept_s)
    cost(provider, amount, currency)


COST_IN_CREDITS = frozenset({"mailpartner"})
"""Providers whose send ``cost`` counts credits whatever currency comes with it: Mail Partner's
documented answer is ``"cost":1,"currency":"EUR"`` for one mail
(docs/providers/mailpartner.md §2.2), one credit per mail [INFERRED]; counting it as 1 EUR a mail
would overstate spend."""


def cost(provider: str, amount: float | None, currency: str | None) -> None:
    """Add a reported cost: money when it comes with a currency, else credits."""
    if amount is None or not amount >= 0 or amount == float("inf"):
        return
    if provider in COST_IN_CREDITS:
        currency = None
    unit = "money" if currency else "credits"
    COST.labels(provider, unit, currency_label(currency)).inc(amount)


_ISO_4217 = re.compile(r"[A-Za-z]{3}")
_SIGNS = {"€": "EUR", "$": "USD", "£": "GBP", "¥": "JPY"}
"""Signs providers write instead of a code (Voice Partner's ``/me`` says ``€``, its sends
``EUR``): one series per currency needs one spelling."""


def currency_label(currency: str | None) -> str:
    """The ``currency`` label of every money series: the ISO 4217 code (``EUR``), a sign
    mapped to its code; anything else is ``other`` (a hostile answer cannot mint label
    values); ``""`` when none was given."""
    if not currency:
        return ""
    text = currency.strip()
    if text in _SIGNS:
        return _SIGNS[text]
    return text.upper() if _ISO_4217.fullmatch(text) else "other"


def start_provider_series(providers: Iterable[tuple[str, str]]) -> None:
    """Create the throttle and hold series of each ``(provider, channel)`` at 0.

    A counter's labelled series exists only once it is touched: until a provider's first
    throttle, ``rate()`` over it has no series and dashboards say "No data" instead of 0.
    """
    for provider, channel in providers:
        PROVIDER_THROTTLED.labels(provider, channel)
        LIMITER_HOLDS.labels(provider)
        LIMITER_HOLD_SECONDS.labels(provider)


def limiter_rescheduled(provider: str) -> None:
    LIMITER_RESCHEDULED.labels(provider).inc()


def limiter_hold(provider: str, seconds: float) -> None:
    LIMITER_HOLDS.labels(provider).inc()
    LIMITER_HOLD_SECONDS.labels(provider).inc(max(seconds, 0.0))


def queue_item_rejected(reason: str) -> None:
    QUEUE_ITEMS_REJECTED.labels(reason).inc()


def suppression_added(channel: str, reason: str, source: str) -> None:
    SUPPRESSION_ADDED.labels(channel, reason, source).inc()


def suppressed_send(channel: str, reason: str) -> None:
    SUPPRESSED_RECIPIENTS.labels(channel, reason).inc()
