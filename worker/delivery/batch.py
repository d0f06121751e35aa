"""Many attempts, one provider request: the pipeline for a batch of ``send_sms`` tasks.

``worker.batching`` hands a pool process the messages it buffered; :func:`process_batch` answers
one :data:`Outcome` per message, exactly as :func:`~worker.delivery.process` would have, and
every guarantee of the single path holds per message:

* each message runs the single path's steps up to the send (``record.open_runs``: the hot
  path's first script, for the whole batch in one round trip, takes each lock and counts each
  run for the dead letters; ``pipeline.prepare``:
  ledger, deadline, routing with paused providers and breakers, reconciling an earlier unknown
  outcome), and its run ends with the single path's last script (``record.close_runs``, one
  round trip for the batch), which writes a ``sent`` with the unlock;
* the messages that would now be sent and whose driver declares ``batch_limit`` are grouped by
  ``(provider, batch_key)`` into chunks of distinct recipients; the others are sent alone;
* per request, the single path's gate (``worker.delivery.pipeline``, given the chunk) records
  every message of the chunk as ``sending`` with the request's
  tag (``batch_tags``) **before** the request leaves, then takes **one** limiter slot: a worker
  killed from here on leaves records that the next run reconciles by that tag;
* the answer is settled per message through the same policy handlers (``settle``): a refusal of
  one entry fails, defers or retries that message only; an error of the whole request
  (transport, unknown outcome, 429, no credit) is settled for each message, and the breaker
  hears the request once;
* entries the provider refused as a whole for one of them (``None`` from ``send_batch``) are
  sent again per entry (``bulk=True``), and if that is refused as a whole too, one by one
  through the single path.

With scheduling and tracking:

* a message sent with a provider-native schedule (``SendContext.schedule_at``) goes alone
  through the single path, which sends the schedule fields (docs/providers/smspartner.md §1.2.2) and
  holds it as ``scheduled`` until its time (``held_at_provider``); in a batch request it would leave
  without them and be delivered at once. (``/bulk-send`` takes the schedule fields request
  wide, docs/providers/smspartner.md §1.2.3, but only messages due at the very same minute could
  share a request.)
* a cancelled message (``cancelled`` is final) is answered from the ledger in ``prepare`` and
  never joins a request;
* an accepted message is ``sent`` exactly as on the single path, which registers it for
  tracking (``track_sent``) with its own number's provider message id;
* a batch request carries no ``urlDlr``: the DLR callback URL names one delivery
  (``worker.tracking.callbacks``) and a request carries one URL for all its numbers. Batched
  messages are tracked by the status poller only (their lookups are registered on sent);
  the callback is a hint that only triggers that same lookup earlier;
* the Prometheus metrics count one provider request per batch request (with its duration),
  and per accepted message its enqueue-to-accept time and cost, as the single path does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from worker.delivery.context import BATCH_TAGS, Delivery
from worker.delivery.pipeline import (
    POLICY_HANDLERS,
    Failure,
    Gate,
    Later,
    accepted,
    answer_from_ledger,
    close_runs,
    invalid,
    later,
    load,
    open_runs,
    prepare,
    send,
    settle_error,
)
from worker.delivery.results import Outcome
from worker.delivery.writer import Sending, sent
from worker.errors import DeliveryError
from worker.models import InvalidMessage
from worker.providers import Driver, SendContext, SendOutcome, parse_message
from worker.providers.batching import new_batch_tag
from worker.runtime import Runtime
from worker.stores import DeliveryRecord

__all__ = ["MAX_TAGS_KEPT", "BatchEntry", "for_each", "process_batch"]

log = structlog.get_logger(__name__)

MAX_TAGS_KEPT = 12
"""Batch tags kept per delivery (``batch_tags``): more than ``max_retries`` + a few batches."""


@dataclass(frozen=True)
class BatchEntry:
    """One task of the batch, as the worker received it."""

    channel: str
    raw: Any
    delivery_id: str
    task_name: str


@dataclass
class _Item:
    index: int
    d: Delivery
    record: DeliveryRecord
    driver: Driver[Any]
    ctx: SendContext
    tags: list[str] = field(default_factory=list)


def process_batch(entries: Sequence[BatchEntry], rt: Runtime) -> list[Outcome]:
    """One outcome per entry, in order.

    The batch's runs begin in one round trip (the hot path's first script per message) and
    end in one (its last script per message, writing each ``sent`` with the unlock). The
    per-message steps between are Redis round trips too (deadline, routing, reconcile); they
    run on ``DELIVERY_BATCH_THREADS`` threads so a batch waits for Redis about as long as one
    message does. Each message is still handled by one thread at a time, under its own lock."""
    outcomes: list[Outcome | None] = [None] * len(entries)
    read: dict[int, Delivery] = {}
    for index, entry in enumerate(entries):
        with structlog.contextvars.bound_contextvars(delivery_id=entry.delivery_id):
            d = _read(entry, rt)
        if isinstance(d, Delivery):
            read[index] = d
        else:
            outcomes[index] = d
    held: dict[int, tuple[Delivery, str]] = {}
    for (index, d), opened in zip(read.items(), open_runs(list(read.values())), strict=True):
        if opened is None:
            # Final: answered from the ledger, no lock needed.
            outcomes[index] = answer_from_ledger(d, load(d))
        elif isinstance(opened, str):
            held[index] = (d, opened)
        else:
            outcomes[index] = opened

    def prepare_one(index: int) -> _Item | None:
        d = held[index][0]
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(delivery_id=d.delivery_id, channel=d.channel)
        try:
            return _prepare(index, d, outcomes)
        finally:
            structlog.contextvars.clear_contextvars()

    try:
        prepared = for_each(rt, prepare_one, list(held))
        ready = [item for item in prepared if item is not None]
        for chunk in _chunks(ready, rt):
            structlog.contextvars.bind_contextvars(provider=chunk[0].d.provider, batch=len(chunk))
            for item, outcome in _send_chunk(chunk, rt):
                outcomes[item.index] = outcome
            structlog.contextvars.clear_contextvars()
    finally:
        close_runs([(d, token, outcomes[i] is not None) for i, (d, token) in held.items()])
    assert all(o is not None for o in outcomes)
    return [o for o in outcomes if o is not None]


def _read(entry: BatchEntry, rt: Runtime) -> Delivery | Outcome:
    """The message, validated once into its model (or its ``invalid_message`` outcome)."""
    try:
        message = parse_message(entry.channel, entry.raw)
    except InvalidMessage as exc:
        return invalid(
            entry.channel, exc, delivery_id=entry.delivery_id, task_name=entry.task_name, rt=rt
        )
    return Delivery(
        rt, message, entry.raw, entry.delivery_id, entry.task_name, provider=message.provider or ""
    )


T = TypeVar("T")
R = TypeVar("R")

_executor: ThreadPoolExecutor | None = None


def for_each(rt: Runtime, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``fn`` over ``items`` on the batch threads (created on first use, in the pool process),
    in order; the first exception is raised once every call has ended."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(
            max_workers=rt.settings.batch_threads, thread_name_prefix="batch"
        )
    futures = [_executor.submit(fn, item) for item in items]
    wait_all(futures)
    return [f.result() for f in futures]


def _prepare(index: int, d: Delivery, outcomes: list[Outcome | None]) -> _Item | None:
    """The single path's steps up to the send; the item when it is to be sent in a batch."""
    prepared = prepare(d)
    if not isinstance(prepared, tuple):
        outcomes[index] = prepared
        return None
    record, driver, ctx = prepared
    # A provider-native schedule needs the single path's schedule fields (see above).
    alone = ctx.schedule_at is not None
    if alone or driver.batch_limit <= 0 or driver.batch_key(d.message) is None:
        outcomes[index] = send(d, record, driver, ctx)
        return None
    return _Item(index, d, record, driver, ctx, record.fields.get(BATCH_TAGS, "").split())


def _chunks(items: list[_Item], rt: Runtime) -> list[list[_Item]]:
    """Per ``(provider, batch_key)``, chunks of at most the batch size with distinct recipients
    (a number twice in one request could not be told apart by a lookup by tag)."""
    groups: dict[tuple[str, Hashable], list[tuple[list[_Item], set[tuple[str, ...]]]]] = {}
    for item in items:
        size = min(item.driver.batch_limit, rt.settings.batch_max_items)
        key = (item.d.provider, item.driver.batch_key(item.d.message))
        # The numbers (SMS and voice alike: one request cannot tell a number twice apart).
        recipients = tuple(str(r) for r in item.d.message.to)
        chunks = groups.setdefault(key, [])
        for chunk, seen in chunks:
            if len(chunk) < size and recipients not in seen:
                chunk.append(item)
                seen.add(recipients)
                break
        else:
            chunks.append(([item], {recipients}))
    return [chunk for chunks in groups.values() for chunk, _ in chunks]


def _send_chunk(chunk: list[_Item], rt: Runtime) -> list[tuple[_Item, Outcome]]:
    driver = chunk[0].driver
    provider = chunk[0].d.provider
    done: list[tuple[_Item, Outcome]] = []
    todo, bulk = chunk, False
    while todo:
        tag = new_batch_tag()
        for item in todo:
            item.tags = [*item.tags, tag][-MAX_TAGS_KEPT:]
        gate = Gate([Sending(i.d, i.record, i.tags) for i in todo], driver, tag=tag)
        messages = [item.d.message for item in todo]
        try:
            request = driver.build_batch_request(messages, tag, bulk=bulk)
            # Every message is on record as sent under this tag before the request leaves.
            gate()
            answers = driver.parse_batch_response(driver.transmit(request), messages, request)
        except Later as stop:

            def rescheduled(item: _Item, wait_s: float = stop.wait_s) -> Outcome:
                return later(item.d, item.record, wait_s)

            return done + list(zip(todo, for_each(rt, _logged(rescheduled), todo), strict=True))
        except DeliveryError as exc:
            gate.attempted(exc.status_code, exc.kind)
            held_key = gate.key if gate.opened else None
            log.warning("delivery.batch_failed", kind=exc.kind, error=exc.message)
            # The breaker hears the request once, not once per message.
            first = todo[0]
            with structlog.contextvars.bound_contextvars(delivery_id=first.d.delivery_id):
                failure = Failure(exc, first.record.attempts, driver, held_key)
                done.append((first, settle_error(first.d, failure)))

            def settle(
                item: _Item, exc: DeliveryError = exc, held_key: str | None = held_key
            ) -> Outcome:
                failure = Failure(exc, item.record.attempts, driver, held_key)
                return POLICY_HANDLERS[exc.policy](item.d, failure)

            rest = todo[1:]
            return done + list(zip(rest, for_each(rt, _logged(settle), rest), strict=True))
        if len(answers) != len(todo):  # a driver bug, not a provider answer
            raise RuntimeError(f"{provider} send_batch answered {len(answers)} of {len(todo)}")
        # Answered: accepted (entries refused one by one settle per message), or refused as a
        # whole for one of its numbers (every entry ``None``: asked again per entry).
        # (The driver does not hand back the HTTP status: counted as the 2xx that SMS Partner
        # answers such refusals with, success false, docs/providers/smspartner.md §1.3.)
        whole_refusal = all(answer is None for answer in answers)
        gate.attempted(200, "recipient_rejected" if whole_refusal else "accepted")
        chunk[0].d.rt.health.record_success(provider)
        again = [item for item, answer in zip(todo, answers, strict=True) if answer is None]
        answered = [(i, a) for i, a in zip(todo, answers, strict=True) if a is not None]

        def settle_answer(
            pair: tuple[_Item, SendOutcome | DeliveryError | None], key: str = gate.key
        ) -> Outcome:
            item, answer = pair
            if isinstance(answer, SendOutcome):
                accepted(item.d, answer)
                return sent(item.d, answer, item.record.attempts)
            assert isinstance(answer, DeliveryError)
            failure = Failure(answer, item.record.attempts, driver, key)
            return POLICY_HANDLERS[answer.policy](item.d, failure)

        settled = for_each(rt, _logged(settle_answer, lambda pair: pair[0]), answered)
        done += [(item, outcome) for (item, _), outcome in zip(answered, settled, strict=True)]
        log.info("delivery.batch_sent", sent=len(todo) - len(again), again=len(again))
        if again and bulk:
            # Refused as a whole again: nothing was accepted; each goes alone (single path).
            for item in again:
                with structlog.contextvars.bound_contextvars(delivery_id=item.d.delivery_id):
                    done.append((item, send(item.d, item.record, driver, _with_tags(item))))
            return done
        todo, bulk = again, True
    return done


def _logged(
    fn: Callable[[Any], Outcome], item_of: Callable[[Any], _Item] = lambda item: item
) -> Callable[[Any], Outcome]:
    """``fn`` with the message's delivery id bound in the (batch thread's) log context."""

    def run(arg: Any) -> Outcome:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(delivery_id=item_of(arg).d.delivery_id)
        try:
            return fn(arg)
        finally:
            structlog.contextvars.clear_contextvars()

    return run


def _with_tags(item: _Item) -> SendContext:
    return dataclasses.replace(item.ctx, batch_tags=tuple(item.tags))
