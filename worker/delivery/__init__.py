"""The delivery pipeline: one attempt at one message, and what should happen next.

Tasks call :func:`process` and map its answer to Celery: :class:`Done` returns the result,
:class:`Retry` reschedules the same task (same id, same message) after ``delay_s``.

One attempt, step by step (design semantics 2-6), one module each::

    record      create/load the ledger record under the delivery's lock, count unfinished
                runs (bury a poison message); already final? → answer from the ledger
    deadline    deadline passed → expired; before ``not_before`` → wait again
    routing     choose a provider: skip paused ones (park if none is left), skip open breakers
    reconcile   an earlier send's outcome unknown? → ask the provider before resending
    send        the driver builds the request; the gate; the driver transmits and classifies
    gate        ledger ``sending`` for the chunk, then one global limiter slot (wait briefly,
                or reschedule)
    settle      an error → its policy (retry, reconcile, throttle, defer, pause, fail), read
                from the error class itself (``worker.errors``), plus breaker feedback
    writer      the only writer of shared state: the run's first and last scripts, the
                ends (sent, failed, expired, parked, waiting), counters and marks

A run works on a chunk of deliveries: a single send is a chunk of one, and
``worker.delivery.batch`` runs chunks of many through the same steps, gate and writer.
``pipeline`` runs the steps in this order; ``context`` holds the delivery they share and
``results`` the values they answer with.

Budgets are kept apart: waiting for a limiter, a breaker or a provider's ``Retry-After``
increments ``throttled`` and never the error ``attempts``; only errors count against
``max_retries``. Every message has a deadline after which it ends as ``expired``.
"""

from __future__ import annotations

from worker.delivery.pipeline import process
from worker.delivery.results import Done, Retry, backoff_s
from worker.delivery.writer import mask_ids

__all__ = ["Done", "Retry", "backoff_s", "mask_ids", "process"]
