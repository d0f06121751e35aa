"""The producer against a real redis-server: invalid messages never reach the broker."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from worker.app import client_app
from worker.models import InvalidMessage
from worker.producer import Producer
from worker.redaction import redacted_repr
from worker.stores import RedisLedger

QUEUE = "delivery"
EMAIL = {
    "provider": "postal",
    "to": [{"email": "ada.lovelace@example.com", "name": "Ada"}],
    "from": {"email": "shop@example.org"},
    "subject": "Order 1042",
    "html": "<p>secret body</p>",
}


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{redis_url}/14")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def app(redis_url: str, broker: redis.Redis) -> Celery:
    return client_app(f"{redis_url}/14", f"{redis_url}/13", name="producer-tests")


@pytest.fixture
def producer(app: Celery, redis_client: redis.Redis) -> Producer:
    # Published directly: these tests read the broker queue (the lanes: test_lanes.py).
    return Producer(app=app, ledger=RedisLedger(redis_client), lanes=False)


def queued(broker: redis.Redis) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in broker.lrange(QUEUE, 0, -1)]


@pytest.mark.parametrize(
    ("channel", "message", "field"),
    [
        ("email", {**EMAIL, "to": [{"email": "not-an-address"}]}, "to.0.email"),
        ("email", {**EMAIL, "html": None}, "html"),
        ("sms", {"provider": "smspartner", "to": ["+33612345678"], "text": ""}, "text"),
        ("sms", {"provider": "smspartner", "to": ["0612"], "text": "hi"}, "to.0"),
        (
            "voice",
            {"provider": "voicepartner", "mode": "voicemail", "to": ["+33612345678"]},
            "audio_token",
        ),
        ("email", "not a dict", "message"),
    ],
)
def test_invalid_message_is_refused_and_nothing_reaches_redis(
    producer: Producer,
    broker: redis.Redis,
    redis_client: redis.Redis,
    channel: str,
    message: object,
    field: str,
) -> None:
    with pytest.raises(InvalidMessage) as info:
        producer.enqueue(channel, message)
    assert field in [e["field"] for e in info.value.errors]
    assert field in str(info.value)
    assert broker.dbsize() == 0
    assert redis_client.dbsize() == 0


def test_valid_message_is_published_normalised_with_a_redacted_argsrepr(
    producer: Producer, broker: redis.Redis
) -> None:
    result = producer.enqueue("email", EMAIL)
    messages = queued(broker)
    assert len(messages) == 1
    headers = messages[0]["headers"]
    assert isinstance(headers, dict)
    assert headers["task"] == "tasks.send_email"
    assert headers["id"] == result.id
    assert "ada.lovelace" not in headers["argsrepr"]
    assert "secret body" not in headers["argsrepr"]
    assert "a***@example.com" in headers["argsrepr"]
    record = producer.ledger.get(result.id)
    assert record is not None and record.state == "queued"


def test_same_idempotency_key_enqueues_once(producer: Producer, broker: redis.Redis) -> None:
    first = producer.enqueue("email", {**EMAIL, "idempotency_key": "order-1042"})
    second = producer.enqueue("email", {**EMAIL, "idempotency_key": "order-1042"})
    assert first.id == second.id
    assert len(queued(broker)) == 1


def test_failed_publish_forgets_the_delivery(
    redis_client: redis.Redis,
) -> None:
    dead = client_app("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/1", name="dead")
    dead.conf.broker_connection_retry = False
    dead.conf.broker_connection_max_retries = 0
    dead.conf.broker_transport_options = {"max_retries": 0}
    producer = Producer(app=dead, ledger=RedisLedger(redis_client), lanes=False)
    with pytest.raises(Exception):
        producer.enqueue("email", {**EMAIL, "idempotency_key": "k1"})
    assert redis_client.dbsize() == 0


def test_with_lanes_a_message_waits_in_its_lane_not_the_broker(
    app: Celery, broker: redis.Redis, redis_client: redis.Redis
) -> None:
    from worker.lanes import Lanes

    producer = Producer(app=app, ledger=RedisLedger(redis_client), lanes=True)
    plain = producer.enqueue("email", EMAIL)
    urgent = producer.enqueue("email", {**EMAIL, "priority": "high", "tenant": "acme"})
    assert queued(broker) == []
    lanes = Lanes(redis_client)
    by_lane = {(d.priority, d.tenant): d.depth for d in lanes.depths()}
    assert by_lane == {("high", "acme"): 1, ("normal", "default"): 1}
    taken = lanes.take(5)
    assert [t.delivery_id for t in taken] == [urgent.id, plain.id]
    # Celery options (a queue) publish directly, as before.
    direct = producer.enqueue("email", EMAIL, queue=QUEUE)
    assert [m["headers"]["id"] for m in queued(broker)] == [direct.id]


def test_with_lanes_a_failed_push_forgets_the_delivery(
    app: Celery, redis_client: redis.Redis
) -> None:
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0")
    ledger = RedisLedger(redis_client)
    producer = Producer(app=app, ledger=ledger, lanes=True)
    from worker.lanes import Lanes

    producer._lanes = Lanes(dead)
    with pytest.raises(redis.ConnectionError):
        producer.enqueue("email", {**EMAIL, "idempotency_key": "k2"})
    assert redis_client.dbsize() == 0


def test_redacted_repr_hides_bodies_and_addresses() -> None:
    text = redacted_repr(
        "sms", {"provider": "smspartner", "to": ["+33612345678"], "text": "code 1234"}
    )
    assert "+33612345678" not in text
    assert "1234" not in text
    assert "smspartner" in text


def nested(levels: int) -> object:
    value: object = "x"
    for _ in range(levels):
        value = {"a": value}
    return value


def test_producer_refuses_over_the_limits_and_nothing_reaches_redis(
    redis_client: redis.Redis, producer: Producer, broker: redis.Redis
) -> None:
    deep = {"provider": "smspartner", "to": ["+33612345678"], "text": "hi", "tag": nested(400)}
    with pytest.raises(InvalidMessage, match="nesting depth 403 exceeds the limit of 32"):
        producer.enqueue("sms", deep)
    assert broker.dbsize() == 0
    assert redis_client.dbsize() == 0
