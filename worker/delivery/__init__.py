"""The delivery pipeline: one attempt at one message, and what should happen next.

Tasks call :func:`process` and map its answer to Celery: :class:`Done` returns the result,
:class:`Retry` reschedules the same task (same id, same message) after ``delay_s``.

One attempt, step by step (design semantics 2-6), one module each::

    record      create/load the ledger record under the delivery's lock, count unfinished
                runs (bury a poison message); already final? → answer from the ledger
    deadline    deadline passed → expired; before ``not_before`` → wait again
    routing     choose a provider: skip paused ones (park if none is left), skip open breakers
    reconcile   an earlier send's outcome unknown? → ask the provider before resending
    send        the driver builds the request, passes the gate, transmits and classifies
    gate        ledger ``sending``, then the global limiter slot (wait briefly, or reschedule)
    settle      an error → its policy (retry, reconcile, throttle, defer, pause, fail), read
                from the error class itself (``worker.errors``), plus breaker feedback
    outcomes    the ends: sent, failed, expired, parked, waiting (ledger, result, metric)

``pipeline`` runs the steps in this order; ``context`` holds the delivery they share and
``results`` the values they answer with.

Budgets are kept apart: waiting for a limiter, a breaker or a provider's ``Retry-After``
increments ``throttled`` and never the error ``attempts``; only errors count against
``max_retries``. Every message has a deadline after which it ends as ``expired``.
"""

from __future__ import annotations

from worker.delivery.pipeline import process
from worker.delivery.results import Done, Retry, backoff_s, mask_ids

__all__ = ["Done", "Retry", "backoff_s", "mask_ids", "process"]
