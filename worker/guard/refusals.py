"""The guard's state: fleet-containment marks in Redis, and refusals recorded as outcomes."""

from __future__ import annotations

import json
from typing import Any

import redis
import structlog
from celery import states

from worker.config import Settings
from worker.guard.checks import Accepted, Refusal, inspect_message, is_body
from worker.limits import MessageLimits, shape
from worker.models import DeliveryResult, ErrorInfo
from worker.stores import RedisLedger
from worker.tasknames import CHANNEL_OF_TASK

__all__ = ["MAIN_MARK_PREFIX", "REJECTED_KEY", "MessageGuard"]

log = structlog.get_logger("worker.guard")

MAIN_MARK_PREFIX = "dw:main:"
"""``dw:main:<task id>``: times a worker's main process took this task without handing it on."""
REJECTED_KEY = "dw:rejected"
"""Hash of counts of messages refused without a readable task id, by kind."""
_MARK_TTL_S = 24 * 3600


class MessageGuard:
    """Checks messages and records refusals; one per consumer, in the worker's main process."""

    def __init__(self, app: Any, settings: Settings, client: redis.Redis | None = None) -> None:
        self.app = app
        self.settings = settings
        self.limits: MessageLimits = settings.message_limits()
        self.redis = client or redis.Redis.from_url(settings.shared_redis_url)
        self.ledger = RedisLedger(self.redis)
        self.marked: set[str] = set()
        self._unmark_pending: set[str] = set()
        """Marks whose clearing failed (Redis unreachable); cleared before the next mark."""

    # -- the checks ----------------------------------------------------------------------------

    def inspect(self, message: Any, registered: Any) -> Accepted | Refusal:
        return inspect_message(message, registered, self.app, self.limits)

    # -- fleet containment ---------------------------------------------------------------------

    def mark(self, accepted: Accepted, message: Any) -> Refusal | None:
        """Count this task id as "in the main process"; a refusal if it killed one before."""
        self._retry_unmarks()
        if accepted.task_id in self.marked or accepted.task_id in self._unmark_pending:
            # This process, alive, already holds the mark (a redelivery of a task whose mark
            # it could not clear, e.g. while Redis restarted): not a crash.
            self._unmark_pending.discard(accepted.task_id)
            self.marked.add(accepted.task_id)
            return None
        key = MAIN_MARK_PREFIX + accepted.task_id
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, _MARK_TTL_S)
        count = int(pipe.execute()[0])
        self.marked.add(accepted.task_id)
        crashes = count - 1
        if crashes < self.settings.max_main_process_crashes:
            return None
        self.unmark(accepted.task_id)
        payload = message.decode()
        first = payload[0][0] if is_body(payload) and payload[0] else None
        return Refusal(
            "dead_letter",
            f"the main process of its worker died {crashes} time(s) while handling it",
            accepted.task_id,
            accepted.task_name,
            shape(first),
            message=first,
        )

    def unmark(self, task_id: str) -> None:
        """Clear this process's mark; never raises. A mark that cannot be cleared now (Redis
        unreachable) is retried before the next message is marked: left behind, it would make
        the task's next delivery look like a crash of this (living) process."""
        if task_id in self.marked:
            self.marked.discard(task_id)
            try:
                self.redis.delete(MAIN_MARK_PREFIX + task_id)
            except redis.RedisError:
                self._unmark_pending.add(task_id)
                log.warning("guard.unmark_deferred", marks=len(self._unmark_pending))

    def _retry_unmarks(self) -> None:
        for task_id in list(self._unmark_pending):
            self.redis.delete(MAIN_MARK_PREFIX + task_id)
            self._unmark_pending.discard(task_id)

    def unmark_all(self) -> None:
        """A clean stop: the tasks not yet in a pool process go back to the broker unharmed."""
        for task_id in list(self.marked):
            self.unmark(task_id)
        self._retry_unmarks()

    # -- refusals ------------------------------------------------------------------------------

    def refuse(self, message: Any, refusal: Refusal) -> None:
        """Record the refusal as a final outcome (when it has an id), then acknowledge."""
        if refusal.task_id is None:
            self.redis.hincrby(REJECTED_KEY, refusal.kind, 1)
            log.error("message.rejected", reason=refusal.reason, kind=refusal.kind)
        else:
            self._record(refusal)
        message.ack()

    def _record(self, refusal: Refusal) -> None:
        task_id = refusal.task_id
        assert task_id is not None
        task_name = refusal.task_name or ""
        channel = CHANNEL_OF_TASK.get(task_name)
        record = self.ledger.get(task_id)
        if record is not None and record.final:
            # Already finished (a stale copy): its outcome stands.
            log.info("delivery.already_final", delivery_id=task_id, state=record.state)
            return
        state = "dead" if refusal.kind == "dead_letter" else "failed"
        error = {"kind": refusal.kind, "message": refusal.reason[:500]}
        result: dict[str, Any]
        if channel is not None:
            result = DeliveryResult(
                status=state,
                delivery_id=task_id,
                channel=channel,
                attempts=record.attempts if record is not None else 0,
                error=ErrorInfo.model_validate(error),
            ).model_dump(mode="json", exclude_none=True)
        else:
            result = {"status": state, "delivery_id": task_id, "error": error}
        self.ledger.create(
            task_id,
            channel=channel or "",
            provider="auto",
            extra={"task_name": task_name},
        )
        if refusal.kind == "dead_letter":
            self.ledger.bury(
                task_id, reason=refusal.reason, task_name=task_name, message=refusal.message
            )
            self.ledger.set_fields(task_id, result=json.dumps(result))
        else:
            self.ledger.transition(
                task_id, "failed", error_kind=refusal.kind, result=json.dumps(result)
            )
            self.ledger.set_aside(
                task_id, reason=refusal.reason, task_name=task_name, outline=refusal.outline
            )
        self.app.backend.store_result(task_id, result, states.SUCCESS)
        log.warning(
            "delivery.refused",
            delivery_id=task_id,
            task=task_name[:100],
            kind=refusal.kind,
            reason=refusal.reason,
            action="delivery-worker dead",
        )
