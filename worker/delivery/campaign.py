"""The worker side of a campaign (``worker.campaign``): a chunk task's run and the by-name
``tasks.send_many``. The chunk goes through the batch flow (:func:`~worker.delivery.batch.
process_batch`), and each outcome is answered under its delivery id."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import structlog
from celery import states

from worker.campaign import ID_NAMESPACE, MAX_PER_TASK, chunk_size, new_record
from worker.delivery import writer
from worker.delivery.batch import BatchEntry, process_batch
from worker.delivery.results import Retry
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

    stored: list[tuple[str, dict[str, Any], str]] = []
    endings: list[str] = []
    for entry, outcome in zip(entries, outcomes, strict=True):
        if isinstance(outcome, Retry):
            # Tries again alone, as a single send under its delivery id (as Task.retry would).
            task.apply_async(
                (entry.raw,), task_id=entry.delivery_id, countdown=outcome.delay_s, retries=1
            )
            endings.append("retry")
            continue
        result = outcome.result.model_dump(mode="json", exclude_none=True)
        status = outcome.result.status
        state = {"parked": PARKED, "scheduled": SCHEDULED}.get(status, states.SUCCESS)
        stored.append((entry.delivery_id, result, state))
        endings.append(status if status in ("parked", "scheduled") else "done")
    store_results(app, stored)
    counts = {e: endings.count(e) for e in ("done", "parked", "scheduled", "retry")}
    log.info("campaign.chunk_done", channel=channel, items=len(items), **counts)
    return counts


STORE_RESULTS_LUA = """
-- Celery's result backend write (RedisBackend._store_result) for each task of a chunk, in one
-- call: SET with the expiry and PUBLISH (what a waiting AsyncResult.get hears); a state other
-- than SUCCESS first reads the stored one and leaves a SUCCESS in place (Celery's guard
-- against a lost task overwriting a final result; a SUCCESS over a SUCCESS is the same
-- ledger-decided result).
-- The PUBLISH goes only to a key someone listens on, asked once for the chunk (PUBSUB NUMSUB):
-- AsyncResult.get subscribes before it reads the key, and this call is atomic, so a get that
-- subscribed before it hears the PUBLISH and one that subscribes after it reads the SET.
-- KEYS: each task's meta key; ARGV[1] expiry (s, 0 = none), then per task: state, meta JSON
local ttl = tonumber(ARGV[1])
local heard, listening = {}, redis.call('PUBSUB', 'NUMSUB', unpack(KEYS))
for i = 1, #listening, 2 do heard[listening[i]] = tonumber(listening[i + 1]) end
for i = 1, #KEYS do
  local state, meta = ARGV[2 * i], ARGV[2 * i + 1]
  local keep = false
  if state ~= 'SUCCESS' then
    local current = redis.call('GET', KEYS[i])
    if current then
      local ok, stored = pcall(cjson.decode, current)
      keep = ok and type(stored) == 'table' and stored.status == 'SUCCESS'
    end
  end
  if not keep then
    if ttl > 0 then redis.call('SET', KEYS[i], meta, 'EX', ttl)
    else redis.call('SET', KEYS[i], meta) end
    if (heard[KEYS[i]] or 0) > 0 then redis.call('PUBLISH', KEYS[i], meta) end
  end
end
return #KEYS
"""

_store_scripts: dict[int, Any] = {}


def store_results(app: Any, results: Sequence[tuple[str, dict[str, Any], str]]) -> None:
    """Each (task id, result, state) as ``app.backend.store_result`` stores it, in one script
    call on the result backend (a Redis backend; others store them one by one)."""
    backend = app.backend
    client = getattr(backend, "client", None)
    if not results:
        return
    if client is None or not hasattr(backend, "get_key_for_task"):
        for task_id, result, state in results:
            backend.store_result(task_id, result, state)
        return
    script = _store_scripts.get(id(client))
    if script is None:
        script = _store_scripts[id(client)] = client.register_script(STORE_RESULTS_LUA)
    keys: list[Any] = []
    args: list[Any] = [int(backend.expires or 0)]
    for task_id, result, state in results:
        # The meta exactly as Celery builds it (status, result, date_done, task_id, ...).
        meta = backend._get_result_meta(result=result, state=state, traceback=None, request=None)
        meta["task_id"] = task_id
        keys.append(backend.get_key_for_task(task_id))
        args += [state, backend.encode(meta)]
    script(keys=keys, args=args)


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
        size = chunk_size(channel, model.provider)
        records.append(new_record(channel, delivery_id, model, body, "", chunk=size))
    answers = writer.record_campaign(rt, records)
    items: list[tuple[str, Any]] = []
    for index, (raw, (existing, _created)) in enumerate(zip(messages, answers, strict=True)):
        if existing != ids[index]:
            ids[index] = existing  # an earlier delivery with this idempotency key: the answer
            continue
        items.append((existing, raw))
    counts = run_chunk(app, channel, items, rt) if items else {}
    return {"delivery_ids": ids, "errors": errors, **counts}
