"""Batching: ``send_sms`` tasks coalesced into one provider request (``DELIVERY_BATCHING``).

Why a small batcher of our own rather than ``celery-batches`` (0.11, one maintainer, described
by its own package as experimental), which we evaluated first. It has the right shape (buffer
the messages in the consumer, run the buffer as one pool job), and we keep that shape, but:

* **acks_late and SIGKILL**: it acknowledges late messages in the pool job's success callback
  only and passes no error callback, so when the pool process dies (SIGKILL, OOM) the batch's
  messages are neither acknowledged nor rejected: ``task_reject_on_worker_lost`` is not
  honoured and they wait, unacknowledged, for the worker to restart or the visibility timeout
  (an hour here). Its own maintainer answers the shutdown question with "it depends on your
  timeouts" (clokep/celery-batches#93). Here the error callback hands each message to Celery's
  own ``Request.on_failure``: requeued at once, or acknowledged if its result was stored.
* **prefetch**: buffered messages are unacknowledged, so with our prefetch of 1 per process a
  batch never grows past the concurrency; it asks for ``worker_prefetch_multiplier=0``
  (unlimited) for the whole worker. Here the buffer raises the consumer's prefetch by one per
  buffered message (as Celery does for ETA tasks), bounded, and gives it back on the ack.
* **per-message results and retries**: its tasks get ``SimpleRequest`` objects with no retry,
  no per-message result, no ``on_accepted`` (our guard clears its main-process marks there,
  ``worker.guard``); everything per message would be re-done by hand anyway.
* **the strategy replaces Celery's**: ETA/countdown messages, revocation, events and
  ``task_reserved`` are re-implemented there. Here Celery's default strategy runs unchanged
  and only its hand-off to the pool (``consumer.on_task_request``) is redirected to the buffer;
  retries (countdown/ETA messages) take the single path.

How it works: :mod:`worker.batching.strategy` (main process) buffers ``tasks.send_sms``
requests and flushes them as one pool job after ``DELIVERY_BATCH_LINGER_S`` from the first, or
as soon as ``DELIVERY_BATCH_MAX_ITEMS`` are buffered; :mod:`worker.batching.runner` (pool
process) runs :func:`worker.delivery.batch.process_batch` and answers each task; the provider
module declares whether and how it batches (``Driver.batch_limit``, ``batch_key``,
``send_batch``).
"""

from __future__ import annotations

__all__: list[str] = []
