"""Campaigns: many messages, one Celery message per chunk, every message still its own delivery.

Producer side (:func:`plan_chunks`, used by ``worker.producer.send_many``): the messages are
validated first, then cut into chunks of the provider's batch size (``Driver.batch_limit``,
SMS Partner 500; :data:`DEFAULT_CHUNK` for providers that send one request per message). Per
chunk, the ledger records are created in one script call (``Ledger.create_many``) and **one**
Celery message is published: ``tasks.send_chunk`` with ``{"channel", "items": [{"id",
"message"}]}``.

Worker side (``worker.delivery.campaign.run_chunk``): the chunk runs through the batch flow
(:func:`worker.delivery.batch.process_batch`: the hot path's begin, ``sending`` and finish
scripts, one call per chunk each, and one provider request per ``batch_limit`` recipients).
Each message keeps its own delivery id, record, lock, idempotency, tracking and cancel; its
outcome is written to the ledger by the outcome writer and stored in the Celery result backend
under its delivery id (``AsyncResult(delivery_id)``). An item that must try again later is
republished as a single send under its delivery id (as ``worker.batching.runner`` does). The
chunk task is ``acks_late``: a worker killed mid-chunk leaves the message unacknowledged, it
is delivered again, and the ledger decides per item (a final item is answered from its record,
one ``sending`` under a batch tag is reconciled by that tag before anything is sent again).

By name (``worker.delivery.campaign.run_send_many``, ``tasks.send_many``): producers without
this package publish
``{"channel", "messages"}`` (at most :data:`MAX_PER_TASK`); the worker creates the records
(delivery ids derived from the task id and the index, so a redelivered task finds the same
records) and runs the chunk as above. Each message is checked against the same limits as a
single send; an invalid one ends ``failed`` (``invalid_message``) under its own id.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from worker.models import InvalidMessage, Message
from worker.providers import DRIVERS, channel_providers
from worker.stores.ledger.base import NewRecord
from worker.tasknames import TASK_NAMES

__all__ = [
    "CHUNK_FIELD",
    "DEFAULT_CHUNK",
    "MAX_PER_TASK",
    "SendManyResult",
    "Validated",
    "chunk_repr",
    "chunk_size",
    "fresh_ids",
    "new_record",
    "plan_chunks",
    "validated_record",
]

MAX_PER_TASK = 500
"""Most messages in one ``tasks.send_chunk`` or ``tasks.send_many`` Celery message (the largest
provider batch, SMS Partner's 500)."""
DEFAULT_CHUNK = 100
"""Chunk size for providers without a batch endpoint (their messages still go one request
each, on the batch threads)."""
ID_NAMESPACE = uuid.UUID("6b1f1f8e-4a55-4c8e-9d0e-2b1f25c0a2a5")
"""``tasks.send_many`` derives each delivery id from its task id and the index in it."""


@dataclass(frozen=True)
class SendManyResult:
    """``send_many(..., on_invalid="skip")``: the delivery id of each message in input order
    (``None`` for an invalid one, nothing enqueued for it), and the errors by input index."""

    ids: list[str | None]
    errors: dict[int, InvalidMessage] = field(default_factory=dict)

    @property
    def enqueued(self) -> list[str]:
        """The ids of the messages enqueued, in input order."""
        return [i for i in self.ids if i is not None]


def chunk_size(channel: str, provider: str | None) -> int:
    """The provider's batch size (the channel's first batching provider when routed)."""
    names = [provider] if provider else list(channel_providers(channel))
    limits = [DRIVERS[n].batch_limit for n in names if n in DRIVERS and DRIVERS[n].batch_limit]
    return min(max(limits), MAX_PER_TASK) if limits else DEFAULT_CHUNK


CHUNK_FIELD = "chunk"
"""Ledger field of a campaign message: its chunk size. Held on the schedule (``send_at``,
quiet hours, a legal window), such messages are published again together, as chunk tasks
(``worker.scheduling.mover``)."""


@dataclass(frozen=True, slots=True)
class Validated:
    """What ``send_many`` keeps of a valid message until its chunk is enqueued: its input index,
    what the record and the chunking need (provider, lane, due time), and the normalised
    message as JSON (the model's ``model_dump_json(by_alias=True, exclude_none=True)``, built
    once; the model itself is not kept, so a campaign's memory is a few hundred bytes per
    message)."""

    index: int
    provider: str | None
    idempotency_key: str | None
    body: str
    priority: str = "normal"
    """The lane it waits in (``high`` | ``normal`` | ``bulk``)."""
    tenant: str = "default"
    due: float | None = None
    """When it is held until (``worker.scheduling.enqueue.campaign_due``); ``None``: at once."""

    @classmethod
    def of(cls, index: int, model: Message, *, due: float | None = None) -> Validated:
        body = model.model_dump_json(by_alias=True, exclude_none=True)
        return cls(
            index,
            model.provider,
            model.idempotency_key,
            body,
            priority=model.lane,
            tenant=model.tenant_key,
            due=due,
        )


def plan_chunks(channel: str, valid: Iterable[Validated]) -> Iterator[list[Validated]]:
    """Consecutive chunks in input order, cut where the provider (and so the size) changes,
    or the lane (priority, tenant) a chunk waits in, or the due time: every message of a chunk
    is held until the same time and leaves with the others (a chunk's promise is never split
    by its schedule)."""
    chunk: list[Validated] = []
    size, cut = 0, None
    for item in valid:
        key = (item.provider, item.priority, item.tenant, item.due)
        if chunk and (key != cut or len(chunk) >= size):
            yield chunk
            chunk = []
        if not chunk:
            cut = key
            size = chunk_size(channel, item.provider)
        chunk.append(item)
    if chunk:
        yield chunk


def fresh_ids(n: int) -> list[str]:
    """``n`` random (version 4) UUIDs as strings, from one read of the OS's random source."""
    raw = os.urandom(16 * n)
    return [str(uuid.UUID(bytes=raw[16 * i : 16 * i + 16], version=4)) for i in range(n)]


def validated_record(
    channel: str, delivery_id: str, item: Validated, queue: str, *, chunk: int = 0
) -> NewRecord:
    """:func:`new_record` of a :class:`Validated` message (its JSON as built at validation)."""
    return _record(
        channel, delivery_id, item.provider, item.idempotency_key, item.body, queue, chunk
    )


def new_record(
    channel: str,
    delivery_id: str,
    model: Message,
    body: dict[str, Any],
    queue: str,
    *,
    chunk: int = 0,
) -> NewRecord:
    """The record a single send's enqueue creates (the sweep republishes it as a single send:
    task name, message, queue); ``chunk``: a campaign message's chunk size, so the schedule
    mover publishes it with the others due at its time (:data:`CHUNK_FIELD`)."""
    message = json.dumps(body)
    return _record(
        channel, delivery_id, model.provider, model.idempotency_key, message, queue, chunk
    )


def _record(
    channel: str,
    delivery_id: str,
    provider: str | None,
    idempotency_key: str | None,
    message: str,
    queue: str,
    chunk: int,
) -> NewRecord:
    extra = {"task_name": TASK_NAMES[channel], "message": message, "queue": queue}
    if chunk > 0:
        extra[CHUNK_FIELD] = str(chunk)
    return NewRecord(
        delivery_id,
        channel=channel,
        provider=provider or "auto",
        idempotency_key=idempotency_key,
        extra=extra,
    )


def chunk_repr(channel: str, items: int) -> str:
    """Flower's ``argsrepr`` of a chunk task: the channel and a count, never content."""
    return repr(({"channel": channel, "messages": items},))
