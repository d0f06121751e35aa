"""What operators do to providers: pause, resume (re-enqueue parked messages), inspect.

Shared by the CLI and the periodic balance check, so a resume by hand and a resume after a
top-up behave the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import structlog
from celery import Celery

from worker.config import PROVIDERS, Settings
from worker.errors import DeliveryError
from worker.flow import BreakerState, HealthStore, PauseInfo
from worker.parking import Parking

__all__ = ["Operations", "ProviderStatus"]

log = structlog.get_logger("worker.operations")


@dataclass(frozen=True)
class ProviderStatus:
    provider: str
    configured: bool
    paused: PauseInfo | None
    breaker: BreakerState
    parked: int
    metrics: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "configured": self.configured,
            "paused": None
            if self.paused is None
            else {"reason": self.paused.reason, "since": self.paused.since, "by": self.paused.by},
            "breaker": {
                "state": self.breaker.state,
                "failures": self.breaker.failures,
                "retry_in_s": round(self.breaker.retry_in_s, 3),
            },
            "parked": self.parked,
            "metrics": self.metrics,
        }


class Operations:
    def __init__(
        self,
        *,
        redis_client: redis.Redis,
        health: HealthStore,
        settings: Settings,
        app: Celery,
    ) -> None:
        self.redis = redis_client
        self.health = health
        self.settings = settings
        self.app = app
        self.parking = Parking(redis_client)

    def status(self) -> list[ProviderStatus]:
        enabled = set(self.settings.enabled_providers())
        out = []
        for provider in PROVIDERS:
            raw = self.redis.hgetall(f"dw:metrics:{provider}")
            metrics = {_text(k): int(v) for k, v in raw.items()}
            out.append(
                ProviderStatus(
                    provider=provider,
                    configured=provider in enabled,
                    paused=self.health.paused(provider),
                    breaker=self.health.state(provider),
                    parked=self.parking.count(provider),
                    metrics=metrics,
                )
            )
        return out

    def pause(self, provider: str, reason: str, by: str = "operator") -> PauseInfo:
        info = self.health.pause(provider, reason, by)
        log.warning("provider.paused", provider=provider, reason=reason, paused_by=by)
        return info

    def resume(self, provider: str, *, by: str = "operator") -> int:
        """Lift the pause and re-enqueue every parked message; returns how many."""
        self.health.resume(provider)
        items = self.parking.take_all(provider)
        published = 0
        try:
            for item in items:
                # Same task id as before: the ledger keeps the delivery idempotent.
                self.app.send_task(item.task_name, args=[item.message], task_id=item.delivery_id)
                published += 1
        finally:
            if published < len(items):
                self.parking.put_back(provider, items[published:])
        log.warning("provider.resumed", provider=provider, requeued=published, resumed_by=by)
        return published

    def check_balances(self, drivers: Any) -> dict[str, str]:
        """Ask each paused provider for its balance; resume those that have credit again.

        ``drivers`` maps a provider name to a driver (``Runtime.driver``). Providers without a
        balance endpoint stay paused until an operator resumes them.
        """
        outcome: dict[str, str] = {}
        for info in self.health.list_paused():
            provider = info.provider
            try:
                balance = drivers(provider).check_balance()
            except DeliveryError as exc:
                log.warning("provider.balance_check_failed", provider=provider, kind=exc.kind)
                outcome[provider] = f"check failed: {exc.kind}"
                continue
            if balance is None:
                outcome[provider] = "no balance endpoint; resume by hand"
            elif balance.has_credit:
                count = self.resume(provider, by="balance-check")
                outcome[provider] = f"resumed ({count} requeued)"
            else:
                log.error(
                    "provider.still_out_of_credit", provider=provider, credits=balance.credits
                )
                outcome[provider] = "still out of credit"
        return outcome


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
