"""The worker's front door: every task message is checked before anything else touches it.

Celery's consumer hands each message to a task *strategy*, which builds a ``Request`` (our
:class:`~worker.app.RedactedRequest` derives Flower's redacted ``argsrepr`` there) and passes it
to the prefork pool, which pickles it. All of that runs in the worker's **main** process and
recurses over the message: a dict nested a few hundred levels deep made pickling raise
``RecursionError`` there, the worker died ("Unrecoverable error") and the message, restored to
the queue, killed the next worker too. The pool's dead-letter count (``runs_unfinished``,
``worker.delivery.pipeline``) never saw it, since no task ever started.

:class:`GuardedConsumer` (``worker_consumer``) wraps the consumer's message handler. Before
the strategy runs, :class:`MessageGuard` checks, without recursion and within fixed work:

* headers: an object with a readable task id and name, within the limits;
* the body: its size, its content type (JSON only), that it decodes (JSON decoding itself
  recurses; a body nested 100,000 levels raises ``RecursionError`` in kombu, caught here), its
  depth, item count and string lengths (:mod:`worker.limits`), the protocol-2 shape
  ``[args, kwargs, embed]`` and that the arguments fit the task's signature;
* the task name: registered in this worker.

A message that fails a check never reaches the pool. With a readable task id it ends
``failed`` with ``error.kind = "invalid_message"`` and a reason naming the check: in the ledger
(final), in the result backend (state ``SUCCESS`` holding that failed result dict, the same
answer as every other ``invalid_message`` failure, so ``AsyncResult(id).get()`` returns it at
once), and as a redacted dead letter (``delivery-worker dead``: task, reason and an outline of
keys and types, never content; not replayable). The broker message is acknowledged. Without a
readable id there is nothing to record it under: it is logged (``message.rejected``, no
content), counted in the ``dw:rejected`` hash and acknowledged.

Fleet containment: a message that passes the checks and still kills the main process (some other
bug) must not take the fleet down one worker at a time. Before the strategy runs, the guard adds
its process as a holder of ``dw:main:<id>``; the mark is cleared once a pool process has
accepted the task (:func:`task_accepted`, from ``RedactedRequest.on_accepted``: the prefork pool
pickles the job in the event loop *after* the strategy returns, which is where the deep message
used to fail), right away for a task scheduled for later (ETA, countdown), and for every task
still waiting for a pool process when the worker stops cleanly. A send task carries this
process's token in a header (:data:`GUARD_HEADER`): its run clears the mark in its first
shared-state step (``worker.stores.hotpath``, no command of its own), and the main process
clears it if the task fails or loses its pool process first (:func:`task_failed`). A crash
("Unrecoverable error", a signal) leaves the marks. Each main process also beats a liveness key
every second (``dw:guard:alive:<token>``, gone 3 s after its last beat). A holder that is alive
is a concurrent copy of the task (a redelivery, a sweep), not a crash: its mark clears as soon
as a pool process takes that copy, and the guard waits for it. A holder without a liveness key
died with the task in hand: on the next delivery, after ``max_main_process_crashes`` such
deaths, the message is set aside as a dead letter (state ``dead``, replayable with
``delivery-worker dead replay``) without going near the pool.
"""

from worker.guard.checks import Refusal
from worker.guard.consumer import GuardedConsumer, task_accepted, task_failed
from worker.guard.refusals import (
    ALIVE_PREFIX,
    GUARD_HEADER,
    MAIN_MARK_PREFIX,
    REJECTED_KEY,
    MessageGuard,
)

__all__ = [
    "ALIVE_PREFIX",
    "GUARD_HEADER",
    "MAIN_MARK_PREFIX",
    "REJECTED_KEY",
    "GuardedConsumer",
    "MessageGuard",
    "Refusal",
    "task_accepted",
    "task_failed",
]
