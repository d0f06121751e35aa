"""The hot path as the stores' own calls, one after the other (the reference semantics)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from worker.stores.health import HealthStore
from worker.stores.hotpath.base import (
    LATE_OUTCOME,
    Begin,
    Begun,
    Closing,
    Finish,
    Finished,
    HotPath,
)
from worker.stores.ledger import Ledger
from worker.stores.metrics import Metrics
from worker.stores.suppression import SuppressionStore
from worker.stores.tracking import TrackingStore

__all__ = ["ComposedHotPath"]


class ComposedHotPath(HotPath):
    """Any stores, no atomicity beyond each store's own: for the in-memory stores (one process)
    and mixes of backends. Every breaker is reported as having state (always asked)."""

    def __init__(
        self,
        ledger: Ledger,
        health: HealthStore,
        metrics: Metrics,
        tracking: TrackingStore,
        suppression: SuppressionStore | None = None,
    ) -> None:
        self.ledger = ledger
        self.suppression = suppression
        self.health = health
        self.metrics = metrics
        self.tracking = tracking
        self.cleared_marks: list[tuple[str, str]] = []
        """Guard marks asked to be cleared (no guard without Redis: recorded for tests)."""

    def begin(
        self,
        delivery_id: str,
        token: str,
        lock_ttl_s: float,
        *,
        providers: Sequence[str] = (),
        mark: tuple[str, str] | None = None,
        suppress: tuple[str, Sequence[str]] | None = None,
    ) -> Begun:
        if mark is not None:
            self.cleared_marks.append(mark)
        record, busy_s, runs = self.ledger.open_run(delivery_id, token, lock_ttl_s)
        if record is None:
            return Begun("missing")
        if record.final:
            return Begun("final", record)
        if busy_s > 0:
            return Begun("busy", record, busy_s=busy_s)
        paused = {}
        for provider in providers:
            info = self.health.paused(provider)
            if info is not None:
                paused[provider] = info
        asked = frozenset(providers)
        suppressed = {}
        if suppress is not None and self.suppression is not None:
            suppressed = self.suppression.check(*suppress)
        return Begun("run", record, runs=runs, paused=paused, breaker_state=asked, asked=asked,
                     suppressed=suppressed)  # fmt: skip

    def sending_chunk(self, chunk: Sequence[tuple[str, dict[str, str]]]) -> list[bool]:
        return [self.ledger.transition(i, "sending", **fields) for i, fields in chunk]

    def begin_chunk(self, chunk: Sequence[Begin]) -> list[Begun]:
        return [
            self.begin(
                b.delivery_id,
                b.token,
                b.lock_ttl_s,
                providers=b.providers,
                mark=b.mark,
                suppress=b.suppress,
            )
            for b in chunk
        ]

    def finish_chunk(self, chunk: Sequence[Finish]) -> list[Finished]:
        return [
            self.finish(f.delivery_id, f.token, reset_runs=f.reset_runs, closing=f.closing)
            for f in chunk
        ]

    def clear_mark(self, mark: tuple[str, str]) -> None:
        self.cleared_marks.append(mark)

    def finish(
        self,
        delivery_id: str,
        token: str,
        *,
        reset_runs: bool,
        closing: Closing | None = None,
    ) -> Finished:
        late = None
        if closing is not None:
            seen = {"state": closing.state, "at": repr(time.time()), "fields": closing.fields}
            late = {LATE_OUTCOME: json.dumps(seen)}
        held, changed = self.ledger.close_run(
            delivery_id,
            token,
            reset_runs=reset_runs,
            state=closing.state if closing is not None else None,
            fields=closing.fields if closing is not None else None,
            late=late,
        )
        if not held:
            return Finished(lock_lost=True)
        if closing is None:
            return Finished()
        if closing.provider and closing.metric:
            self.metrics.incr(closing.provider, closing.metric)
        t = closing.tracking
        if t is None:
            return Finished(changed, breaker_state=closing.breaker)
        try:
            applied = self.tracking.register(
                delivery_id, t.provider, t.recipients, at=t.at, poll_at=t.poll_at, notify=t.notify
            )
        except Exception as exc:  # tracking never changes a send's outcome
            return Finished(changed, closing.breaker, tracking_error=type(exc).__name__)
        return Finished(changed, breaker_state=closing.breaker, tracking=applied)
