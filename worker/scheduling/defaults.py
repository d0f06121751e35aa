"""The schedule mover's timing defaults (read by ``worker.config``; no imports here)."""

TICK_S = 0.1
"""The longest the mover sleeps between passes (``DELIVERY_SCHEDULE_TICK_S``)."""
LEASE_S = 10.0
"""How long a claimed entry waits for its run before a mover publishes it again
(``DELIVERY_SCHEDULE_LEASE_S``)."""
