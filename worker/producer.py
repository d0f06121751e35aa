"""Enqueue messages from application code: validate first, then publish.

``send_email(msg)`` refuses an invalid message with :class:`~worker.models.InvalidMessage`
(naming each bad field) and nothing reaches Redis. A valid message is normalised, recorded in
the ledger (which also deduplicates on ``idempotency_key``) and published with a redacted
``argsrepr`` so Flower never shows bodies or addresses.

With ``DELIVERY_REDIS_WAIT_REPLICAS`` > 0 an enqueue returns only once that many replicas
hold the record and the task (``WAIT``), so a Sentinel failover cannot lose it; otherwise it
raises :class:`NotReplicated`. :func:`wait` follows a delivery to its outcome on the ledger,
which, unlike ``AsyncResult.get()``, survives a Redis restart or failover.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, overload

from celery import Celery
from celery.result import AsyncResult

from worker.campaign import (
    SendManyResult,
    Validated,
    chunk_repr,
    chunk_size,
    fresh_ids,
    plan_chunks,
    validated_record,
)
from worker.config import get_settings
from worker.durable_wait import WaitTimeout, wait_for_results
from worker.lanes import Lanes, lanes_beside
from worker.limits import MessageLimits
from worker.models import InvalidMessage, Message
from worker.providers import parse_message
from worker.redaction import redacted_repr
from worker.redis_client import shared_redis
from worker.scheduling.cancel import CancelResult, cancel_delivery
from worker.scheduling.enqueue import campaign_due, hold_at_enqueue, hold_chunk
from worker.scheduling.rules import check_send_at
from worker.stores import Ledger, RedisLedger
from worker.stores.keys import Keys, keys_for
from worker.tasknames import SEND_CHUNK_TASK, TASK_NAMES

if TYPE_CHECKING:
    from worker.runtime import Runtime

__all__ = [
    "NotReplicated",
    "Producer",
    "SendManyResult",
    "WaitTimeout",
    "cancel",
    "enqueue",
    "lookup",
    "send_email",
    "send_many",
    "send_sms",
    "send_voice",
    "wait",
    "wait_many",
]

REPLICATION_FENCE_KEY = Keys().replication_fence
"""The default namespace's fence; a producer writes under its ledger's namespace."""


class NotReplicated(RuntimeError):
    """Enqueued on the Redis master, but fewer replicas than required confirmed it in time.

    The delivery will most likely be sent; a failover right now could lose it. Enqueue again
    with the same ``idempotency_key``: the ledger answers with the same delivery (never two).
    """

    def __init__(self, delivery_id: str, replicas: int, wanted: int) -> None:
        self.delivery_id = delivery_id
        self.replicas = replicas
        self.wanted = wanted
        super().__init__(
            f"delivery {delivery_id}: {replicas} of {wanted} replica(s) confirmed the enqueue"
        )


class Producer:
    """Validates, records and publishes messages through one Celery app."""

    def __init__(
        self,
        app: Celery | None = None,
        ledger: Ledger | None = None,
        *,
        wait_replicas: int | None = None,
        wait_timeout_ms: int | None = None,
        lanes: bool | None = None,
    ) -> None:
        """``wait_replicas``/``wait_timeout_ms`` default to ``DELIVERY_REDIS_WAIT_*``, ``lanes``
        to ``DELIVERY_LANES`` (waiting work in Redis lanes, :mod:`worker.lanes`)."""
        if app is None:
            from worker.app import app as default_app

            app = default_app
        self.app = app
        if ledger is None:
            ledger = RedisLedger(shared_redis(get_settings()), keys=keys_for(get_settings()))
        self.ledger = ledger
        if wait_replicas is None:
            wait_replicas = get_settings().redis_wait_replicas
        if wait_timeout_ms is None:
            wait_timeout_ms = get_settings().redis_wait_timeout_ms
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._cancel_runtime: Runtime | None = None
        self.lanes = get_settings().lanes if lanes is None else lanes
        self._lanes: Lanes | None = None

    def validate(
        self, channel: str, message: Any, *, limits: MessageLimits | None = None
    ) -> Message:
        """The message's model, or :class:`~worker.models.InvalidMessage` naming each bad field.
        ``limits``: ``DELIVERY_MAX_MESSAGE_*`` (read once by a campaign, not per message)."""
        # The size and shape bounds the workers enforce (worker.limits), checked first.
        if limits is None:
            limits = get_settings().message_limits()
        model = parse_message(channel, message, limits=limits)
        check_send_at(model.send_at, time.time())  # tolerance and horizon (worker.scheduling)
        return model

    def enqueue(self, channel: str, message: Any, **options: Any) -> AsyncResult[Any]:
        model = self.validate(channel, message)
        body = model.model_dump(mode="json", by_alias=True, exclude_none=True)
        delivery_id = str(uuid.uuid4())
        existing, created = self.ledger.create(
            delivery_id,
            channel=channel,
            provider=model.provider or "auto",
            idempotency_key=model.idempotency_key,
            extra={
                "task_name": TASK_NAMES[channel],
                "message": json.dumps(body),
                # Where the schedule mover publishes it when due ("" = the default queue).
                "queue": str(options.get("queue") or ""),
            },
        )
        if not created:
            # Same idempotency key as an earlier enqueue: that delivery is the answer.
            self._replicated(existing)
            return AsyncResult(existing, app=self.app)
        quiet = get_settings().quiet_hours
        if set(options) <= {"queue"} and hold_at_enqueue(
            self.app, self.ledger, model, delivery_id, quiet_hours=quiet
        ):
            # On the durable schedule at once: no task runs until it is due.
            return AsyncResult(delivery_id, app=self.app)
        lanes = self._lane_store() if not _given(options) else None
        if lanes is not None:
            # Into its lane (priority, tenant): a worker's dispatcher publishes it in turn.
            try:
                lanes.push(delivery_id, model.lane, model.tenant_key)
            except Exception:
                self.ledger.forget(
                    delivery_id, channel=channel, idempotency_key=model.idempotency_key
                )
                raise
            self._replicated(delivery_id)
            return AsyncResult(delivery_id, app=self.app)
        try:
            result = self.app.send_task(
                TASK_NAMES[channel],
                args=[body],
                task_id=delivery_id,
                argsrepr=redacted_repr(channel, body),
                kwargsrepr="{}",
                **options,
            )
        except Exception:
            # Not published: forget the record so the caller may try again with the same key.
            self.ledger.forget(delivery_id, channel=channel, idempotency_key=model.idempotency_key)
            raise
        self._replicated(delivery_id)
        return result

    def _lane_store(self) -> Lanes | None:
        """The lanes beside the ledger (a take reads the record), or ``None``: publish
        directly (lanes off, or a ledger without Redis)."""
        if not self.lanes:
            return None
        if self._lanes is None:
            self._lanes = lanes_beside(self.ledger, get_settings())
        return self._lanes

    def send_many(
        self,
        channel: str,
        messages: Iterable[Any],
        *,
        on_invalid: Literal["raise", "skip"] = "raise",
        **options: Any,
    ) -> list[str] | SendManyResult:
        """Enqueue a campaign: every message validated first, then one ledger script call and
        one Celery message (``tasks.send_chunk``) per chunk of the provider's batch size.
        With lanes on (``DELIVERY_LANES``) and no Celery options, each chunk waits as one entry
        in its lane (``priority``: ``bulk`` unless the messages name theirs; ``tenant``) and a
        worker's dispatcher publishes the chunk task in turn (:mod:`worker.lanes`).

        Returns the delivery ids in input order. An invalid message raises
        :class:`~worker.models.InvalidMessage` naming each bad index and field
        (``[3].to: ...``) and nothing is enqueued; with ``on_invalid="skip"`` the valid ones are
        enqueued and a :class:`~worker.campaign.SendManyResult` answers (``ids`` with ``None``
        at each invalid index, ``errors`` by index). ``idempotency_key`` per message works as
        for a single send (the earlier delivery's id is answered); ``options`` go to Celery's
        publish (``queue``, ``countdown``, ...)."""
        if on_invalid not in ("raise", "skip"):
            raise ValueError("on_invalid must be 'raise' or 'skip'")
        # Each valid message is kept as its normalised JSON (Validated), not as its model.
        valid: list[Validated] = []
        errors: dict[int, InvalidMessage] = {}
        settings = get_settings()
        limits, quiet, now = settings.message_limits(), settings.quiet_hours, time.time()
        count = 0
        for index, message in enumerate(messages):
            count += 1
            try:
                model = self.validate(channel, message, limits=limits)
            except InvalidMessage as exc:
                errors[index] = exc
                continue
            due = campaign_due(model, now, quiet_hours=quiet)
            valid.append(Validated.of(index, _campaign_model(model), due=due))
        if errors and on_invalid == "raise":
            raise InvalidMessage(
                [
                    {"field": f"[{index}].{e['field']}", "message": e["message"]}
                    for index, exc in errors.items()
                    for e in exc.errors
                ]
            )
        ids: list[str | None] = [None] * count
        queue = str(options.get("queue") or "")
        lanes = self._lane_store() if not _given(options) else None
        for chunk in plan_chunks(channel, valid):
            first = chunk[0]
            # A chunk's messages share one due time (send_at, quiet hours): held on the schedule
            # together, chunk= tells the mover to publish them again as one chunk task.
            size = chunk_size(channel, first.provider) if first.due is not None else 0
            records = [
                validated_record(channel, delivery_id, item, queue, chunk=size)
                for item, delivery_id in zip(chunk, fresh_ids(len(chunk)), strict=True)
            ]
            items: list[dict[str, Any]] = []
            created_ids: list[str] = []
            answers = self.ledger.create_many(records, fresh_ids=True)
            for item, (existing, created) in zip(chunk, answers, strict=True):
                ids[item.index] = existing
                if created:
                    items.append({"id": existing, "message": json.loads(item.body)})
                    created_ids.append(existing)
            if not items:
                continue
            if first.due is not None and set(options) <= {"queue"}:
                # Nothing published: the schedule mover publishes the chunk when due.
                hold_chunk(self.app, self.ledger, channel, created_ids, first.provider, first.due)
                self._replicated(created_ids[-1])
                continue
            try:
                if lanes is not None:
                    # One lane entry per chunk, in its lane (bulk unless the messages say);
                    # a worker's dispatcher publishes the chunk task in turn.
                    lanes.push_chunk(
                        str(uuid.uuid4()),
                        SEND_CHUNK_TASK,
                        {"channel": channel, "items": items},
                        len(items),
                        first.priority,
                        first.tenant,
                        provider=first.provider or "auto",
                    )
                else:
                    self.app.send_task(
                        SEND_CHUNK_TASK,
                        args=[{"channel": channel, "items": items}],
                        task_id=str(uuid.uuid4()),
                        argsrepr=chunk_repr(channel, len(items)),
                        kwargsrepr="{}",
                        **options,
                    )
            except Exception:
                # Not published: forget this chunk's records so the caller may try again.
                for record in records:
                    if record.delivery_id in created_ids:
                        self.ledger.forget(
                            record.delivery_id,
                            channel=channel,
                            idempotency_key=record.idempotency_key,
                        )
                raise
            self._replicated(created_ids[-1])
        if on_invalid == "skip":
            return SendManyResult(ids, errors)
        return [i for i in ids if i is not None]

    def _replicated(self, delivery_id: str) -> None:
        """Return once ``wait_replicas`` replicas hold every write so far, else raise.

        ``WAIT`` counts the replicas that have the writes of *its own connection*; the ledger
        record and the task went out on other connections. So the fence first writes a key on
        the ``WAIT`` connection: the replication stream is in order, so a replica that has that
        write has every earlier one, on any connection, the publish included (broker and shared
        state on one Redis, as with one Sentinel master name).
        """
        client = getattr(self.ledger, "redis", None)
        if self.wait_replicas <= 0 or client is None:
            return
        pipe = client.pipeline(transaction=False)
        fence = getattr(self.ledger, "keys", Keys()).replication_fence
        pipe.set(fence, delivery_id, px=60_000)
        pipe.wait(self.wait_replicas, self.wait_timeout_ms)
        replicas = int(pipe.execute()[1])
        if replicas < self.wait_replicas:
            raise NotReplicated(delivery_id, replicas, self.wait_replicas)

    def wait(self, delivery_id: str, timeout_s: float, *, parked: bool = True) -> dict[str, Any]:
        """The delivery's result (as the task returns it) once it settled, read from the
        ledger: unlike ``AsyncResult.get()`` it survives a Redis restart or failover.

        Settled means a final state, or ``parked`` unless ``parked=False``. Raises
        :class:`WaitTimeout` (its ``pending`` maps the unsettled id to its state).
        """
        return wait_for_results(self.ledger, [delivery_id], timeout_s, parked=parked)[delivery_id]

    def wait_many(
        self, delivery_ids: Iterable[str], timeout_s: float, *, parked: bool = True
    ) -> dict[str, dict[str, Any]]:
        """:meth:`wait` for several deliveries at once: id → result."""
        return wait_for_results(self.ledger, delivery_ids, timeout_s, parked=parked)

    def cancel(self, delivery_id: str) -> CancelResult:
        """Take a delivery back (:mod:`worker.scheduling.cancel`): one answer per id."""
        if self._cancel_runtime is None:
            from dataclasses import replace

            from worker.runtime import Runtime
            from worker.stores import Stores

            # Cancelling uses this producer's ledger and, for a send scheduled at a provider,
            # that provider's driver (its API key from DELIVERY_*); no other store.
            stores = replace(Stores.in_memory(), ledger=self.ledger)
            self._cancel_runtime = Runtime(get_settings(), stores=stores)
        return cancel_delivery(self._cancel_runtime, self.app, delivery_id)

    def close(self) -> None:
        """Close what :meth:`cancel` opened (its HTTP client for provider cancels)."""
        if self._cancel_runtime is not None:
            self._cancel_runtime.close()
            self._cancel_runtime = None

    def lookup(self, delivery_id: str) -> dict[str, Any] | None:
        """The delivery's ledger record (state, attempts, timestamps, result), or ``None``."""
        record = self.ledger.get(delivery_id)
        return None if record is None else record.to_dict()


def _campaign_model(model: Message) -> Message:
    """A campaign message waits in the ``bulk`` lane unless it names its priority."""
    if model.priority is None:
        return model.model_copy(update={"priority": "bulk"})
    return model


def _given(options: dict[str, Any]) -> dict[str, Any]:
    """The Celery options a caller really set (``queue=None`` is no option)."""
    return {k: v for k, v in options.items() if v is not None}


_default: Producer | None = None


def _producer() -> Producer:
    global _default
    if _default is None:
        _default = Producer()
    return _default


def enqueue(channel: str, message: Any, **options: Any) -> AsyncResult[Any]:
    return _producer().enqueue(channel, message, **options)


def cancel(delivery_id: str) -> CancelResult:
    """Cancel a delivery not yet sent, or scheduled at its provider; see
    :mod:`worker.scheduling.cancel` for the answers (``result.answer``)."""
    return _producer().cancel(delivery_id)


def lookup(delivery_id: str) -> dict[str, Any] | None:
    return _producer().lookup(delivery_id)


def wait(delivery_id: str, timeout_s: float, *, parked: bool = True) -> dict[str, Any]:
    """:meth:`Producer.wait` on the default producer: ``wait(send_sms(msg).id, 60)``."""
    return _producer().wait(delivery_id, timeout_s, parked=parked)


def wait_many(
    delivery_ids: Iterable[str], timeout_s: float, *, parked: bool = True
) -> dict[str, dict[str, Any]]:
    return _producer().wait_many(delivery_ids, timeout_s, parked=parked)


@overload
def send_many(
    channel: str,
    messages: Iterable[Any],
    *,
    on_invalid: Literal["raise"] = "raise",
    **options: Any,
) -> list[str]: ...


@overload
def send_many(
    channel: str, messages: Iterable[Any], *, on_invalid: Literal["skip"], **options: Any
) -> SendManyResult: ...


def send_many(
    channel: str,
    messages: Iterable[Any],
    *,
    on_invalid: Literal["raise", "skip"] = "raise",
    **options: Any,
) -> list[str] | SendManyResult:
    """Enqueue many messages of one channel: delivery ids in input order (see
    :meth:`Producer.send_many`; ``on_invalid="skip"`` answers a ``SendManyResult``)."""
    return _producer().send_many(channel, messages, on_invalid=on_invalid, **options)


def send_email(message: Any, **options: Any) -> AsyncResult[Any]:
    return enqueue("email", message, **options)


def send_sms(message: Any, **options: Any) -> AsyncResult[Any]:
    return enqueue("sms", message, **options)


def send_voice(message: Any, **options: Any) -> AsyncResult[Any]:
    return enqueue("voice", message, **options)
