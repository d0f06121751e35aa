"""The worker side of a campaign (``worker.campaign``): a chunk task's run and the by-name
``tasks.send_many``. The chunk goes through the batch flow (:func:`~worker.delivery.batch.
process_batch`), and each outcome is answered under its delivery id."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import structlog
from celery import states

from worker.campaign import ID_NAMESPACE, MAX_PER_TASK, new_record
from worker.delivery import writer
from worker.delivery.batch import BatchEntry, for_each, process_batch
from worker.delivery.results import Outcome, Retry
from worker.models import InvalidMessage
from worker.providers import parse_message
from worker.runtime import Runtime
from worker.stores.ledger.base import NewRecord
from worker.tasknames import TASK_NAMES

__all__ = ["PARKED", "SCHEDULED", "chunk_items", "run_chunk", "run_send_many"]

log = structlog.get_logger(__name__)

PARKED = "PARKED"
"""Celery state of a parked delivery (``tasks.PARKED``)."""
SCHEDULED = "SCHEDULED"
"""Celery state of a delivery held until its ``send_at`` (``tasks.SCHEDULED``)."""


def run_chunk(
    app: Any, channel: str, items: Sequence[tuple[str, Any]], rt: Runtime
) -> dict[str, int]:
    """Deliver a chunk of (delivery id, message); store each outcome under its delivery id.
    Answers counts by ending (``done``, ``parked``, ``scheduled``, ``retry``)."""
    task_name = TASK_NAMES[channel]
    entries = [
        BatchEntry(channel, message, delivery_id, task_name) for delivery_id, message in items
    ]
    outcomes = process_batch(entries, rt)
    task = app.tasks[task_name]

    def answer(pair: tuple[BatchEntry, Outcome]) -> str:
        entry, outcome = pair
        if isinstance(outcome, Retry):
            # Tries again alone, as a single send under its delivery id (as Task.retry would).
            task.apply_async(
                (entry.raw,), task_id=entry.delivery_id, countdown=outcome.delay_s, retries=1
            )
            return "retry"
        result = outcome.result.model_dump(mode="json", exclude_none=True)
        if outcome.result.status == "parked":
            app.backend.store_result(entry.delivery_id, result, PARKED)
            return "parked"
        if outcome.result.status == "scheduled":
            app.backend.store_result(entry.delivery_id, result, SCHEDULED)
            return "scheduled"
        app.backend.store_result(entry.delivery_id, result, states.SUCCESS)
        return "done"

    endings = for_each(rt, answer, list(zip(entries, outcomes, strict=True)))
    counts = {e: endings.count(e) for e in ("done", "parked", "scheduled", "retry")}
    log.info("campaign.chunk_done", channel=channel, items=len(items), **counts)
    return counts


def chunk_items(payload: Any) -> tuple[str, list[tuple[str, Any]]] | str:
    """A ``tasks.send_chunk`` payload's channel and items, or why it is refused."""
    if not isinstance(payload, dict):
        return "the chunk is not an object"
    channel = payload.get("channel")
    if channel not in TASK_NAMES:
        return "channel: not one of email, sms, voice"
    raw = payload.get("items")
    if not isinstance(raw, list) or len(raw) > MAX_PER_TASK:
        return f"items: not a list of at most {MAX_PER_TASK}"
    items: list[tuple[str, Any]] = []
    for item in raw:
        if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
            items.append((item["id"], item.get("message")))
    if len(items) != len(raw):
        return "items: each needs an id (string) and a message"
    return str(channel), items


def run_send_many(app: Any, task_id: str, payload: Any, rt: Runtime) -> dict[str, Any]:
    """``tasks.send_many``: create the records (ids derived from ``task_id`` and the index),
    then run them as a chunk. Answers the ids in input order and the errors by index."""
    if not isinstance(payload, dict):
        return {"refused": "the payload is not an object {channel, messages}"}
    channel = payload.get("channel")
    messages = payload.get("messages")
    if channel not in TASK_NAMES:
        return {"refused": "channel: not one of email, sms, voice"}
    if not isinstance(messages, list) or len(messages) > MAX_PER_TASK:
        return {"refused": f"messages: not a list of at most {MAX_PER_TASK}"}
    channel = str(channel)
    limits = rt.settings.message_limits()
    ids: list[str] = []
    errors: dict[str, str] = {}
    records: list[NewRecord] = []
    for index, raw in enumerate(messages):
        delivery_id = str(uuid.uuid5(ID_NAMESPACE, f"{task_id}:{index}"))
        ids.append(delivery_id)
        try:
            model = parse_message(channel, raw, limits=limits)
        except InvalidMessage as exc:
            errors[str(index)] = str(exc)
            # Recorded and ended as failed under its own id by the chunk run (invalid_message).
            records.append(
                NewRecord(delivery_id, channel, "auto", extra={"task_name": TASK_NAMES[channel]})
            )
            continue
        body = model.model_dump(mode="json", by_alias=True, exclude_none=True)
        records.append(new_record(channel, delivery_id, model, body, ""))
    answers = writer.record_campaign(rt, records)
    items: list[tuple[str, Any]] = []
    for index, (raw, (existing, _created)) in enumerate(zip(messages, answers, strict=True)):
        if existing != ids[index]:
            ids[index] = existing  # an earlier delivery with this idempotency key: the answer
            continue
        items.append((existing, raw))
    counts = run_chunk(app, channel, items, rt) if items else {}
    return {"delivery_ids": ids, "errors": errors, **counts}
