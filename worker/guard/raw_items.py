"""Raw queue items that are not kombu envelopes: set aside, counted, logged, never raised.

Anything that can write to the broker's Redis can ``LPUSH`` onto a queue list. kombu's Redis
channel decodes each item it pops (``BRPOP`` in ``_brpop_read``, ``RPOP`` in ``_get``) with a
bare ``json.loads`` and builds a message from it, assuming kombu's own envelope: an item that is
not JSON raises ``JSONDecodeError`` there, and a JSON value of another shape raises ``KeyError``,
``TypeError`` or ``AttributeError`` a step later, all before Celery's consumer or the guard
(:mod:`worker.guard`) see a message. Celery treats those as unrecoverable and the worker
process exits; the item was already popped, so each such push took down one worker.

Our channels (:mod:`worker.app`) decode with :func:`read_envelope` instead. An item it refuses
is *set aside* (:func:`set_aside`): its start (at most :data:`MAX_ITEM_BYTES`) goes into the
capped list :data:`REJECTED_ITEMS_KEY` with the queue, the reason and the time; it is counted
(``delivery_queue_items_rejected_total{reason}``) and logged once (``queue.item_rejected``,
queue and reason, never the content). The channel then reads the next item.

What kombu needs of an item (kombu 5.7, ``transport/virtual/base.py`` ``Message.__init__``,
``transport/redis.py`` ``QoS.append``): a JSON object; ``properties`` an object with a string
``delivery_tag`` and ``delivery_info`` an object with ``exchange`` and ``routing_key``;
``headers`` an object; ``body`` a string, readable under ``properties.body_encoding`` (none, or
a codec the channel knows: ``base64``); ``content-type`` and ``content-encoding`` strings when
present. Whether the *task message* inside is valid is the guard's business, not this module's.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import redis
import structlog

from worker.metrics import record as metrics
from worker.stores.keys import Keys

__all__ = [
    "MAX_ITEMS",
    "MAX_ITEM_BYTES",
    "REASONS",
    "REJECTED_ITEMS_KEY",
    "REJECTED_ITEMS_TTL_S",
    "ItemRefusal",
    "read_envelope",
    "set_aside",
]

log = structlog.get_logger("worker.guard")

REJECTED_ITEMS_KEY = Keys().rejected_items
"""The default namespace's list; :func:`set_aside` takes the worker's ``keys``."""
"""List of raw queue items set aside (newest first), each a JSON record: ``queue``,
``reason``, ``detail``, ``at`` (Unix seconds), ``size`` (bytes), ``item`` (its start, as text)."""
MAX_ITEMS = 1000
"""The list keeps the newest this many records."""
MAX_ITEM_BYTES = 64 * 1024
"""What is kept of one item."""
REJECTED_ITEMS_TTL_S = 7 * 24 * 3600
"""The list expires this long after its last record."""

REASONS = ("not_json", "not_an_object", "not_an_envelope", "bad_body_encoding")
"""The ``reason`` of a set-aside item (a metric label: a closed set)."""

# kombu's base64 codec writes standard base64 without line breaks; an item in this form
# decodes, and Python's lenient decoder raises on anything else that lacks padding.
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


@dataclass(frozen=True)
class ItemRefusal:
    """Why a raw item is not a kombu envelope."""

    reason: str
    """One of :data:`REASONS`."""
    detail: str
    """Which part is missing or wrong (names keys and types, never content)."""


def read_envelope(item: bytes | str, codecs: Collection[str]) -> dict[str, Any] | ItemRefusal:
    """The decoded envelope, or why ``item`` is not one. ``codecs``: the body encodings the
    channel knows (``Channel.codecs``)."""
    try:
        text = item.decode("utf-8") if isinstance(item, bytes) else item
        payload = json.loads(text)
    except UnicodeDecodeError:
        return ItemRefusal("not_json", "the item is not UTF-8")
    except RecursionError:
        return ItemRefusal("not_json", "the item is nested too deeply to decode")
    except ValueError as exc:
        return ItemRefusal("not_json", f"the item is not JSON ({type(exc).__name__})")
    if not isinstance(payload, dict):
        return ItemRefusal("not_an_object", f"the item is a JSON {_json_type(payload)}")
    problem = _envelope_problem(payload)
    if problem is not None:
        return ItemRefusal("not_an_envelope", problem)
    encoding = payload["properties"].get("body_encoding")
    if encoding is not None:
        if not isinstance(encoding, str) or encoding not in codecs:
            return ItemRefusal("bad_body_encoding", "properties.body_encoding is unknown")
        if encoding == "base64":
            body: str = payload["body"]
            if len(body) % 4 or not _BASE64.fullmatch(body):
                return ItemRefusal("bad_body_encoding", "the body is not valid base64")
    return payload


def _envelope_problem(payload: dict[str, Any]) -> str | None:
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "properties is not an object"
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        return "properties.delivery_tag is not a string"
    info = properties.get("delivery_info")
    if not isinstance(info, dict):
        return "properties.delivery_info is not an object"
    for key in ("exchange", "routing_key"):
        if not isinstance(info.get(key), str):
            return f"properties.delivery_info.{key} is not a string"
    if not isinstance(payload.get("headers"), dict):
        return "headers is not an object"
    if not isinstance(payload.get("body"), str):
        return "body is not a string"
    for key in ("content-type", "content-encoding"):
        if payload.get(key) is not None and not isinstance(payload[key], str):
            return f"{key} is not a string"
    return None


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def set_aside(
    client: redis.Redis,
    queue: str,
    item: bytes | str,
    refusal: ItemRefusal,
    *,
    keys: Keys | None = None,
) -> None:
    """Keep the start of ``item`` in :data:`REJECTED_ITEMS_KEY`, count and log it.

    A Redis error loses the copy (the item was popped already) but not the count or the log
    event, and is not raised: the channel goes on reading."""
    raw = item.encode("utf-8", "surrogateescape") if isinstance(item, str) else item
    record = {
        "queue": queue,
        "reason": refusal.reason,
        "detail": refusal.detail,
        "at": round(time.time(), 3),
        "size": len(raw),
        "item": raw[:MAX_ITEM_BYTES].decode("utf-8", "backslashreplace"),
    }
    kept = True
    key = (keys or Keys()).rejected_items
    try:
        pipe = client.pipeline(transaction=True)
        pipe.lpush(key, json.dumps(record))
        pipe.ltrim(key, 0, MAX_ITEMS - 1)
        pipe.expire(key, REJECTED_ITEMS_TTL_S)
        pipe.execute()
    except redis.RedisError:
        kept = False
    metrics.queue_item_rejected(refusal.reason)
    log.error(
        "queue.item_rejected",
        queue=queue,
        reason=refusal.reason,
        detail=refusal.detail,
        size=len(raw),
        kept=kept,
    )
