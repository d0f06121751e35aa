"""The guard's state: fleet-containment marks in Redis, and refusals recorded as outcomes."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

import redis
import structlog
from celery import states

from worker.config import Settings
from worker.guard.checks import Accepted, Refusal, inspect_message, is_body
from worker.limits import MessageLimits, shape
from worker.models import DeliveryResult, ErrorInfo
from worker.redis_client import shared_redis
from worker.stores import RedisLedger
from worker.stores.keys import Keys, keys_for
from worker.tasknames import CHANNEL_OF_TASK

__all__ = [
    "ALIVE_PREFIX",
    "ALIVE_TTL_S",
    "GUARD_HEADER",
    "MAIN_MARK_PREFIX",
    "REFUSED_COPY_SUFFIX",
    "REJECTED_KEY",
    "MessageGuard",
]

log = structlog.get_logger("worker.guard")

MAIN_MARK_PREFIX = Keys().main_mark_prefix
"""``<ns>:main:<task id>`` (here the default namespace; a guard uses its own): a hash of the
worker main processes (by token) holding this task
between its arrival and a pool process taking it. A holder whose liveness key is gone died
with it in hand."""
GUARD_HEADER = "dw_guard"
"""Message header the main process sets on a send task it marked: its token. The pool process
clears the mark in the run's first shared-state step (``worker.stores.hotpath``), so handing a
send to the pool costs no Redis command of its own."""
ALIVE_PREFIX = Keys().guard_alive_prefix
"""``<ns>:guard:alive:<token>``: set every second by each worker main process, expires after
:data:`ALIVE_TTL_S`; its absence means that process is gone."""
ALIVE_TTL_S = 3.0
_BEAT_EVERY_S = 1.0

# Look at the other holders of a task's mark and, when none of them is alive (or ``force``),
# add this process as a holder. Returns {alive holders, dead holders}. The liveness keys are
# read by name (not passed as KEYS): the guard runs against one Redis, never a cluster.
_MARK = """
local alive, dead = 0, 0
for _, holder in ipairs(redis.call('HKEYS', KEYS[1])) do
  if holder ~= ARGV[1] then
    if redis.call('EXISTS', ARGV[2] .. holder) == 1 then alive = alive + 1 else dead = dead + 1 end
  end
end
if alive == 0 or ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], 1)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return {alive, dead}
"""
REFUSED_COPY_SUFFIX = ":refused-copy"
"""A refused message whose id is a live delivery's is set aside as the dead letter
``<id>:refused-copy``, leaving the delivery's own record, result and dead letter alone."""
REJECTED_KEY = Keys().rejected
"""(Default namespace.) Hash of counts of messages refused without a readable task id, by kind."""
_MARK_TTL_S = 24 * 3600


class MessageGuard:
    """Checks messages and records refusals; one per consumer, in the worker's main process."""

    def __init__(self, app: Any, settings: Settings, client: redis.Redis | None = None) -> None:
        self.app = app
        self.settings = settings
        self.limits: MessageLimits = settings.message_limits()
        self.redis = client or shared_redis(settings)
        self.keys = keys_for(settings)
        self.ledger = RedisLedger(self.redis, keys=self.keys)
        self.marked: set[str] = set()
        self._unmark_pending: set[str] = set()
        """Marks whose clearing failed (Redis unreachable); cleared before the next mark."""
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._mark_script = self.redis.register_script(_MARK)
        self._stop = threading.Event()

    # -- liveness ------------------------------------------------------------------------------

    def beat(self) -> None:
        """Say this main process is alive for the next :data:`ALIVE_TTL_S`."""
        self.redis.set(self.keys.guard_alive_prefix + self.token, 1, px=int(ALIVE_TTL_S * 1000))

    def start(self) -> None:
        """Beat every second from a daemon thread (the consumer's loop may be busy)."""

        def run() -> None:
            while not self._stop.wait(_BEAT_EVERY_S):
                # Redis away: this process looks dead to others only ALIVE_TTL_S after its
                # last beat, and mark() gives a holder that long to beat again.
                with contextlib.suppress(redis.RedisError):
                    self.beat()

        with contextlib.suppress(redis.RedisError):
            self.beat()
        threading.Thread(target=run, name="guard-heartbeat", daemon=True).start()

    def stop(self) -> None:
        """Stop beating (tests; a worker's guard beats until its process ends)."""
        self._stop.set()

    # -- the checks ----------------------------------------------------------------------------

    def inspect(self, message: Any, registered: Any) -> Accepted | Refusal:
        return inspect_message(message, registered, self.app, self.limits)

    # -- fleet containment ---------------------------------------------------------------------

    def mark(self, accepted: Accepted, message: Any) -> Refusal | None:
        """Hold this task's mark while the main process has it; a refusal if it killed one.

        Another holder that is alive is a concurrent copy (a redelivery, a sweep), not a crash:
        its mark clears within moments, once a pool process takes its copy, so wait for that.
        A holder without a liveness key died with the task in hand; a holder that only looks
        dead (Redis was away and its beat not yet back) gets one beat interval to beat again.
        """
        self._retry_unmarks()
        if accepted.task_id in self.marked:
            return None  # this living process already holds it: not a crash
        key = self.keys.main_mark(accepted.task_id)
        started = time.monotonic()
        while True:
            waited = time.monotonic() - started
            late = waited >= ALIVE_TTL_S + _BEAT_EVERY_S
            alive, dead = self._mark_script(
                keys=[key],
                args=[self.token, self.keys.guard_alive_prefix, _MARK_TTL_S, "1" if late else "0"],
            )
            # A holder that looks dead has one beat interval to beat again (Redis was away);
            # a living holder, until its copy reaches a pool process.
            if late or (alive == 0 and (dead == 0 or waited >= _BEAT_EVERY_S + 0.25)):
                break
            time.sleep(0.05)
        self.marked.add(accepted.task_id)
        if alive > 0 or dead < self.settings.max_main_process_crashes:
            return None  # still held by a living copy: not a crash either
        self.marked.discard(accepted.task_id)
        self.redis.delete(key)
        payload = message.decode()
        first = payload[0][0] if is_body(payload) and payload[0] else None
        return Refusal(
            "dead_letter",
            f"the main process of its worker died {dead} time(s) while handling it",
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
                self.redis.hdel(self.keys.main_mark(task_id), self.token)
            except redis.RedisError:
                self._unmark_pending.add(task_id)
                log.warning("guard.unmark_deferred", marks=len(self._unmark_pending))

    def handed(self, task_id: str) -> None:
        """A pool process took a send task that carries this process's token
        (:data:`GUARD_HEADER`): its run clears the mark in Redis, this process forgets it."""
        self.marked.discard(task_id)

    def release(self, task_id: str) -> None:
        """The task ended without its run clearing the mark (its pool process died, or it
        failed before the run's first step): clear it; never raises."""
        self.marked.add(task_id)
        self.unmark(task_id)

    def unmark_many(self, task_ids: list[str]) -> None:
        """:meth:`unmark` for several tasks, in one round trip; never raises."""
        ours = [task_id for task_id in task_ids if task_id in self.marked]
        self.marked.difference_update(ours)
        if not ours:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for task_id in ours:
                pipe.hdel(self.keys.main_mark(task_id), self.token)
            pipe.execute()
        except redis.RedisError:
            self._unmark_pending.update(ours)
            log.warning("guard.unmark_deferred", marks=len(self._unmark_pending))

    def _retry_unmarks(self) -> None:
        for task_id in list(self._unmark_pending):
            self.redis.hdel(self.keys.main_mark(task_id), self.token)
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
            self.redis.hincrby(self.keys.rejected, refusal.kind, 1)
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
        if record is not None and refusal.kind != "dead_letter":
            # A malformed copy carrying a live delivery's id (a replay, a hostile producer): it
            # is not that delivery, so its refusal never touches the delivery's record or
            # result. It is set aside beside it (REFUSED_COPY_SUFFIX) and the delivery goes on.
            self.ledger.set_aside(
                task_id + REFUSED_COPY_SUFFIX,
                reason=refusal.reason,
                task_name=task_name,
                outline=refusal.outline,
            )
            log.warning(
                "delivery.refused_copy",
                delivery_id=task_id,
                state=record.state,
                task=task_name[:100],
                kind=refusal.kind,
                reason=refusal.reason,
            )
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
            self.ledger.record_result(task_id, json.dumps(result))
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
