"""Celery's consumer with the guard in front of every task strategy (``worker_consumer``)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import redis
import structlog
from celery.worker.consumer import Consumer
from vine import promise

from worker.config import get_settings
from worker.guard.checks import Refusal
from worker.guard.refusals import GUARD_HEADER, MessageGuard
from worker.tasknames import CHANNEL_OF_TASK

__all__ = ["GuardedConsumer", "redis_errors_as_connection_errors", "task_accepted", "task_failed"]

log = structlog.get_logger("worker.guard")

_current: MessageGuard | None = None
"""The guard of this worker's consumer (main process only)."""


_together: list[str] | None = None
"""While :func:`accepted_together` runs: the task ids accepted so far."""


def task_accepted(task_id: str, guard_token: str | None = None) -> None:
    """A pool process took the task: the main process is done with it (clears its mark). A
    send task carrying this guard's token has its mark cleared by its run instead; a batch's
    tasks (:func:`accepted_together`) are cleared here, in one round trip."""
    if _together is not None:
        _together.append(task_id)
    elif _current is not None:
        if guard_token is not None and guard_token == _current.token:
            _current.handed(task_id)
        else:
            _current.unmark(task_id)


def task_failed(task_id: str, guard_token: str | None = None) -> None:
    """A send task handed to the pool with this guard's token failed or lost its pool process
    (its run may never have cleared the mark): clear it here."""
    if _current is not None and guard_token is not None and guard_token == _current.token:
        _current.release(task_id)


@contextlib.contextmanager
def accepted_together() -> Iterator[None]:
    """Tasks a pool process accepted together (a batch, ``worker.batching``): their marks are
    cleared in one Redis round trip instead of one each."""
    global _together
    _together = []
    try:
        yield
    finally:
        ids, _together = _together, None
        if _current is not None:
            _current.unmark_many(ids)


def redis_errors_as_connection_errors(handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Shared state refusing a write (OOM, MISCONF, READONLY) is not the message's fault, and
    not a reason for the main process to die: Celery's consumer survives only connection
    errors. Raised as one, the consumer restarts and reconnects, and the unacknowledged message
    goes back to the queue."""

    @functools.wraps(handler)
    def wrapper(message: Any) -> Any:
        try:
            return handler(message)
        except redis.ConnectionError:
            raise
        except redis.RedisError as exc:
            log.error("guard.redis_error", error=type(exc).__name__)
            raise redis.ConnectionError(f"shared state unavailable: {exc}") from exc

    return wrapper


class GuardedConsumer(Consumer):
    """Celery's consumer with :class:`MessageGuard` in front of every task strategy."""

    _guard: MessageGuard | None = None

    def create_task_handler(self, promise: Any = promise) -> Any:
        global _current
        handler = super().create_task_handler(promise)
        if _current is None or _current.app is not self.app:
            # One guard per main process, kept across consumer restarts (a broker reconnect
            # rebuilds this handler): its token, beat and marks belong to the process.
            _current = MessageGuard(self.app, get_settings())
            _current.start()
        guard = self._guard = _current
        connection_errors = (*getattr(self, "connection_errors", ()), redis.ConnectionError)

        strategies = getattr(self, "strategies")  # noqa: B009 - set by Consumer.__init__

        @redis_errors_as_connection_errors
        def on_task_received(message: Any) -> Any:
            verdict = guard.inspect(message, strategies)
            if isinstance(verdict, Refusal):
                guard.refuse(message, verdict)
                return None
            crashed = guard.mark(verdict, message)
            if crashed is not None:
                guard.refuse(message, crashed)
                return None
            if verdict.task_name in CHANNEL_OF_TASK:
                # The run clears the mark in its first step (no command of its own).
                message.headers[GUARD_HEADER] = guard.token
            try:
                outcome = handler(message)
            except connection_errors:
                # The broker went away, not this message's fault: the consumer reconnects.
                guard.unmark(verdict.task_id)
                raise
            # Any other exception leaves the mark: the main process is going down with it.
            if message.headers.get("eta") is not None:
                guard.unmark(verdict.task_id)  # in the timer, not in the pool yet
            return outcome

        return on_task_received

    def on_close(self) -> None:
        controller = getattr(self, "controller", None)
        clean = getattr(controller, "exitcode", None) in (None, 0)
        if self._guard is not None and clean:
            try:
                self._guard.unmark_all()
            except redis.RedisError:
                log.warning("guard.unmark_failed", marks=len(self._guard.marked))
        super().on_close()
