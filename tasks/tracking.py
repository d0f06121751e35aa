"""The tracking tasks: events from the webhook receiver, callback hints, the polling round.

``delivery.track_events`` and ``delivery.track_hint`` are the receiver's contract
(``worker.tasknames``); ``tasks.track_poll`` runs on beat. Each returns a small summary dict
(never the events) and never raises for a bad message (``worker.tracking.intake``).
"""

from __future__ import annotations

from typing import Any

import structlog

from worker.app import RedactedRequest, app
from worker.runtime import get_runtime
from worker.tasknames import TRACK_EVENTS_TASK, TRACK_HINT_TASK
from worker.tracking.callbacks import HINT_PROVIDERS, valid_delivery_id
from worker.tracking.intake import take_events, take_hint
from worker.tracking.poller import poll_round

__all__ = ["track_events", "track_hint", "track_poll"]


@app.task(name=TRACK_EVENTS_TASK, Request=RedactedRequest)
def track_events(events: Any) -> dict[str, Any]:
    _fresh_log_context()
    return take_events(get_runtime(), events)


@app.task(name=TRACK_HINT_TASK, Request=RedactedRequest)
def track_hint(provider: Any, delivery_id: Any) -> dict[str, Any]:
    _fresh_log_context()
    if (
        isinstance(provider, str)
        and provider in HINT_PROVIDERS
        and isinstance(delivery_id, str)
        and valid_delivery_id(delivery_id)
    ):
        structlog.contextvars.bind_contextvars(provider=provider, delivery_id=delivery_id)
    return take_hint(get_runtime(), provider, delivery_id)


# No task events: beat runs a round every few seconds (every second in the demo), and its
# received/started/succeeded events would bury the sends in Flower. The poller reports its
# work in metrics (tracking_lookups, ...) and logs instead.
@app.task(name="tasks.track_poll", Request=RedactedRequest, send_events=False)
def track_poll() -> dict[str, Any]:
    """Periodic (beat): ask providers about sent deliveries that are not final yet."""
    _fresh_log_context()
    return poll_round(get_runtime()).as_dict()


def _fresh_log_context() -> None:
    """A pool process runs send tasks too, which bind ``delivery_id``, ``channel``,
    ``attempt`` and ``provider`` (``worker.delivery.pipeline``): without this, a tracking task's
    log lines would carry the last send's delivery as if they were about it."""
    structlog.contextvars.clear_contextvars()
