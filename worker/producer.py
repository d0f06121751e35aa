"""Enqueue messages from application code: validate first, then publish.

``send_email(msg)`` refuses an invalid message with :class:`~worker.models.InvalidMessage`
(naming each bad field) and nothing reaches Redis. A valid message is normalised, recorded in
the ledger (which also deduplicates on ``idempotency_key``) and published with a redacted
``argsrepr`` so Flower never shows bodies or addresses.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis
from celery import Celery
from celery.result import AsyncResult

from worker.config import get_settings
from worker.models import Message
from worker.providers import parse_message
from worker.redaction import redacted_repr
from worker.stores import Ledger, RedisLedger
from worker.tasknames import TASK_NAMES

__all__ = [
    "Producer",
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

    def validate(self, channel: str, message: Any) -> Message:
        # The size and shape bounds the workers enforce (worker.limits), checked first.
        return parse_message(channel, message, limits=get_settings().message_limits())

    def enqueue(self, channel: str, message: Any, **options: Any) -> AsyncResult[Any]:
        model = self.validate(channel, message)
        body = model.model_dump(mode="json", by_alias=True, exclude_none=True)
        delivery_id = str(uuid.uuid4())
        existing, created = self.ledger.create(
            delivery_id,
            channel=channel,
            provider=model.provider or "auto",
            idempotency_key=model.idempotency_key,
            extra={"task_name": TASK_NAMES[channel], "message": json.dumps(body)},
        )
        if not created:
            # Same idempotency key as an earlier enqueue: that delivery is the answer.
            return AsyncResult(existing, app=self.app)
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


def lookup(delivery_id: str) -> dict[str, Any] | None:
    return _producer().lookup(delivery_id)


def send_email(message: Any, **options: Any) -> AsyncResult[Any]:
    return enqueue("email", message, **options)


def send_sms(message: Any, **options: Any) -> AsyncResult[Any]:
    return enqueue("sms", message, **options)


def send_voice(message: Any, **options: Any) -> AsyncResult[Any]:
    return enqueue("voice", message, **options)
