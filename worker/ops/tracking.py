"""``delivery-worker status ID``: the tracking half (per-recipient state and history)."""

from __future__ import annotations

from worker.config import get_settings
from worker.redis_client import shared_redis
from worker.stores.keys import keys_for
from worker.stores.tracking import RedisTrackingStore
from worker.tracking.status import render

__all__ = ["show_tracking"]


def show_tracking(delivery_id: str, *, utc: bool = False) -> None:
    settings = get_settings()
    store = RedisTrackingStore(shared_redis(settings), keys=keys_for(settings))
    found = store.status(delivery_id)
    if found is None:
        print("tracking: nothing recorded (not sent yet, or expired)")
        return
    print("tracking:")
    print(render(found.as_dict(), utc=utc))
