"""The Celery application: JSON only, late acks, events on, results in Redis with an expiry."""

from __future__ import annotations

from queue import Empty
from typing import Any

import redis
from celery import Celery, signals
from celery.exceptions import Retry
from celery.worker.request import Request
from kombu import Exchange, Queue
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Message as VirtualMessage
from kombu.utils.encoding import bytes_to_str

from worker.config import Settings, get_settings
from worker.guard.inflate import InflateRefused, register_bounded_decompression
from worker.guard.raw_items import ItemRefusal, read_envelope, set_aside
from worker.logs import configure_logging
from worker.redaction import redacted_repr
from worker.redis_client import celery_sentinel_options
from worker.stores.keys import keys_for
from worker.tasknames import CHANNEL_OF_TASK, SEND_CHUNK_TASK, SEND_MANY_TASK

__all__ = ["RedisTransport", "app", "celery_config"]


class GuardedRedisMessage(VirtualMessage):
    """kombu's Redis message, whose unreadable body is refused by the guard with a recorded
    outcome.

    kombu inflates a ``compression`` header's body in ``Message.__init__`` (bounded here:
    :mod:`worker.guard.inflate`) and keeps any error of that step in ``errors``; Celery's
    consumer then logs the body and drops the message with no outcome anywhere. The error
    moves to :attr:`read_refusal` instead (the body stays as it came, compressed and small),
    and the guard's checks refuse the message under its task id like any other bad message.
    """

    read_refusal: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.errors:
            error = self.errors[0][1]
            if isinstance(error, InflateRefused):
                self.read_refusal = error.reason
            elif self.headers.get("compression") is not None:
                self.read_refusal = (
                    f"the compressed body cannot be inflated ({type(error).__name__})"
                )
            else:
                self.read_refusal = f"the body cannot be read ({type(error).__name__})"
            self.errors = []

    def serializable(self) -> Any:
        """What kombu keeps in Redis's unacked hash (and restores): a compressed message as it
        came, not kombu's re-encoding of its inflated body (another ~1.3 times the body in
        this process, and in Redis)."""
        if self.headers.get("compression") is None:
            return super().serializable()
        return {
            "body": getattr(self, "_raw", {}).get("body"),
            "properties": self.properties,
            "content-type": self.content_type,
            "content-encoding": self.content_encoding,
            "headers": dict(self.headers),
        }


class _RawItemReading:
    """A channel's decode of a raw queue item, that sets aside what is not a kombu envelope.

    kombu decodes each popped item with a bare ``loads`` (``_brpop_read``, ``_get``): an item
    pushed by anything but kombu (``LPUSH delivery 'not json'``) raised there, before any hook
    of ours, and the worker process exited; the item was already popped, so each push took
    down one worker. These two methods are kombu 5.7's with that ``loads`` replaced by
    :meth:`_decode_item` (:mod:`worker.guard.raw_items`): a refused item is set aside and the
    channel reads on (the next ``BRPOP``; the next item for ``_get``).
    """

    # Given by kombu's Redis channel.
    client: Any
    codecs: Any
    connection: Any
    priority_steps: Any
    sep: str
    _queue_cycle: Any
    _in_poll: Any
    connection_errors: Any
    conn_or_acquire: Any
    _q_for_pri: Any
    _maybe_update_queues_expire: Any
    _flush_brpop_reauth: Any

    def _decode_item(self, item: bytes, queue: str) -> dict[str, Any] | None:
        decoded = read_envelope(item, self.codecs)
        if isinstance(decoded, ItemRefusal):
            with self.conn_or_acquire() as client:
                set_aside(client, queue, item, decoded, keys=keys_for(get_settings()))
            return None
        return decoded

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # kombu: disconnect so that the next iteration reconnects.
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            payload = self._decode_item(item, dest)
            if payload is None:
                raise Empty()
            self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                while item := client.rpop(self._q_for_pri(queue, pri)):
                    payload = self._decode_item(item, queue)
                    if payload is not None:
                        self._maybe_update_queues_expire(client, queue)
                        return payload
            self._maybe_update_queues_expire(client, queue)
            raise Empty()


class _RedisChannel(_RawItemReading, kombu_redis.Channel):
    """kombu's Redis channel, with a connection error where kombu raises AttributeError, and
    raw items that are not kombu envelopes set aside (:class:`_RawItemReading`).

    After a broker connection loss, Celery (5.7) first *collects* the broken connection, which
    drops ``transport.client``, and then closes it. Closing the default channel restores its
    unacknowledged messages, which needs a new Redis pool built from ``transport.client``:
    kombu raises ``AttributeError`` there, Celery does not treat that as a connection error,
    and the worker process exits ("Unrecoverable error") instead of reconnecting. Found by
    the Redis restart fault test (tests/integration/test_faults.py); same family as
    celery/kombu#582. As a connection error, the close is ignored and the consumer
    reconnects; the messages stay in Redis's unacked set (the sweeper re-enqueues them from
    the ledger, or Redis redelivers them after ``visibility_timeout``).
    """

    Message = GuardedRedisMessage

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError("broker connection already collected")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`_RedisChannel` (``broker_transport``)."""

    Channel = _RedisChannel


class _SentinelChannel(_RawItemReading, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel with :class:`_RedisChannel`'s fixes (a connection error where
    kombu raises AttributeError after the connection was collected; raw items that are not
    kombu envelopes set aside)."""

    Message = GuardedRedisMessage

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError("broker connection already collected")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with :class:`_SentinelChannel` (``sentinel://`` brokers)."""

    Channel = _SentinelChannel


def _broker_transport(broker_url: str) -> str | None:
    """Our Redis transport for ``redis://``/``rediss://`` brokers, our Sentinel transport for
    ``sentinel://``; kombu's choice otherwise."""
    scheme = broker_url.partition("://")[0].lower()
    if scheme == "sentinel":
        return f"{__name__}:SentinelTransport"
    return f"{__name__}:RedisTransport" if scheme in ("redis", "rediss") else None


def celery_config() -> dict[str, Any]:
    settings = get_settings()
    transport = {
        # With the Redis broker an unacknowledged task is redelivered after this long; every
        # countdown we schedule stays below it (checked in Settings) so no task runs twice.
        "visibility_timeout": settings.visibility_timeout_s,
    }
    return {
        "broker_url": settings.broker_url,
        "broker_transport": _broker_transport(settings.broker_url),
        "result_backend": settings.result_backend,
        "result_expires": settings.result_expires_s,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Never store task arguments (message bodies, addresses) with the result.
        "result_extended": False,
        # Acknowledge after the task finished, and requeue when its process dies (SIGKILL, OOM):
        # acks_late alone still loses those (docs/design.md §9).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # The last net under the send lock (docs/threat-model-sending.md): every provider request
        # ends by its whole-request deadline (worker.http), so a task still running at the soft
        # limit is stalled; it raises SoftTimeLimitExceeded, which tasks/ turns into a retry
        # that settles the attempt before any resend. The hard limit kills the process after.
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        "worker_prefetch_multiplier": settings.worker_prefetch_multiplier,
        # Sentinel URLs (worker.redis_client) add the master's name and the sentinels' options.
        "broker_transport_options": {
            **transport,
            **celery_sentinel_options(settings, settings.broker_url),
        },
        "result_backend_transport_options": {
            "retry_policy": {"timeout": 5.0},
            **celery_sentinel_options(settings, settings.result_backend),
        },
        "broker_connection_retry_on_startup": True,
        # Task events cost ~2 broker commands per message (and the main process's CPU),
        # ``task-sent`` events 1, the ``STARTED`` state 5: off unless set (the ledger records
        # ``queued`` and ``sending``). Flower still sees every task: while it runs it turns
        # worker events on itself (``enable_events``); ``-E`` turns them on too.
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_sent_event,
        "task_track_started": settings.task_track_started,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        # Workers consume every configured queue (``DELIVERY_QUEUES``) unless started with
        # ``-Q``; this project's producers publish to the first one.
        "task_queues": [Queue(name, Exchange(name), routing_key=name) for name in settings.queues],
        "task_default_queue": settings.queues[0],
        "beat_schedule": {
            "check-balances": {
                "task": "tasks.check_balances",
                "schedule": settings.balance_check_interval_s,
            },
            "sweep": {"task": "tasks.sweep", "schedule": settings.sweep_interval_s},
            "track-poll": {
                "task": "tasks.track_poll",
                "schedule": settings.tracking_poll_interval_s,
            },
        },
        "timezone": "UTC",
        "enable_utc": True,
    }


# Compressed bodies inflate to at most the body-size limit, before any hook sees them.
register_bounded_decompression(get_settings().message_limits().max_bytes)

app = Celery("delivery-worker", include=["tasks"])
app.conf.update(celery_config())
# Every task message is checked before the pool (or Flower's argsrepr) touches it.
app.conf.worker_consumer = "worker.guard:GuardedConsumer"
# Each worker's main process publishes due scheduled messages (worker.scheduling.mover).
app.steps["worker"].add("worker.scheduling.mover:MoverStep")
# ... and feeds the broker queue from the lanes, in priority and tenant order (worker.lanes).
app.steps["worker"].add("worker.lanes.dispatcher:DispatchStep")


@signals.setup_logging.connect
def _setup_logging(**_kwargs: Any) -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


@signals.before_task_publish.connect
def _redact_published(
    sender: str | None = None,
    body: Any = None,
    headers: dict[str, Any] | None = None,
    **_kwargs: Any,
) -> None:
    """Flower shows ``argsrepr``: make it redacted for every publish of our tasks.

    This covers producers, ``app.send_task`` by name through this app, and Celery's own
    re-publish on ``task.retry`` (which would otherwise repr the full message).
    """
    if sender in _MANY and headers is not None:
        headers["argsrepr"] = _many_repr(body)
        headers["kwargsrepr"] = "{}"
        return
    channel = CHANNEL_OF_TASK.get(sender or "")
    if channel is None or headers is None:
        return
    args = body[0] if isinstance(body, (tuple, list)) and body else ()
    message = args[0] if isinstance(args, (tuple, list)) and args else {}
    headers["argsrepr"] = redacted_repr(channel, message if isinstance(message, dict) else {})
    headers["kwargsrepr"] = "{}"


_MANY = (SEND_CHUNK_TASK, SEND_MANY_TASK)


def _many_repr(body: Any) -> str:
    """A campaign task's ``argsrepr``: its channel and how many messages, never their content."""
    args = body[0] if isinstance(body, (tuple, list)) and body else body
    payload = args[0] if isinstance(args, (tuple, list)) and args else {}
    if not isinstance(payload, dict):
        return "({},)"
    channel = payload.get("channel")
    channel = channel if channel in ("email", "sms", "voice") else "[invalid]"
    items = payload.get("items", payload.get("messages"))
    count = len(items) if isinstance(items, list) else 0
    return repr(({"channel": channel, "messages": count},))


class RedactedRequest(Request):
    """What the worker shows of our tasks: redacted args in events, inspect and Flower.

    The publish hook above only runs in processes that import this package; a bare Celery
    client sending by name publishes Celery's default ``argsrepr`` (the whole message). The
    worker re-derives it here, and ``info()`` (Celery's inspect ``reserved``/``scheduled``,
    Flower's worker page) always uses the safe form.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.task_name in _MANY:
            self._argsrepr = _many_repr((self.args,))
            self._kwargsrepr = "{}"
        channel = CHANNEL_OF_TASK.get(self.task_name)
        if channel is not None:
            task_args = self.args
            message = task_args[0] if task_args and isinstance(task_args[0], dict) else {}
            self._argsrepr = redacted_repr(channel, message)
            self._kwargsrepr = "{}"

    def info(self, safe: bool = False) -> Any:
        return super().info(safe=True)

    def on_accepted(self, pid: Any, time_accepted: Any) -> None:
        super().on_accepted(pid, time_accepted)
        from worker.guard import task_accepted

        task_accepted(self.id, self._guard_token())

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        from worker.guard import task_failed

        exc = getattr(exc_info, "exception", None)
        if not isinstance(getattr(exc, "exc", exc), Retry):  # a retry's run cleared the mark
            task_failed(self.id, self._guard_token())
        return super().on_failure(exc_info, send_failed_event, return_ok)

    def _guard_token(self) -> str | None:
        from worker.guard.refusals import GUARD_HEADER

        token = self.request_dict.get(GUARD_HEADER)
        return token if isinstance(token, str) and self.task_name in CHANNEL_OF_TASK else None


def client_app(
    broker_url: str,
    result_backend: str,
    *,
    name: str = "delivery-client",
    settings: Settings | None = None,
) -> Celery:
    """A producer-side Celery app for explicit URLs (tests, benchmarks, the demo).

    ``settings`` (default: the environment's) names the Sentinel master for ``sentinel://`` URLs.
    """
    client = Celery(name)
    config = celery_config()
    settings = settings or get_settings()
    config.update(
        broker_url=broker_url,
        broker_transport=_broker_transport(broker_url),
        result_backend=result_backend,
        broker_transport_options={
            **config["broker_transport_options"],
            **celery_sentinel_options(settings, broker_url),
        },
        result_backend_transport_options={
            **config["result_backend_transport_options"],
            **celery_sentinel_options(settings, result_backend),
        },
    )
    client.conf.update(config)
    return client


@signals.worker_init.connect
def _refuse_an_evicting_redis(**_kwargs: Any) -> None:
    """In the worker's main process, before the pool: a Redis that may evict TTL keys (ledger,
    idempotency keys, locks) is refused (``worker.redis_memory``). ``SystemExit``: Celery logs
    and swallows an ordinary exception raised by a signal receiver."""
    import structlog

    from worker.errors import ConfigurationError
    from worker.redis_client import shared_redis
    from worker.redis_memory import check_eviction_policy

    log = structlog.get_logger("worker.app")
    settings = get_settings()
    client = shared_redis(settings, socket_timeout=10)
    try:
        check = check_eviction_policy(client, allow_eviction=settings.allow_eviction)
    except ConfigurationError as exc:
        log.critical("worker.redis_evicts", error=exc.message)
        raise SystemExit(f"refusing to start: {exc.message}") from None
    except (redis.RedisError, OSError) as exc:  # down for now: the worker's own retries apply
        log.warning("worker.redis_eviction_unchecked", error=type(exc).__name__)
        return
    finally:
        client.close()
    if check.warning:
        log.warning("worker.redis_eviction_unchecked", warning=check.warning)


@signals.worker_process_init.connect
def _warm_process(**_kwargs: Any) -> None:
    """Build this pool process's runtime (HTTP client, Redis pool, drivers) before any task.

    Otherwise every fresh process builds it during its first task, all at once, right when
    the first limiter grants are being sent: that start-up work delays those requests and
    bunches their arrivals at the provider (measured by bench/rate_limit.py).
    """
    import structlog

    from worker.errors import DeliveryError
    from worker.metrics import record
    from worker.providers import DRIVERS
    from worker.runtime import get_runtime

    rt = get_runtime()
    enabled = rt.settings.enabled_providers()
    record.start_provider_series((p, DRIVERS[p].channel) for p in enabled if p in DRIVERS)
    for provider in enabled:
        try:
            rt.driver(provider)
        except DeliveryError as exc:
            structlog.get_logger("worker.app").error(
                "worker.driver_unavailable", provider=provider, error=exc.message
            )
    rt.ping()
    _replay_spool(rt)


def _replay_spool(rt: Any) -> None:
    """Final writes Redis refused in an earlier run (worker.delivery.spool) go to the ledger
    first, before the sweeper could take their ``sending`` records for interrupted sends."""
    import structlog

    from worker.delivery.spool import FinalWriteSpool

    try:
        FinalWriteSpool(rt.settings.spool_dir).replay(rt.records)
    except Exception as exc:  # a worker starts regardless; the file stays for the next start
        structlog.get_logger("worker.app").error(
            "delivery.spool_replay_failed", error=type(exc).__name__
        )
