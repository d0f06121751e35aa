"""Step 3: choose the provider: the named one or each eligible one, skipping paused providers
and open breakers. None configured fails; all paused parks; open breakers wait."""

from __future__ import annotations

import structlog

from worker.delivery import writer
from worker.delivery.context import Delivery
from worker.delivery.results import Outcome
from worker.delivery.writer import finish, park, wait
from worker.models import ErrorInfo
from worker.providers import eligible_providers

__all__ = ["candidates", "choose_provider"]

log = structlog.get_logger(__name__)


def candidates(d: Delivery) -> list[str]:
    """The providers this delivery may use, in routing order."""
    if not d.routed:
        return [d.provider]
    enabled = set(d.settings.enabled_providers())
    return [p for p in eligible_providers(d.message) if p in enabled]


def choose_provider(d: Delivery, attempts: int) -> str | Outcome:
    """The first candidate that is neither paused nor behind an open breaker."""
    names = candidates(d)
    if not names:
        message = f"no configured {d.channel} provider accepts this message"
        return finish(d, "failed", attempts, error=ErrorInfo(kind="configuration", message=message))
    paused: list[str] = []
    waits: list[float] = []
    begun = d.begun
    for provider in names:
        if begun is not None and provider in begun.asked:
            # Read by the run's first step (worker.stores.hotpath), moments ago.
            if provider in begun.paused:
                paused.append(provider)
                continue
            if provider not in begun.breaker_state:
                return provider  # a breaker with no state is closed, no failure: allowed
        elif d.rt.health.paused(provider) is not None:
            paused.append(provider)
            continue
        decision = d.rt.health.allow_request(provider)
        if decision.allowed:
            if decision.probe:
                log.info("breaker.probe", provider=provider)
            return provider
        waits.append(decision.wait_s)
    if waits:
        writer.count_throttle(d)
        return wait(d, max(min(waits), 0.05), "breaker_open", attempts)
    return park(d, paused[0], attempts, "provider paused")
