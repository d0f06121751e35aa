"""Wait for a delivery's outcome on the ledger: survives Redis restarts and failovers.

``AsyncResult.get()`` on the Redis result backend listens on a pub/sub channel. A result
published while that subscription is down (a Redis restart, a Sentinel failover) is stored but
never heard, and the caller blocks until its timeout although the result is there
(celery/celery#4857, #5921). The ledger record is written by the worker on every final
transition, with the result, before the task returns; it is a plain hash read with ``HGETALL``,
so polling it only needs Redis to be reachable *some* time before the deadline. Redis errors
while polling (connection refused, no master during an election, ``READONLY``) are waited out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from worker.stores import FINAL_STATES, Ledger

__all__ = ["WaitTimeout", "wait_for_results"]

FIRST_POLL_S = 0.05
MAX_POLL_S = 1.0
"""Polls start at 50 ms and back off by half each time to one a second."""


class WaitTimeout(TimeoutError):
    """The deadline passed before the delivery settled; it goes on in the workers."""

    def __init__(self, pending: dict[str, str], settled: dict[str, dict[str, Any]]) -> None:
        self.pending = pending
        """Delivery id → ledger state (``missing`` if unreadable) of those still unsettled."""
        self.settled = settled
        """Delivery id → result of those that did settle in time."""
        sample = ", ".join(f"{d} ({s})" for d, s in list(pending.items())[:3])
        super().__init__(f"{len(pending)} deliveries not settled: {sample}")


def _settled(state: str, *, parked: bool) -> bool:
    return state in FINAL_STATES or (parked and state == "parked")


def wait_for_results(
    ledger: Ledger,
    delivery_ids: Iterable[str],
    timeout_s: float,
    *,
    parked: bool = True,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, dict[str, Any]]:
    """The result of each delivery once it is final (or ``parked``, unless ``parked=False``).

    Raises :class:`WaitTimeout` (with the unsettled ids) when ``timeout_s`` passes first.
    """
    pending = {d: "missing" for d in dict.fromkeys(delivery_ids)}
    results: dict[str, dict[str, Any]] = {}
    deadline = clock() + timeout_s
    delay = FIRST_POLL_S
    while True:
        asked = list(pending)
        try:
            # One round trip per poll for any number of ids (a pipeline of HGETALLs).
            records = ledger.get_many(asked)
        except redis.RedisError:
            records = []  # Redis away (restart, failover): wait and ask again
        for delivery_id, record in zip(asked, records, strict=False):
            if record is None:
                continue
            pending[delivery_id] = record.state
            if _settled(record.state, parked=parked):
                results[delivery_id] = record.result or {"status": record.state}
                del pending[delivery_id]
        if not pending:
            return results
        left = deadline - clock()
        if left <= 0:
            raise WaitTimeout(pending, results)
        sleep(min(delay, left))
        delay = min(delay * 1.5, MAX_POLL_S)
