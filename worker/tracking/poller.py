"""The poller: asks providers with a status lookup what became of their sent deliveries.

Beat runs :func:`poll_round` every ``DELIVERY_TRACKING_POLL_INTERVAL_S`` (``tasks.track_poll``).
A round claims the due watches (``worker.stores.tracking``), drops those already final (a
webhook may have said so) or out of time (``DELIVERY_TRACKING_POLL_MAX_S``), batches the rest
per provider as the provider's lookup allows (:meth:`Driver.lookup_groups`), and applies what
the provider says. Every lookup request takes a slot from the same global limiter budget as
the provider's sends (its ``status_bucket``); when the budget is spent, the rest of that
provider's watches wait for the next round, unpolled. A delivery that is not final is asked
again after a doubling wait (``first_s``, ``2 * first_s``... up to ``max_backoff_s``).

A lookup that fails (a classified error, or anything unexpected) costs that group one backoff
step, never the round; a 429 also holds the provider's limiter key for everyone. A round keeps
up to :data:`LOOKUP_CONCURRENCY` lookups in flight per provider.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog

from worker.errors import DeliveryError, ThrottledError
from worker.metrics import record as metrics
from worker.providers import Driver, driver_class
from worker.providers.lookup import LookupTarget
from worker.runtime import Runtime
from worker.stores import limiter_key
from worker.stores.tracking import POLL_STOP_STATES, Watch
from worker.tracking.service import Publisher, apply_events, flush_pending

__all__ = ["PollReport", "poll_round", "poll_watches"]

log = structlog.get_logger(__name__)

LOOKUP_CONCURRENCY = 8
"""Lookup requests a round keeps in flight per provider (each still takes its limiter slot)."""


class _Later(Exception):
    """The limiter wants this provider's remaining lookups to wait ``wait_s``."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"{wait_s:.3f}")
        self.wait_s = wait_s


@dataclass
class PollReport:
    claimed: int = 0
    requests: int = 0
    events: int = 0
    finished: int = 0
    gave_up: int = 0
    deferred: int = 0
    failed_lookups: int = 0
    published: int = 0
    per_provider: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _LookupGate:
    """The limiter slot before each lookup request (short waits inline, long ones later)."""

    def __init__(self, rt: Runtime, provider: str, bucket: str, sleep: Callable[[float], None]):
        self._lock = threading.Lock()
        self.rt = rt
        self.key = limiter_key(
            provider, rt.settings.egress_identity, bucket, prefix=rt.settings.redis_namespace
        )
        self.limits = rt.settings.limits(provider, bucket)
        self.sleep = sleep
        self.requests = 0

    def __call__(self) -> None:
        waited = 0.0
        wait_s = self.rt.limiter.acquire(self.key, self.limits)
        while wait_s > 0:
            if waited + wait_s > self.rt.settings.limiter_max_inline_wait_s:
                raise _Later(wait_s)
            self.sleep(wait_s)
            waited += wait_s
            wait_s = self.rt.limiter.acquire(self.key, self.limits)
        with self._lock:
            self.requests += 1


def poll_round(
    rt: Runtime,
    *,
    now: float | None = None,
    publish: Publisher | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> PollReport:
    """One round: the due watches, then the notifications crashed publishers left."""
    policy = rt.settings.poll_policy()
    at = time.time() if now is None else now
    watches = rt.tracking.claim_due(at, policy.batch, policy.lease_s)
    report = poll_watches(rt, watches, now=at, publish=publish, sleep=sleep)
    report.published += flush_pending(rt, publish=publish)
    return report


def poll_watches(
    rt: Runtime,
    watches: list[Watch],
    *,
    now: float,
    publish: Publisher | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> PollReport:
    """Ask about ``watches`` now (a round, or a callback's hint) and reschedule each one."""
    policy = rt.settings.poll_policy()
    report = PollReport(claimed=len(watches))
    by_provider: dict[str, list[tuple[Watch, list[LookupTarget]]]] = {}
    for watch in watches:
        targets = _pending(rt, watch)
        if not targets:
            rt.tracking.unwatch(watch.delivery_id)
            report.finished += 1
        elif now - watch.started_at > policy.max_s or not _can_ask(rt, watch.provider):
            rt.tracking.unwatch(watch.delivery_id)
            metrics.count(rt.metrics, watch.provider, "tracking_poll_gave_up")
            report.gave_up += 1
        else:
            by_provider.setdefault(watch.provider, []).append((watch, targets))
    for provider, items in by_provider.items():
        _poll_provider(rt, provider, items, now, report, publish, sleep)
    return report


def _pending(rt: Runtime, watch: Watch) -> list[LookupTarget]:
    status = rt.tracking.status(watch.delivery_id)
    states = status.recipients if status is not None else {}
    return [
        LookupTarget(watch.delivery_id, t.recipient, t.provider_message_id, t.lookup)
        for t in watch.recipients
        if t.recipient not in states or states[t.recipient].state not in POLL_STOP_STATES
    ]


def _can_ask(rt: Runtime, provider: str) -> bool:
    try:
        return driver_class(provider).status_lookup and provider in rt.settings.enabled_providers()
    except KeyError:
        return False


def _poll_provider(
    rt: Runtime,
    provider: str,
    items: list[tuple[Watch, list[LookupTarget]]],
    now: float,
    report: PollReport,
    publish: Publisher | None,
    sleep: Callable[[float], None],
) -> None:
    policy = rt.settings.poll_policy()
    watches = {w.delivery_id: w for w, _ in items}
    targets = [t for _, ts in items for t in ts]
    try:
        driver: Driver[Any] = rt.driver(provider)
    except DeliveryError:
        for w in watches.values():
            rt.tracking.reschedule(w.delivery_id, now + policy.next_after(w.polls + 1), polled=True)
        return
    gate = _LookupGate(rt, provider, driver.status_bucket, sleep)
    lock = threading.Lock()
    asked: set[str] = set()
    stop = threading.Event()
    later: list[float] = []

    def ask(group: list[LookupTarget]) -> None:
        if stop.is_set():
            return  # the budget is spent: the next round asks
        failed = 0
        try:
            events = driver.lookup_status(group, gate)
        except _Later as wait:
            stop.set()
            with lock:
                later.append(wait.wait_s)
            return
        except ThrottledError as exc:
            wait_s = exc.retry_after_s or driver.default_retry_after_s
            rt.limiter.hold_for(gate.key, wait_s)
            stop.set()
            with lock:
                later.append(wait_s)
            events, failed = [], 1
        except DeliveryError as exc:
            log.info("tracking.lookup_failed", provider=provider, error=exc.message[:200])
            events, failed = [], 1
        except Exception as exc:  # a driver bug must not end the round
            log.error("tracking.lookup_crashed", provider=provider, error=type(exc).__name__)
            events, failed = [], 1
        new = len(apply_events(rt, events, publish=publish).new) if events else 0
        with lock:
            asked.update(t.delivery_id for t in group)
            report.failed_lookups += failed
            report.events += new

    groups = type(driver).lookup_groups(targets)
    if len(groups) == 1:
        ask(groups[0])
    else:
        with ThreadPoolExecutor(min(LOOKUP_CONCURRENCY, len(groups))) as pool:
            list(pool.map(ask, groups))
    report.requests += gate.requests
    report.per_provider[provider] = report.per_provider.get(provider, 0) + gate.requests
    if gate.requests:
        metrics.count(rt.metrics, provider, "tracking_lookups", gate.requests)
    wait_s = max(later, default=0.0)
    for delivery_id, watch in watches.items():
        if delivery_id not in asked:
            # Not asked this round (the budget was spent): next round, no backoff step.
            rt.tracking.reschedule(delivery_id, now + max(wait_s, policy.interval_s), polled=False)
            report.deferred += 1
        elif not _pending(rt, watch):
            rt.tracking.unwatch(delivery_id)
            report.finished += 1
        else:
            rt.tracking.reschedule(
                delivery_id, now + policy.next_after(watch.polls + 1), polled=True
            )
