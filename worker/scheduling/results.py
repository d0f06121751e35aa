"""Write a delivery's Celery task state from outside a task run (cancel, hold at enqueue)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import Celery

from worker.models import DeliveryResult

__all__ = ["store_task_state", "store_task_states"]


def store_task_state(app: Celery, delivery_id: str, result: DeliveryResult, state: str) -> None:
    """Store ``result`` as the task's ``state`` (``SUCCESS`` for a final one, ``SCHEDULED``).

    Written the way Celery's Redis backend writes a result (the key, its expiry, and a publish
    for clients waiting in ``get()``), not through its ``store_result``, which calls redis-py's
    deprecated ``setex`` (a warning that cannot be silenced thread-safely)."""
    store_task_states(app, [(delivery_id, result)], state)


def store_task_states(app: Celery, results: list[tuple[str, DeliveryResult]], state: str) -> None:
    """:func:`store_task_state` for several deliveries, in one round trip."""
    if not results:
        return
    backend: Any = app.backend
    expires = backend.expires
    pipe = backend.client.pipeline()
    for delivery_id, result in results:
        key, value = _meta(backend, delivery_id, result, state)
        pipe.set(key, value, ex=int(expires) if expires else None)
        pipe.publish(key, value)
    pipe.execute()


def _meta(backend: Any, delivery_id: str, result: DeliveryResult, state: str) -> tuple[Any, Any]:
    meta: dict[str, Any] = {
        "status": state,
        "result": result.model_dump(mode="json", exclude_none=True),
        "traceback": None,
        "children": [],
        "date_done": datetime.now(UTC).isoformat(),
        "task_id": delivery_id,
    }
    return backend.get_key_for_task(delivery_id), backend.encode(meta)
