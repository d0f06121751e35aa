"""How often the poller asks a provider about a sent delivery, and for how long.

The defaults are declared here, once; ``worker.config`` reads them (``DELIVERY_TRACKING_*``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEFAULT_POLL", "EVENTS_QUEUE", "TASK_NAME", "PollPolicy"]

TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]{0,199}")
"""What ``DELIVERY_EVENTS_TASK`` may be: a Celery task name (``myapp.tasks.on_delivery_event``)."""
EVENTS_QUEUE = "delivery-events"
"""The default queue of the application's events task: not one a delivery worker consumes
(``DELIVERY_QUEUES``), so only the application's own workers take it."""


@dataclass(frozen=True)
class PollPolicy:
    first_s: float = 60.0
    """The first lookup, this long after the send: most providers report within seconds
    (SMS Partner and Mail Partner: "usually a few seconds", docs/providers/smspartner.md §1.4,
    docs/providers/mailpartner.md §2.2)."""
    max_backoff_s: float = 1800.0
    """Each later lookup waits twice as long as the one before, up to this."""
    max_s: float = 48 * 3600.0
    """Polling stops this long after the send: a report can take up to 48 h
    (docs/providers/smspartner.md §1.4, docs/providers/mailpartner.md §2.2)."""
    interval_s: float = 15.0
    """How often beat runs a polling round (``tasks.track_poll``)."""
    batch: int = 2000
    """Deliveries claimed per round at most; the rest wait for the next round."""
    lease_s: float = 300.0
    """A claimed delivery is not claimed again for this long (a round that dies mid-way)."""

    def next_after(self, polls: int) -> float:
        """The wait after the ``polls``-th lookup (1-based): first_s doubled, capped."""
        return float(min(self.first_s * 2 ** min(max(polls, 0), 30), self.max_backoff_s))


DEFAULT_POLL = PollPolicy()
