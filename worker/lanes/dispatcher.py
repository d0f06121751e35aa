"""The lane dispatcher: keeps the broker queue short, feeding it from the lanes in order.

It runs as a small thread in every worker's main process (:class:`DispatchStep`, a Celery
worker bootstep, like the schedule mover). Each pass reads how many messages wait in the
broker queue and, while fewer than ``DELIVERY_LANE_BUFFER`` do, takes the next deliveries
(:meth:`worker.lanes.Lanes.take`, atomic across dispatchers) and publishes them. Workers then
hold at most their pool's share (``worker_prefetch_multiplier`` = 1) plus that buffer: a
``high`` message enqueued behind a campaign waits behind a few messages, not the campaign.

A campaign chunk (500 messages, about a second of a pool process) is published at the broker's
lowest priority step (:data:`CHUNK_PRIORITY`: kombu's Redis transport keeps it in the sibling
list ``<queue>\x06\x169``, which a worker reads after the queue's own list), so a ``high`` message
the dispatcher publishes after it is fetched before it: a code waits for the first pool process
to free, not for the chunks already in the broker.

Several workers run a dispatcher at once; a take counts what the others took and have not
published yet, so they overfill the queue by little (each reads the queue's length itself).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import structlog
from celery import Celery, bootsteps

from worker.lanes import Lanes, Taken

__all__ = ["CHUNK_PRIORITY", "DispatchStep", "LaneDispatcher", "broker_lists", "dispatch_once"]

log = structlog.get_logger(__name__)

CHUNK_PRIORITY = 9
"""The broker priority a chunk is published at (kombu's Redis step 9: read last)."""

Backlog = Callable[[], int]
"""How many messages wait in the broker queue the dispatcher feeds."""


def dispatch_once(
    app: Celery,
    lanes: Lanes,
    backlog: Backlog,
    buffer: int,
    *,
    on_taken: Callable[[list[Taken]], None] | None = None,
) -> int:
    """One pass: fill the broker queue up to ``buffer``; returns how many were published."""
    room = buffer - backlog()
    if room <= 0:
        return 0
    taken = lanes.take(room)
    if not taken:
        return 0
    published: list[Taken] = []
    try:
        for entry in taken:
            # A chunk rides the broker's last priority step (module docstring).
            step: dict[str, Any] = {"priority": CHUNK_PRIORITY} if entry.chunk else {}
            app.send_task(
                entry.task_name,
                args=[entry.message],
                task_id=entry.task_id,
                **step,
            )
            published.append(entry)
    finally:
        # What was not published stays leased: the next take after the lease puts it back.
        lanes.done(published)
    if on_taken is not None:
        on_taken(published)
    return len(published)


class LaneDispatcher(threading.Thread):
    def __init__(
        self,
        app: Celery,
        lanes: Lanes,
        backlog: Backlog,
        *,
        buffer: int,
        tick_s: float,
        on_taken: Callable[[list[Taken]], None] | None = None,
    ) -> None:
        super().__init__(name="lane-dispatcher", daemon=True)
        self.app = app
        self.lanes = lanes
        self.backlog = backlog
        self.buffer = buffer
        self.tick_s = tick_s
        self.on_taken = on_taken
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                moved = dispatch_once(
                    self.app, self.lanes, self.backlog, self.buffer, on_taken=self.on_taken
                )
            except (redis.RedisError, OSError) as exc:
                log.warning("lanes.dispatch_error", error=type(exc).__name__)
                self.stopping.wait(1.0)
                continue
            except Exception:
                log.exception("lanes.dispatch_failed")
                self.stopping.wait(1.0)
                continue
            if not moved:
                self.stopping.wait(self.tick_s)

    def stop(self) -> None:
        self.stopping.set()


def _record_waits(taken: list[Taken]) -> None:
    from worker.metrics.record import lane_waited

    now = time.time()
    for entry in taken:
        lane_waited(entry.priority, entry.tenant, now - entry.enqueued_at)


def broker_lists(queue: str) -> list[str]:
    """The Redis lists of a queue the dispatcher feeds: its own, and the chunks' step's
    (kombu's Redis transport: ``<queue><sep><step>``, ``sep`` ``\x06\x16``)."""
    return [queue, f"{queue}\x06\x16{CHUNK_PRIORITY}"]


def _lengths(broker: redis.Redis, lists: list[str]) -> int:
    pipe = broker.pipeline(transaction=False)
    for name in lists:
        pipe.llen(name)
    return sum(int(n) for n in pipe.execute())


class DispatchStep(bootsteps.StartStopStep):
    """Starts a :class:`LaneDispatcher` with the worker (``app.steps["worker"]``)."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.dispatcher: LaneDispatcher | None = None

    def start(self, parent: Any) -> None:
        from worker.app import client_app
        from worker.config import get_settings
        from worker.redis_client import broker_redis, shared_redis

        settings = get_settings()
        if not settings.lanes:
            return
        client = client_app(settings.broker_url, settings.result_backend, name="lane-dispatcher")
        lanes = Lanes.from_settings(shared_redis(settings), settings)
        broker = broker_redis(settings)
        queue = str(client.conf.task_default_queue)
        self.dispatcher = LaneDispatcher(
            client,
            lanes,
            # kombu's Redis transport keeps a queue's waiting messages in a list of its name
            # (and one per priority step used: the chunks').
            lambda: _lengths(broker, broker_lists(queue)),
            buffer=settings.lane_buffer,
            tick_s=settings.lane_tick_s,
            on_taken=_record_waits,
        )
        from worker.metrics.record import start_lane_series

        start_lane_series()
        self.dispatcher.start()
        log.info("lanes.dispatcher_started", buffer=settings.lane_buffer, queue=queue)

    def stop(self, parent: Any) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher.join(timeout=2.0)
