"""The main-process side of batching: Celery's default strategy, buffering instead of handing
each ``send_sms`` request to the pool (see :mod:`worker.batching` for why not celery-batches).

``tasks.send_sms`` names :func:`batching_strategy` as its ``Strategy``. With batching off, or
no provider of the channel declaring it, that is Celery's default strategy itself. With it on,
the default strategy runs unchanged (revocation, events, ``task_reserved``, ETA and countdown
messages through the timer) over a view of the consumer whose ``on_task_request``, the hand-off
to the pool, is :meth:`Batcher.add`. A message with an ETA (a retry) reaches the real consumer
after its timer and is delivered alone.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from celery.worker.strategy import default

from worker.batching.runner import run_batch
from worker.config import Settings, get_settings
from worker.guard.consumer import accepted_together
from worker.providers import DRIVERS
from worker.tasknames import CHANNEL_OF_TASK

__all__ = ["Batcher", "batching_strategy"]

log = structlog.get_logger(__name__)


def batching_strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """``Task.Strategy``: Celery's default, feeding a :class:`Batcher` when batching is on."""
    settings = get_settings()
    channel = CHANNEL_OF_TASK.get(task.name)
    batches = any(cls.channel == channel and cls.batch_limit > 0 for cls in DRIVERS.values())
    if not (settings.batching and batches):
        return default(task, app, consumer, **kwargs)
    batcher = Batcher(consumer, settings)
    return default(task, app, _ConsumerView(consumer, batcher.add), **kwargs)


class _ConsumerView:
    """The consumer, except for the hand-off of a ready request to the pool."""

    def __init__(self, consumer: Any, on_task_request: Any) -> None:
        self._consumer = consumer
        self.on_task_request = on_task_request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


class Batcher:
    """Buffers requests; one pool job per batch; acknowledges each message after its job."""

    def __init__(self, consumer: Any, settings: Settings) -> None:
        self.consumer = consumer
        self.linger_s = settings.batch_linger_s
        self.max_items = settings.batch_max_items
        # Buffered and in-flight messages are unacknowledged: each raises the prefetch by one
        # (as Celery does for ETA tasks) up to this many, so a batch can fill while the
        # others are being sent; beyond it the consumer waits for acks.
        self.max_extra_prefetch = self.max_items * (self._concurrency() + 1)
        self.counted: set[str] = set()
        self.headroom = False
        self.buffer: list[Any] = []
        self.timer: Any = None

    def _concurrency(self) -> int:
        pool = self.consumer.pool
        return int(getattr(pool, "limit", None) or getattr(pool, "num_processes", 1) or 1)

    def add(self, request: Any) -> None:
        if not self.headroom:
            # Headroom of one full batch (the consumer's QoS exists once it consumes): raised
            # only as each message arrives, the prefetch would be exhausted whenever the
            # consumer looks before the raise is applied (``increment_eventually`` applies it
            # on a later loop turn), and it would then sleep until some timer woke it:
            # measured, 40-100 messages/s reached the buffer instead of a full batch.
            self.headroom = True
            self.consumer.qos.increment_eventually(self.max_items)
        self.buffer.append(request)
        if len(self.counted) < self.max_extra_prefetch and request.id not in self.counted:
            self.counted.add(request.id)
            self.consumer.qos.increment_eventually()
        if len(self.buffer) >= self.max_items:
            self.flush()
        elif self.timer is None:
            self.timer = self.consumer.timer.call_after(self.linger_s, self._linger_expired)

    def _linger_expired(self) -> None:
        self.timer = None
        self.flush()

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.buffer:
            batch, self.buffer = self.buffer[: self.max_items], self.buffer[self.max_items :]
            self._apply(batch)

    def _apply(self, batch: list[Any]) -> None:
        tasks = [
            (r.id, r.name, r.args[0] if r.args else None, int(r.request_dict.get("retries") or 0))
            for r in batch
        ]
        started = time.monotonic()

        def on_accepted(pid: int, time_accepted: float) -> None:
            with accepted_together():  # the guard's marks, one round trip for the batch
                for r in batch:
                    r.on_accepted(pid, time_accepted)

        def on_done(endings: Any) -> None:
            runtime = time.monotonic() - started
            for r in batch:
                # Acknowledges (acks_late), marks it ready, sends task-succeeded.
                r.on_success((False, None, runtime))
            self._give_back(batch)

        def on_error(einfo: Any) -> None:
            # WorkerLostError (SIGKILL, OOM): Celery's own handling per message: requeued
            # (task_reject_on_worker_lost), or acknowledged if its SUCCESS was stored.
            log.warning(
                "batch.pool_job_failed",
                tasks=len(batch),
                error=repr(getattr(einfo, "exception", einfo)),
            )
            for r in batch:
                r.on_failure(einfo)
            self._give_back(batch)

        log.info("batch.flush", tasks=len(batch))
        self.consumer.pool.apply_async(
            run_batch,
            args=(tasks,),
            accept_callback=on_accepted,
            callback=on_done,
            error_callback=on_error,
        )

    def _give_back(self, batch: list[Any]) -> None:
        for r in batch:
            if r.id in self.counted:
                self.counted.discard(r.id)
                self.consumer.qos.decrement_eventually()
