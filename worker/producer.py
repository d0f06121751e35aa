"""Enqueue messages from application code: validate first, then publish.

``send_email(msg)`` refuses an invalid message with :class:`~worker.models.InvalidMessage`
(naming each bad field) and nothing reaches Redis. A valid message is normalised, recorded in
the ledger (which also deduplicates on ``idempotency_key``) and published with a redacted
``argsrepr`` so Flower never shows bodies or addresses.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery
from celery.result import AsyncResult

from worker.config import get_settings
from worker.models import Message
from worker.providers import parse_message
from worker.redaction import redacted_repr
from worker.scheduling.cancel import CancelResult, cancel_delivery
from worker.scheduling.enqueue import hold_at_enqueue
from worker.scheduling.rules import check_send_at
from worker.stores import Ledger, RedisLedger
from worker.tasknames import TASK_NAMES

if TYPE_CHECKING:
    from worker.runtime import Runtime

__all__ = [
    "Producer",
    "cancel",
    "enqueue",
    "lookup",
    "send_email",
    "send_sms",
    "send_voice",
]


class Producer:
    """Validates, records and publishes messages through one Celery app."""

    def __init__(self, app: Celery | None = None, ledger: Ledger | None = None) -> None:
        if app is None:
            from worker.app import app as default_app

            app = default_app
        self.app = app
        if ledger is None:
            ledger = RedisLedger(redis.Redis.from_url(get_settings().shared_redis_url))
        self.ledger = ledger
        self._cancel_runtime: Runtime | None = None

    def validate(self, channel: str, message: Any) -> Message:
        # The size and shape bounds the workers enforce (worker.limits), checked first.
        model = parse_message(channel, message, limits=get_settings().message_limits())
        check_send_at(model.send_at, time.time())  # tolerance and horizon (worker.scheduling)
        return model

    def enqueue(self, channel: str, message: Any, **options: Any) -> AsyncResult[Any]:
        model = self.validate(channel, message)
        body = model.model_dump(mode="json", by_alias=True, exclude_none=True)
        delivery_id = str(uuid.uuid4())
        existing, created = self.ledger.create(
            delivery_id,
            channel=channel,
            provider=model.provider or "auto",
            idempotency_key=model.idempotency_key,
            extra={
                "task_name": TASK_NAMES[channel],
                "message": json.dumps(body),
                # Where the schedule mover publishes it when due ("" = the default queue).
                "queue": str(options.get("queue") or ""),
            },
        )
        if not created:
            # Same idempotency key as an earlier enqueue: that delivery is the answer.
            return AsyncResult(existing, app=self.app)
        quiet = get_settings().quiet_hours
        if set(options) <= {"queue"} and hold_at_enqueue(
            self.app, self.ledger, model, delivery_id, quiet_hours=quiet
        ):
            # On the durable schedule at once: no task runs until it is due.
            return AsyncResult(delivery_id, app=self.app)
        try:
            return self.app.send_task(
                TASK_NAMES[channel],
                args=[body],
                task_id=delivery_id,
                argsrepr=redacted_repr(channel, body),
                kwargsrepr="{}",
                **options,
            )
        except Exception:
            # Not published: forget the record so the caller may try again with the same key.
            self.ledger.forget(delivery_id, channel=channel, idempotency_key=model.idempotency_key)
            raise

    def cancel(self, delivery_id: str) -> CancelResult:
        """Take a delivery back (:mod:`worker.scheduling.cancel`): one answer per id."""
        if self._cancel_runtime is None:
            from dataclasses import replace

            from worker.runtime import Runtime
            from worker.stores import Stores

            # Cancelling uses this producer's ledger and, for a send scheduled at a provider,
            # that provider's driver (its API key from DELIVERY_*); no other store.
            stores = replace(Stores.in_memory(), ledger=self.ledger)
            self._cancel_runtime = Runtime(get_settings(), stores=stores)
        return cancel_delivery(self._cancel_runtime, self.app, delivery_id)

    def close(self) -> None:
        """Close what :meth:`cancel` opened (its HTTP client for provider cancels)."""
        if self._cancel_runtime is not None:
            self._cancel_runtime.close()
            self._cancel_runtime = None

    def lookup(self, delivery_id: str) -> dict[str, Any] | None:
        """The delivery's ledger record (state, attempts, timestamps, result), or ``None``."""
        record = self.ledger.get(delivery_id)
        return None if record is None else record.to_dict()


_default: Producer | None = None


def _producer() -> Producer:
    global _default
    if _default is None:
        _default = Producer()
    return _default


def enqueue(channel: str, message: Any, **options: Any) -> AsyncResult[Any]:
    return _producer().enqueue(channel, message, **options)


def cancel(delivery_id: str) -> CancelResult:
    """Cancel a delivery not yet sent, or scheduled at its provider; see
    :mod:`worker.scheduling.cancel` for the answers (``result.answer``)."""
    return _producer().cancel(delivery_id)


def lookup(delivery_id: str) -> dict[str, Any] | None:
    return _producer().lookup(delivery_id)


def send_email(message: Any, **options: Any) -> AsyncResult[Any]:
    return enqueue("email", message, **options)


def send_sms(message: Any, **options: Any) -> AsyncResult[Any]:
    return enqueue("sms", message, **options)


def send_voice(message: Any, **options: Any) -> AsyncResult[Any]:
    return enqueue("voice", message, **options)
