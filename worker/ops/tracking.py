"""``delivery-worker status ID``: the tracking half (per-recipient state and history)."""

from __future__ import annotations

import redis

from worker.config import get_settings
from worker.stores.tracking import RedisTrackingStore
from worker.tracking.status import render

__all__ = ["show_tracking"]


def show_tracking(delivery_id: str) -> None:
    store = RedisTrackingStore(redis.Redis.from_url(get_settings().shared_redis_url))
    found = store.status(delivery_id)
    if found is None:
        print("tracking: nothing recorded (not sent yet, or expired)")
        return
    print("tracking:")
    print(render(found.as_dict()))
