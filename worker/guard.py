"""The worker's front door: every task message is checked before anything else touches it.

Celery's consumer hands each message to a task *strategy*, which builds a ``Request`` (our
:class:`~worker.app.RedactedRequest` derives Flower's redacted ``argsrepr`` there) and passes it
to the prefork pool, which pickles it. All of that runs in the worker's **main** process and
recurses over the message: a dict nested a few hundred levels deep made pickling raise
``RecursionError`` there, the worker died ("Unrecoverable error") and the message, restored to
the queue, killed the next worker too. The pool's dead-letter count (``runs_unfinished``,
``worker.service``) never saw it, since no task ever started.

:class:`GuardedConsumer` (``worker_consumer``) wraps the consumer's message handler. Before
the strategy runs, :class:`MessageGuard` checks, without recursion and within fixed work:

* headers: an object with a readable task id and name, within the limits;
* the body: its size, its content type (JSON only), that it decodes (JSON decoding itself
  recurses; a body nested 100,000 levels raises ``RecursionError`` in kombu, caught here), its
  depth, item count and string lengths (:mod:`worker.limits`), the protocol-2 shape
  ``[args, kwargs, embed]`` and that the arguments fit the task's signature;
* the task name: registered in this worker.

A message that fails a check never reaches the pool. With a readable task id it ends
``failed`` with ``error.kind = "invalid_message"`` and a reason naming the check: in the ledger
(final), in the result backend (state ``SUCCESS`` holding that failed result dict, the same
answer as every other ``invalid_message`` failure, so ``AsyncResult(id).get()`` returns it at
once), and as a redacted dead letter (``delivery-worker dead``: task, reason and an outline of
keys and types, never content; not replayable). The broker message is acknowledged. Without a
readable id there is nothing to record it under: it is logged (``message.rejected``, no
content), counted in the ``dw:rejected`` hash and acknowledged.

Fleet containment: a message that passes the checks and still kills the main process (some
other bug) must not take the fleet down one worker at a time. Before the strategy runs, the
guard counts the task id in ``dw:main:<id>``; the mark is cleared once a pool process has
accepted the task (:func:`task_accepted`, from ``RedactedRequest.on_accepted``: the prefork pool
pickles the job in the event loop *after* the strategy returns, which is where the deep message
used to fail), right away for a task scheduled for later (ETA, countdown), and for every task
still waiting for a pool process when the worker stops cleanly. A crash ("Unrecoverable error",
a signal) leaves the marks. A mark left behind means a main process died with that task
in hand: on the next delivery, after ``max_main_process_crashes`` such deaths, the message is
set aside as a dead letter (state ``dead``, replayable with ``delivery-worker dead replay``)
without going near the pool.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from celery import states
from celery.worker.consumer import Consumer
from vine import promise

from worker.config import Settings, get_settings
from worker.limits import MessageLimits, check_encoded_size, check_structure, shape
from worker.models import DeliveryResult, ErrorInfo
from worker.stores import RedisLedger
from worker.tasknames import CHANNEL_OF_TASK

__all__ = [
    "MAIN_MARK_PREFIX",
    "REJECTED_KEY",
    "GuardedConsumer",
    "MessageGuard",
    "Refusal",
    "task_accepted",
]

log = structlog.get_logger("worker.guard")

MAIN_MARK_PREFIX = "dw:main:"
"""``dw:main:<task id>``: times a worker's main process took this task without handing it on."""
REJECTED_KEY = "dw:rejected"
"""Hash of counts of messages refused without a readable task id, by kind."""
_MARK_TTL_S = 24 * 3600

_IDENT = re.compile(r"[\x21-\x7e]{1,200}")


@dataclass(frozen=True)
class Refusal:
    """Why a message is not handed to the pool."""

    kind: str
    """``invalid_message`` (checks) or ``dead_letter`` (its worker's main process died)."""
    reason: str
    task_id: str | None = None
    task_name: str | None = None
    outline: Any = None
    """A redacted outline of the message for the dead letter (keys and types)."""
    message: Any = None
    """The whole message, only for a replayable dead letter (it passed every check)."""


@dataclass(frozen=True)
class Accepted:
    task_id: str
    task_name: str


_current: MessageGuard | None = None
"""The guard of this worker's consumer (main process only)."""


def task_accepted(task_id: str) -> None:
    """A pool process took the task: the main process is done with it (clears its mark)."""
    if _current is not None:
        _current.unmark(task_id)


def _ident(value: Any) -> str | None:
    return value if isinstance(value, str) and _IDENT.fullmatch(value) else None


def _printable(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else repr(type(value).__name__)
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _too_deep(exc: BaseException) -> bool:
    """Whether a decode error comes from ``RecursionError`` (kombu wraps it in DecodeError)."""
    seen: list[BaseException] = [exc]
    for _ in range(8):
        if not seen:
            break
        current = seen.pop()
        if isinstance(current, RecursionError):
            return True
        seen.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        seen.extend(a for a in current.args if isinstance(a, BaseException))
    return False


class MessageGuard:
    """Checks messages and records refusals; one per consumer, in the worker's main process."""

    def __init__(self, app: Any, settings: Settings, client: redis.Redis | None = None) -> None:
        self.app = app
        self.settings = settings
        self.limits: MessageLimits = settings.message_limits()
        self.redis = client or redis.Redis.from_url(settings.shared_redis_url)
        self.ledger = RedisLedger(self.redis)
        self.marked: set[str] = set()

    # -- the checks ----------------------------------------------------------------------------

    def inspect(self, message: Any, registered: Any) -> Accepted | Refusal:
        headers = message.headers
        if not isinstance(headers, dict):
            return Refusal("unreadable", "the headers are not an object")
        task_id, task_name = _ident(headers.get("id")), _ident(headers.get("task"))
        if task_id is None:
            return Refusal("unreadable", "no readable task id in the headers")
        if task_name is None:
            return Refusal("invalid_message", "no readable task name in the headers", task_id)

        def refuse(reason: str, payload: Any = None) -> Refusal:
            outline = shape(payload[0][0]) if _is_body(payload) and payload[0] else None
            return Refusal("invalid_message", reason, task_id, task_name, outline)

        reason = check_structure(headers, self.limits)
        if reason is not None:
            return refuse(f"headers: {reason}")
        body = message.body
        size = len(body) if isinstance(body, bytes | str) else 0
        reason = check_encoded_size(size, self.limits)
        if reason is not None:
            return refuse(reason)
        if task_name not in registered:
            return refuse(f"unknown task name {task_name[:100]!r}")
        if message.content_type != "application/json":
            return refuse(
                f"content type {_printable(message.content_type)!r} is not accepted (JSON only)"
            )
        try:
            payload = message.decode()
        except Exception as exc:
            if _too_deep(exc):
                return refuse(
                    f"nesting depth exceeds the limit of {self.limits.max_depth} "
                    "(too deep to decode)"
                )
            return refuse(f"the body is not valid JSON ({type(exc).__name__})")
        reason = check_structure(payload, self.limits)
        if reason is not None:
            return refuse(reason, payload)
        if not _is_body(payload):
            return refuse("the body is not a Celery protocol 2 body [args, kwargs, embed]")
        args, kwargs, _embed = payload
        task = self.app.tasks.get(task_name)
        check = getattr(task, "__header__", None)
        if check is not None:
            try:
                check(*args, **kwargs)
            except TypeError:
                # Our own words: the TypeError would quote keyword names the producer chose.
                return refuse(
                    f"arguments do not match {task_name}: got {len(args)} positional and "
                    f"{len(kwargs)} keyword arguments",
                    payload,
                )
        return Accepted(task_id, task_name)

    # -- fleet containment ---------------------------------------------------------------------

    def mark(self, accepted: Accepted, message: Any) -> Refusal | None:
        """Count this task id as "in the main process"; a refusal if it killed one before."""
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
        first = payload[0][0] if _is_body(payload) and payload[0] else None
        return Refusal(
            "dead_letter",
            f"the main process of its worker died {crashes} time(s) while handling it",
            accepted.task_id,
            accepted.task_name,
            shape(first),
            message=first,
        )

    def unmark(self, task_id: str) -> None:
        if task_id in self.marked:
            self.marked.discard(task_id)
            self.redis.delete(MAIN_MARK_PREFIX + task_id)

    def unmark_all(self) -> None:
        """A clean stop: the tasks not yet in a pool process go back to the broker unharmed."""
        for task_id in list(self.marked):
            self.unmark(task_id)

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


def _is_body(payload: Any) -> bool:
    return (
        isinstance(payload, list | tuple)
        and len(payload) == 3
        and isinstance(payload[0], list | tuple)
        and isinstance(payload[1], dict)
        and (payload[2] is None or isinstance(payload[2], dict))
    )


class GuardedConsumer(Consumer):
    """Celery's consumer with :class:`MessageGuard` in front of every task strategy."""

    _guard: MessageGuard | None = None

    def create_task_handler(self, promise: Any = promise) -> Any:
        global _current
        handler = super().create_task_handler(promise)
        guard = self._guard = _current = MessageGuard(self.app, get_settings())
        connection_errors = (*getattr(self, "connection_errors", ()), redis.ConnectionError)

        strategies = getattr(self, "strategies")  # noqa: B009 - set by Consumer.__init__

        def on_task_received(message: Any) -> Any:
            verdict = guard.inspect(message, strategies)
            if isinstance(verdict, Refusal):
                guard.refuse(message, verdict)
                return None
            crashed = guard.mark(verdict, message)
            if crashed is not None:
                guard.refuse(message, crashed)
                return None
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
