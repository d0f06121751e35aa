"""What operators do to providers: pause, resume (re-enqueue parked messages), inspect.

Shared by the CLI and the periodic balance check, so a resume by hand and a resume after a
top-up behave the same. Works on the store interfaces (``worker.stores``), never on their keys.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from celery import Celery

from worker.config import PROVIDERS, Settings
from worker.errors import DeliveryError
from worker.lanes import lane_of, lanes_beside
from worker.providers import Balance
from worker.runtime import Runtime, breaker_config
from worker.stores import (
    Balances,
    BreakerState,
    DeadLetters,
    HealthStore,
    Ledger,
    Limit,
    Metrics,
    Parking,
    PauseInfo,
    RateLimiter,
    RecordedBalance,
    Records,
    Stores,
    limiter_key,
)
from worker.stores.balances import BalanceUnit
from worker.stores.keys import keys_for

__all__ = ["Operations", "ProviderStatus"]

log = structlog.get_logger("worker.ops.operations")

BALANCE_UNITS: dict[str, BalanceUnit] = {
    # docs/providers/smspartner.md §1.2.1: `credits.creditSms` is a count of SMS (the `currency`
    # beside it is that of `credits.balance`, which the driver reads only when creditSms is
    # missing).
    "smspartner": "credits",
    # docs/providers/mailpartner.md §2.2 Credits: `credits.creditMail`, a count of mails.
    "mailpartner": "credits",
    # docs/providers/voicepartner.md §3.2 Credits: `{"credit": "19", "currency": "€"}`: an amount of
    # money.
    "voicepartner": "money",
}
"""What each provider's ``/me`` figure counts; a provider not listed reads as credits."""

BALANCE_CHECK_LIMITS = (Limit(5, 60.0),)
"""At most 5 balance checks a minute per provider and egress identity for the providers that
are not paused: Voice Partner documents 5/min for ``/me`` (docs/providers/voicepartner.md §3.2); SMS
and Mail Partner document no limit for it [NOT FOUND], so the safe reading is the same 5/min (and
Mail Partner's 2000 requests/min/IP, docs/providers/mailpartner.md §2.3, is never approached). A
paused provider's check is not limited here: its resume must not wait for a budget."""


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
        ledger: Ledger,
        parking: Parking,
        health: HealthStore,
        metrics: Metrics,
        settings: Settings,
        app: Celery,
        clock: Callable[[], float] = time.time,
        limiter: RateLimiter | None = None,
        balances: Balances | None = None,
    ) -> None:
        self.records: Records = ledger
        """The sweeper's view of the records."""
        self.dead_letters: DeadLetters = ledger
        """The dead letters an operator replays."""
        self.parking = parking
        self.health = health
        self.metrics = metrics
        self.settings = settings
        self.app = app
        self._clock = clock
        self.limiter = limiter
        """Budgets the balance checks of active providers (none: they are not checked)."""
        self.balances = balances
        """Where each reading is recorded for the metrics (none: not recorded)."""

    @classmethod
    def for_stores(
        cls,
        stores: Stores,
        *,
        settings: Settings,
        app: Celery,
        clock: Callable[[], float] = time.time,
    ) -> Operations:
        return cls(
            ledger=stores.ledger,
            parking=stores.parking,
            health=stores.health,
            metrics=stores.metrics,
            settings=settings,
            app=app,
            clock=clock,
            limiter=stores.limiter,
            balances=stores.balances,
        )

    @classmethod
    def for_runtime(cls, rt: Runtime, app: Celery) -> Operations:
        """Operations over a process's runtime (its stores and settings)."""
        return cls.for_stores(rt.stores, settings=rt.settings, app=app)

    @classmethod
    def on_redis(cls, client: redis.Redis, *, settings: Settings, app: Celery) -> Operations:
        """Operations over the Redis stores on ``client`` (tools that hold a client already)."""
        stores = Stores.on_redis(
            client,
            breaker=breaker_config(settings),
            safety_margin_s=settings.limiter_safety_margin_s,
            keys=keys_for(settings),
        )
        return cls.for_stores(stores, settings=settings, app=app)

    def status(self) -> list[ProviderStatus]:
        enabled = set(self.settings.enabled_providers())
        return [
            ProviderStatus(
                provider=provider,
                configured=provider in enabled,
                paused=self.health.paused(provider),
                breaker=self.health.state(provider),
                parked=self.parking.count(provider),
                metrics=self.metrics.read(provider),
            )
            for provider in PROVIDERS
        ]

    def pause(self, provider: str, reason: str, by: str = "operator") -> PauseInfo:
        info = self.health.pause(provider, reason, by)
        log.warning("provider.paused", provider=provider, reason=reason, paused_by=by)
        return info

    def resume(self, provider: str, *, by: str = "operator") -> int:
        """Lift the pause and re-enqueue every parked message; returns how many."""
        self.health.resume(provider)
        items = self.parking.take_all(provider)
        # Back into their lanes (worker.lanes) when lanes are on, all in one step: a parked
        # campaign does not land in front of the high-priority work parked with it.
        lanes = lanes_beside(self.records, self.settings)
        direct = items
        laned: list[Any] = []
        if lanes is not None:
            laned = [item for item in items if self._has_record(item.delivery_id)]
            try:
                lanes.push_many([(item.delivery_id, *lane_of(item.message)) for item in laned])
            except Exception:
                self.parking.put_back(provider, items)
                raise
            in_lanes = {item.delivery_id for item in laned}
            direct = [item for item in items if item.delivery_id not in in_lanes]
        sent = 0
        try:
            for item in direct:
                # Same task id as before: the ledger keeps the delivery idempotent.
                self.app.send_task(item.task_name, args=[item.message], task_id=item.delivery_id)
                sent += 1
        finally:
            if sent < len(direct):
                self.parking.put_back(provider, direct[sent:])
        published = len(laned) + sent
        log.warning("provider.resumed", provider=provider, requeued=published, resumed_by=by)
        return published

    def _has_record(self, delivery_id: str) -> bool:
        """The ledger holds the message (what a lane's dispatcher publishes)."""
        record = self.records.get(delivery_id)
        return record is not None and "message" in record.fields

    def sweep(self) -> dict[str, int]:
        """Re-enqueue deliveries stuck past their timeout (lost between broker and worker).

        A copy that turns out to be still alive is harmless: the ledger answers for a finished
        delivery and the send lock keeps two copies from sending at once.
        """
        settings = self.settings
        limits = {
            "queued": settings.sweep_queued_after_s,
            "sending": settings.sweep_sending_after_s,
            # A retry waits at most retry_backoff_max_s in the worker's timer.
            "waiting": settings.retry_backoff_max_s + settings.sweep_sending_after_s,
        }
        counts = {"requeued": 0, "cleaned": 0, "unrecoverable": 0}
        records = self.records
        now = self._clock()
        lanes = lanes_beside(self.records, self.settings)
        for delivery_id in records.stale(min(limits.values())):
            record = records.get(delivery_id)
            if record is None or record.final or record.state not in limits:
                records.untrack(delivery_id)
                counts["cleaned"] += 1
                continue
            if now - record.updated_at < limits[record.state]:
                continue
            message, task_name = record.fields.get("message"), record.fields.get("task_name")
            if not message or not task_name:
                log.error("sweeper.no_message", delivery_id=delivery_id, state=record.state)
                records.untrack(delivery_id)
                counts["unrecoverable"] += 1
                continue
            if lanes is not None and record.state == "queued":
                # Into its lane, not past it: one still waiting there (a long campaign) keeps
                # its place and is not counted; one lost after its dispatch goes back in line.
                records.touch(delivery_id)
                if not lanes.push(delivery_id, *lane_of(message)):
                    continue
            else:
                self.app.send_task(task_name, args=[json.loads(message)], task_id=delivery_id)
                records.touch(delivery_id)
            counts["requeued"] += 1
            log.warning(
                "sweeper.requeued",
                delivery_id=delivery_id,
                state=record.state,
                stuck_s=round(now - record.updated_at, 1),
            )
        return counts

    def replay_dead(self, delivery_ids: list[str]) -> list[str]:
        """Send dead letters again under their own ids; returns the ids replayed."""
        replayed = []
        for delivery_id in delivery_ids:
            entry = self.dead_letters.revive(delivery_id)
            if entry is None:
                continue
            # The result backend keeps a SUCCESS final; forget the dead result first.
            self.app.AsyncResult(delivery_id).forget()
            self.app.send_task(entry["task_name"], args=[entry["message"]], task_id=delivery_id)
            replayed.append(delivery_id)
            log.warning("delivery.replayed", delivery_id=delivery_id)
        return replayed

    def check_balances(self, drivers: Any) -> dict[str, str]:
        """Ask each paused provider for its balance; resume those that have credit again.

        ``drivers`` maps a provider name to a driver (``Runtime.driver``). Providers without a
        balance endpoint stay paused until an operator resumes them. Every reading, and one of
        each active provider with a balance endpoint (within :data:`BALANCE_CHECK_LIMITS`), is
        recorded for the ``delivery_credit_balance`` metric; only paused providers appear in
        the returned dict.
        """
        outcome: dict[str, str] = {}
        paused: set[str] = set()
        for info in self.health.list_paused():
            provider = info.provider
            paused.add(provider)
            try:
                balance = drivers(provider).check_balance()
            except DeliveryError as exc:
                log.warning("provider.balance_check_failed", provider=provider, kind=exc.kind)
                outcome[provider] = f"check failed: {exc.kind}"
                continue
            self._record_balance(balance)
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
        self._check_active_balances(drivers, paused)
        return outcome

    def _check_active_balances(self, drivers: Any, paused: set[str]) -> None:
        """Read the balance of each active provider, so operators see credit run low before a
        send is refused. A check the budget refuses now is skipped until the next round."""
        if self.limiter is None or self.balances is None:
            return
        for provider in self.settings.enabled_providers():
            if provider in paused:
                continue
            key = limiter_key(
                provider,
                self.settings.egress_identity,
                "balance",
                prefix=self.settings.redis_namespace,
            )
            if self.limiter.acquire(key, BALANCE_CHECK_LIMITS) > 0:
                continue
            try:
                balance = drivers(provider).check_balance()
            except DeliveryError as exc:
                log.warning("provider.balance_check_failed", provider=provider, kind=exc.kind)
                continue
            self._record_balance(balance)

    def _record_balance(self, balance: Balance | None) -> None:
        if balance is None or balance.credits is None or self.balances is None:
            return
        unit = BALANCE_UNITS.get(balance.provider, "credits")
        currency = (balance.currency or "") if unit == "money" else ""
        self.balances.record(
            RecordedBalance(balance.provider, balance.credits, unit, currency, self._clock())
        )
