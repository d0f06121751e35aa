"""Scheduled sends (``send_at``), quiet hours and cancellation.

* :mod:`.rules`: what a valid ``send_at`` is (tolerance, horizon), checked at enqueue and when a
  worker first sees the message.
* :mod:`.quiet`: per-channel quiet hours (``DELIVERY_QUIET_HOURS``), applied as a ``send_at``.
* :mod:`.enqueue`: the producer puts a message that no provider will schedule straight onto
  the ledger's schedule (no task runs until it is due).
* :mod:`worker.delivery.pipeline`: the pipeline step that holds a message until its time, in
  the ledger's durable schedule or at its provider (native scheduling), and answers a due run.
* :mod:`.mover`: the loop in each worker's main process that publishes due messages.
* :mod:`.cancel`: ``cancel(delivery_id)`` and its answers; ``delivery-worker cancel``
  (``worker.ops.cancel``).
"""

from worker.scheduling.rules import SEND_AT_HORIZON_S, SEND_AT_TOLERANCE_S, check_send_at

__all__ = ["SEND_AT_HORIZON_S", "SEND_AT_TOLERANCE_S", "check_send_at"]
