"""Sentinel URLs in the settings, Celery's transport options, the producer's WAIT fence and the
ledger wait (real redis-server where Redis is involved; the failover itself is in
tests/integration/test_redis_ha.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from pydantic import ValidationError

from worker.app import SentinelTransport, client_app
from worker.config import Settings
from worker.durable_wait import WaitTimeout, wait_for_results
from worker.ops.cli import main
from worker.producer import NotReplicated, Producer
from worker.redis_client import parse_sentinel_url, redis_client
from worker.stores import DeliveryRecord, MemoryLedger, RedisLedger

SENTINELS = "sentinel://:s3cret-redis@10.0.0.1:26379/2;sentinel://10.0.0.2:26380;sentinel://h3"
SMS = {"provider": "smspartner", "to": ["+33612345679"], "text": "Code 1234"}


def test_sentinel_url_gives_every_sentinel_and_the_first_ones_db_and_password() -> None:
    target = parse_sentinel_url(SENTINELS)
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("h3", 26379))
    assert (target.db, target.password, target.username) == (2, "s3cret-redis", None)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sentinel://h1:26379/0;redis://h2:6379", "starts with sentinel://"),
        ("sentinel://h1:26379/0;sentinel://h2:26379/3", "first sentinel"),
        ("sentinel://h1:26379/zero", "not a number"),
        ("sentinel://h1:port", "port is not a number"),
        ("sentinel://:26379", "no host"),
    ],
)
def test_malformed_sentinel_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sentinel_url(url)


def test_a_sentinel_url_needs_the_master_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_BROKER_URL", SENTINELS)
    with pytest.raises(ValidationError, match="DELIVERY_REDIS_MASTER_NAME"):
        Settings()
    monkeypatch.setenv("DELIVERY_REDIS_MASTER_NAME", "dw-master")
    assert Settings().redis_master_name == "dw-master"


def test_check_config_names_the_bad_sentinel_setting_and_hides_passwords(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DELIVERY_REDIS_URL", "sentinel://h1/1;sentinel://h2/4")
    monkeypatch.setenv("DELIVERY_REDIS_MASTER_NAME", "dw-master")
    assert main(["check-config"]) == 1
    assert "DELIVERY_REDIS_URL: the database number goes on the first" in capsys.readouterr().err

    monkeypatch.setenv("DELIVERY_REDIS_URL", SENTINELS)
    monkeypatch.setenv("DELIVERY_REDIS_SENTINEL_PASSWORD", "sentinel-pass-42")
    monkeypatch.setenv("DELIVERY_REDIS_WAIT_REPLICAS", "1")
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "sentinel master: dw-master" in out
    assert "enqueue waits for 1 replica(s), up to 1000 ms" in out
    assert "s3cret-redis" not in out and "sentinel-pass-42" not in out


def test_celery_gets_the_sentinel_transport_master_name_and_sentinel_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DELIVERY_REDIS_MASTER_NAME", "dw-master")
    monkeypatch.setenv("DELIVERY_REDIS_SENTINEL_PASSWORD", "sentinel-pass-42")
    settings = Settings()
    app = client_app(SENTINELS, SENTINELS.replace("/2;", "/3;"), settings=settings)
    conf: Any = app.conf
    assert conf.broker_transport == "worker.app:SentinelTransport"
    for options in (conf.broker_transport_options, conf.result_backend_transport_options):
        assert options["master_name"] == "dw-master"
        assert options["sentinel_kwargs"]["password"] == "sentinel-pass-42"
    assert conf.broker_transport_options["visibility_timeout"] == settings.visibility_timeout_s
    assert conf.result_backend_transport_options["retry_policy"] == {"timeout": 5.0}
    backend = app.backend
    assert type(backend).__name__ == "SentinelBackend"
    assert app.connection_for_write().transport_cls == "worker.app:SentinelTransport"
    assert SentinelTransport.default_port == 26379


def test_plain_redis_urls_get_no_sentinel_options(redis_url: str) -> None:
    app = client_app(f"{redis_url}/14", f"{redis_url}/13", settings=Settings())
    conf: Any = app.conf
    assert "master_name" not in conf.broker_transport_options
    assert "master_name" not in conf.result_backend_transport_options
    assert conf.broker_transport == "worker.app:RedisTransport"


def test_redis_client_refuses_a_sentinel_url_without_master_name() -> None:
    with pytest.raises(ValueError, match="DELIVERY_REDIS_MASTER_NAME"):
        redis_client(SENTINELS)


# -- the producer's replication fence, on a real master without replicas ------------------------


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    with redis.Redis.from_url(f"{redis_url}/14") as r:
        r.flushdb()
    yield client_app(f"{redis_url}/14", f"{redis_url}/13", name="sentinel-unit")
    # A caught exception's traceback keeps the enqueue's AsyncResult in a reference cycle;
    # freed after the session's redis-server stopped, it would try to unsubscribe from it.
    gc.collect()
    with redis.Redis.from_url(f"{redis_url}/14") as r:
        r.flushdb()


def test_enqueue_without_the_required_replicas_raises_not_replicated(
    app: Celery, redis_client: redis.Redis
) -> None:
    producer = Producer(
        app=app, ledger=RedisLedger(redis_client), wait_replicas=1, wait_timeout_ms=50
    )
    with pytest.raises(NotReplicated) as caught:
        producer.enqueue("sms", {**SMS, "idempotency_key": "order-1"})
    assert (caught.value.replicas, caught.value.wanted) == (0, 1)
    record = producer.lookup(caught.value.delivery_id)
    assert record is not None and record["state"] == "queued"  # enqueued, not confirmed
    # The retry with the same key names the same delivery, and is refused the same way.
    with pytest.raises(NotReplicated) as again:
        producer.enqueue("sms", {**SMS, "idempotency_key": "order-1"})
    assert again.value.delivery_id == caught.value.delivery_id


def test_enqueue_with_no_replicas_required_does_not_wait(
    app: Celery, redis_client: redis.Redis
) -> None:
    producer = Producer(app=app, ledger=RedisLedger(redis_client), wait_replicas=0)
    result = producer.enqueue("sms", SMS)
    assert redis_client.get("dw:repl:fence") is None
    assert producer.lookup(result.id) is not None


# -- the ledger wait ---------------------------------------------------------------------------


class FlakyLedger(MemoryLedger):
    """A ledger whose reads fail like a Redis restart: ``outage`` reads in a row, then work."""

    def __init__(self, outage: int) -> None:
        super().__init__()
        self.outage = outage
        self.reads = 0

    def get(self, delivery_id: str) -> DeliveryRecord | None:
        self.reads += 1
        if self.reads <= self.outage:
            raise redis.ConnectionError("Connection refused")
        return super().get(delivery_id)


def test_ledger_wait_rides_out_connection_errors_and_returns_each_result() -> None:
    ledger = FlakyLedger(outage=5)
    for d in ("a", "b", "c"):
        ledger.create(d, channel="sms", provider="smspartner", idempotency_key=None)
    ledger.transition("a", "sent", result='{"status": "sent", "delivery_id": "a"}')
    ledger.transition("b", "failed", result='{"status": "failed", "delivery_id": "b"}')
    ledger.transition("c", "parked", result='{"status": "parked", "delivery_id": "c"}')
    clock = [0.0]
    got = wait_for_results(
        ledger,
        ["a", "b", "c"],
        timeout_s=30,
        clock=lambda: clock[0],
        sleep=lambda s: clock.__setitem__(0, clock[0] + s),
    )
    assert {d: r["status"] for d, r in got.items()} == {"a": "sent", "b": "failed", "c": "parked"}
    assert ledger.reads > 5


def test_ledger_wait_times_out_with_what_settled_and_what_did_not() -> None:
    ledger = MemoryLedger()
    for d in ("a", "b"):
        ledger.create(d, channel="sms", provider="smspartner", idempotency_key=None)
    ledger.transition("a", "sent", result='{"status": "sent"}')
    ledger.transition("b", "parked", result='{"status": "parked"}')
    clock = [0.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        clock[0] += s

    with pytest.raises(WaitTimeout) as caught:
        wait_for_results(
            ledger, ["a", "b", "zz"], 10, parked=False, clock=lambda: clock[0], sleep=sleep
        )
    assert caught.value.pending == {"b": "parked", "zz": "missing"}
    assert set(caught.value.settled) == {"a"}
    assert sleeps[0] == pytest.approx(0.05) and max(sleeps) <= 1.0  # backs off to 1 s
    assert clock[0] == pytest.approx(10)


def test_the_schedule_mover_starts_on_sentinel_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mover's ledger and broker-backlog clients and its publishing app, all on sentinel://
    URLs (it built ``redis.Redis.from_url``, which refuses them, and the worker died at
    start). Nothing connects here: the clients ask the sentinels on first use."""
    from redis.sentinel import SentinelConnectionPool

    import worker.redis_client
    from worker.config import get_settings
    from worker.scheduling.mover import MoverStep

    monkeypatch.setenv("DELIVERY_BROKER_URL", SENTINELS)
    monkeypatch.setenv("DELIVERY_RESULT_BACKEND", SENTINELS.replace("/2;", "/3;"))
    monkeypatch.setenv("DELIVERY_REDIS_MASTER_NAME", "dw-master")
    get_settings.cache_clear()
    started: list[Any] = []
    monkeypatch.setattr(
        "worker.scheduling.mover.ScheduleMover.start", lambda self: started.append(self)
    )
    brokers: list[redis.Redis] = []
    real_broker_redis = worker.redis_client.broker_redis

    def broker_redis(settings: Any, **kwargs: Any) -> redis.Redis:
        brokers.append(real_broker_redis(settings, **kwargs))
        return brokers[-1]

    monkeypatch.setattr(worker.redis_client, "broker_redis", broker_redis)
    try:
        step = MoverStep(parent=None)
        step.start(parent=None)
    finally:
        get_settings.cache_clear()
    assert step.mover is not None and started == [step.mover]
    pool = step.mover.ledger.redis.connection_pool  # type: ignore[attr-defined]
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "dw-master"
    assert step.mover.app.conf.broker_transport_options["master_name"] == "dw-master"
    (broker,) = brokers  # the queue lengths, read on the broker's current master
    assert isinstance(broker.connection_pool, SentinelConnectionPool)
    assert broker.connection_pool.connection_kwargs["db"] == 2
