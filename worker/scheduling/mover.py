"""The schedule mover: publishes due messages from the ledger's schedule to their queue.

It runs as a small thread in every worker's **main** process (:class:`MoverStep`, a Celery
worker bootstep), not as a beat entry: beat ticks once a second at best and not reliably
below that, and a due message must be sent within a second of its time. The mover ticks every
``TICK_S`` (0.1 s), or sooner when the next entry falls due.

Several workers run a mover at once. Each pass claims due entries atomically
(:meth:`~worker.stores.Ledger.claim_due`, one Lua script): a claimed entry's due time moves to
the end of a lease (``LEASE_S``), so no other mover takes it meanwhile. The run it starts takes
the delivery out of ``scheduled`` (ledger transition, same atomic step as leaving the
schedule). If the worker dies between the claim and that run (SIGKILL, the broker lost the
message), the lease ends and a mover publishes the delivery again, once its queue is empty (a
message still waiting behind others is not lost; see :func:`move_due`). A copy too many is
harmless: the delivery's send lock and its final ledger state keep it from being sent twice.

Campaign messages (record field ``chunk``, ``worker.campaign``) due in one pass are published
together: per channel and queue, one ``tasks.send_chunk`` of at most their chunk size, so a
chunk held until its ``send_at``, its quiet hours' opening or its provider's legal window
leaves in one provider request per chunk, as it would have at once. A cancelled one is no
longer ``scheduled`` and is not claimed; the others leave without it.

Nothing waits in worker memory: a message is published only when due, so the memory a worker
holds does not grow with the number of future messages (``bench/scheduling.py``).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
import structlog
from celery import Celery, bootsteps

from worker.campaign import MAX_PER_TASK, chunk_repr
from worker.lanes import Lanes, lane_of, lanes_beside
from worker.scheduling.defaults import LEASE_S, TICK_S
from worker.stores.keys import keys_for
from worker.stores.ledger.base import DueEntry, Schedule
from worker.tasknames import SEND_CHUNK_TASK, TASK_NAMES

__all__ = ["LEASE_S", "TICK_S", "MoverStep", "ScheduleMover", "move_due"]

log = structlog.get_logger(__name__)

BATCH = MAX_PER_TASK
"""Entries claimed per pass: a whole chunk of the largest provider batch at once."""
_CHANNEL_OF = {task: channel for channel, task in TASK_NAMES.items()}


Backlog = Callable[[str], int]
"""How many messages wait in a broker queue (by name)."""


def move_due(
    app: Celery,
    ledger: Schedule,
    now: float | None = None,
    *,
    lease_s: float = LEASE_S,
    backlog: Backlog | None = None,
    lanes: Lanes | None = None,
) -> int:
    """One pass: claim what is due and publish it; returns how many entries were claimed.

    With ``lanes``, an entry for the default queue goes into its lane (priority, tenant)
    instead, and the dispatcher publishes it in turn: a due campaign does not overtake
    ``high`` work, and a due ``high`` message does not wait behind a campaign.

    An entry claimed before (its lease ended and its run has not started) is published again
    only when its queue is empty: a message still waiting behind others in a busy queue is
    not lost, and a copy would only add to the queue (under a backlog, republishing every
    lease made the backlog grow without end). With the queue empty and no run started, the
    first copy is gone or held by a worker that died: publish again.
    """
    entries = ledger.claim_due(time.time() if now is None else now, lease_s, limit=BATCH)
    published = 0
    waiting: dict[str, int] = {}
    chunks: dict[tuple[str, str], list[DueEntry]] = {}
    for entry in entries:
        queue = entry.queue or str(app.conf.task_default_queue)
        if entry.claimed_before and backlog is not None:
            if queue not in waiting:
                waiting[queue] = backlog(queue)
            if waiting[queue] > 0:
                continue  # still queued behind others; its lease was extended
        if entry.chunk and entry.task_name in _CHANNEL_OF:
            chunks.setdefault((entry.task_name, entry.queue), []).append(entry)
            continue
        if lanes is not None and not entry.queue:
            priority, tenant = lane_of(entry.message)
            lanes.push(entry.delivery_id, priority, tenant)  # again: keeps its place
            published += 1
            continue
        options: dict[str, Any] = {"task_id": entry.delivery_id}
        if entry.queue:
            options["queue"] = entry.queue
        app.send_task(entry.task_name, args=[json.loads(entry.message)], **options)
        published += 1
        if entry.claimed_before:
            log.warning("schedule.republished", delivery_id=entry.delivery_id)
    for (task_name, queue), group in chunks.items():
        published += _publish_chunks(app, _CHANNEL_OF[task_name], queue, group)
    if published:
        log.info("schedule.published", count=published)
    return len(entries)


def _publish_chunks(app: Celery, channel: str, queue: str, entries: list[DueEntry]) -> int:
    """Due campaign messages as chunk tasks of at most their chunk size (their Celery results
    stay under each delivery id: ``worker.delivery.campaign``)."""
    size = max(1, min(_size(entries[0].chunk), MAX_PER_TASK))
    for start in range(0, len(entries), size):
        part = entries[start : start + size]
        items = [{"id": e.delivery_id, "message": json.loads(e.message)} for e in part]
        options: dict[str, Any] = {"queue": queue} if queue else {}
        app.send_task(
            SEND_CHUNK_TASK,
            args=[{"channel": channel, "items": items}],
            task_id=str(uuid.uuid4()),
            argsrepr=chunk_repr(channel, len(items)),
            kwargsrepr="{}",
            **options,
        )
        again = [e.delivery_id for e in part if e.claimed_before]
        if again:
            log.warning("schedule.republished", count=len(again))
    return len(entries)


def _size(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        return MAX_PER_TASK


class ScheduleMover(threading.Thread):
    def __init__(
        self,
        app: Celery,
        ledger: Schedule,
        *,
        tick_s: float = TICK_S,
        lease_s: float = LEASE_S,
        backlog: Backlog | None = None,
        lanes: Lanes | None = None,
    ) -> None:
        super().__init__(name="schedule-mover", daemon=True)
        self.app = app
        self.ledger = ledger
        self.backlog = backlog
        self.lanes = lanes
        self.tick_s = tick_s
        self.lease_s = lease_s
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                claimed = move_due(
                    self.app,
                    self.ledger,
                    lease_s=self.lease_s,
                    backlog=self.backlog,
                    lanes=self.lanes,
                )
                if claimed >= BATCH:
                    continue  # more are due: no sleep
                next_due = self.ledger.next_due()
            except (redis.RedisError, OSError) as exc:
                # Redis or the broker away: try again; nothing was lost (a claimed entry
                # comes back when its lease ends).
                log.warning("schedule.mover_error", error=type(exc).__name__)
                self.stopping.wait(1.0)
                continue
            except Exception:
                log.exception("schedule.mover_failed")
                self.stopping.wait(1.0)
                continue
            tick = self.tick_s
            pause = tick if next_due is None else min(tick, max(next_due - time.time(), 0.0))
            self.stopping.wait(pause)

    def stop(self) -> None:
        self.stopping.set()


class MoverStep(bootsteps.StartStopStep):
    """Starts a :class:`ScheduleMover` with the worker (``app.steps["worker"]``)."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.mover: ScheduleMover | None = None

    def start(self, parent: Any) -> None:
        from worker.app import client_app
        from worker.config import get_settings
        from worker.redis_client import broker_redis, shared_redis
        from worker.stores import RedisLedger

        settings = get_settings()
        # Its own client app and Redis connection: nothing shared with the consumer's loop.
        # Both may be sentinel:// (worker.redis_client): client_app gives Celery the
        # master's name, and the backlog reads the queue on the broker's current master.
        client = client_app(settings.broker_url, settings.result_backend, name="schedule-mover")
        ledger = RedisLedger(shared_redis(settings), keys=keys_for(settings))
        broker = broker_redis(settings)
        self.mover = ScheduleMover(
            client,
            ledger,
            tick_s=settings.schedule_tick_s,
            lease_s=settings.schedule_lease_s,
            # kombu's Redis transport keeps a queue's waiting messages in a list of its name.
            backlog=lambda queue: int(broker.llen(queue)),
            lanes=lanes_beside(ledger, settings),
        )
        self.mover.start()
        log.info(
            "schedule.mover_started",
            tick_s=settings.schedule_tick_s,
            lease_s=settings.schedule_lease_s,
        )

    def stop(self, parent: Any) -> None:
        if self.mover is not None:
            self.mover.stop()
            self.mover.join(timeout=2.0)
