"""The lanes' take order and lease against a real redis-server (``worker.lanes``)."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
import redis

from worker.lanes import Lanes, parse_weights
from worker.models import InvalidMessage
from worker.providers import parse_message
from worker.stores.keys import Keys

KEYS = Keys("lanetest")
EMAIL = {
    "provider": "postal",
    "to": [{"email": "ada@example.com"}],
    "from": {"email": "shop@example.org"},
    "subject": "s",
    "text": "t",
}


@pytest.fixture
def lanes(redis_client: redis.Redis) -> Lanes:
    redis_client.flushdb()
    return Lanes(redis_client, KEYS, lane_weights="normal=4,bulk=1", tenant_weights="")


def put(client: redis.Redis, lanes: Lanes, delivery_id: str, priority: str, tenant: str) -> None:
    client.hset(
        KEYS.delivery(delivery_id),
        mapping={"task_name": "tasks.send_email", "message": json.dumps(EMAIL)},
    )
    lanes.push(delivery_id, priority, tenant)


def test_high_first_then_normal_and_bulk_by_weight(redis_client: redis.Redis, lanes: Lanes) -> None:
    for i in range(50):
        put(redis_client, lanes, f"b{i}", "bulk", "default")
        put(redis_client, lanes, f"n{i}", "normal", "default")
    put(redis_client, lanes, "h0", "high", "default")
    taken = lanes.take(11)
    assert taken[0].delivery_id == "h0"
    assert taken[0].message == EMAIL and taken[0].task_name == "tasks.send_email"
    shares = Counter(t.priority for t in taken[1:])
    assert shares == {"normal": 8, "bulk": 2}
    # Within a lane, first in first out.
    assert [t.delivery_id for t in taken if t.priority == "bulk"] == ["b0", "b1"]


def test_tenants_share_a_priority_by_weight(redis_client: redis.Redis) -> None:
    redis_client.flushdb()
    lanes = Lanes(redis_client, KEYS, tenant_weights="big=1,vip=3")
    for i in range(100):
        put(redis_client, lanes, f"a{i}", "bulk", "big")
    for i in range(30):
        put(redis_client, lanes, f"v{i}", "bulk", "vip")
    for i in range(10):
        put(redis_client, lanes, f"s{i}", "bulk", "small")
    taken = lanes.take(25)
    assert Counter(t.tenant for t in taken) == {"vip": 15, "big": 5, "small": 5}
    # The small one empties its lane: it leaves the round robin.
    rest = lanes.take(200)
    assert len(taken) + len(rest) == 140
    assert redis_client.smembers(KEYS.lane_tenants("bulk")) == set()


def test_a_lease_not_done_goes_back_to_its_lane(redis_client: redis.Redis, lanes: Lanes) -> None:
    put(redis_client, lanes, "x1", "normal", "acme")
    put(redis_client, lanes, "x2", "normal", "acme")
    first = lanes.take(1, now=1000.0)
    assert [t.delivery_id for t in first] == ["x1"]
    # Not published (the dispatcher died): after the lease it is taken again, first.
    again = lanes.take(2, now=1000.0 + lanes.lease_s + 1)
    assert [t.delivery_id for t in again] == ["x1", "x2"]
    lanes.done(again)
    assert redis_client.zcard(KEYS.lane_taken) == 0
    assert lanes.take(5) == []


def test_taken_not_published_counts_as_queued(redis_client: redis.Redis, lanes: Lanes) -> None:
    for i in range(5):
        put(redis_client, lanes, f"q{i}", "normal", "default")
    held = lanes.take(2)
    assert len(held) == 2
    assert lanes.take(2) == []  # two taken by another dispatcher fill a room of two
    lanes.done(held)
    assert len(lanes.take(2)) == 2


def test_push_twice_keeps_its_place(redis_client: redis.Redis, lanes: Lanes) -> None:
    put(redis_client, lanes, "k1", "bulk", "default")
    put(redis_client, lanes, "k2", "bulk", "default")
    lanes.push("k1", "bulk", "default")
    assert [d.depth for d in lanes.depths()] == [2]
    assert [t.delivery_id for t in lanes.take(2)] == ["k1", "k2"]


def chunk(lanes: Lanes, task_id: str, size: int, priority: str, tenant: str) -> None:
    items = [{"id": f"{task_id}-{i}", "message": EMAIL} for i in range(size)]
    lanes.push_chunk(
        task_id, "tasks.send_chunk", {"channel": "email", "items": items}, size, priority, tenant
    )


def test_a_chunk_is_one_entry_published_under_its_task_id(
    redis_client: redis.Redis, lanes: Lanes
) -> None:
    chunk(lanes, "c1", 3, "bulk", "acme")
    assert [(d.priority, d.tenant, d.depth) for d in lanes.depths()] == [("bulk", "acme", 1)]
    [taken] = lanes.take(5)
    assert taken.chunk and taken.task_id == "c1" and taken.task_name == "tasks.send_chunk"
    assert [item["id"] for item in taken.message["items"]] == ["c1-0", "c1-1", "c1-2"]
    assert taken.message["channel"] == "email"
    # The lane holds the entry only; the message waits beside it until the publish.
    assert redis_client.exists(KEYS.lane_chunk_prefix + "c1")
    lanes.done([taken])
    assert not redis_client.exists(KEYS.lane_chunk_prefix + "c1")
    assert redis_client.zcard(KEYS.lane_taken) == 0


def test_a_chunk_not_published_goes_back_whole(redis_client: redis.Redis, lanes: Lanes) -> None:
    chunk(lanes, "c1", 2, "bulk", "default")
    chunk(lanes, "c2", 2, "bulk", "default")
    first = lanes.take(1, now=1000.0)
    assert [t.task_id for t in first] == ["c1"]
    # Its dispatcher died before the publish: after the lease it comes back first, whole.
    again = lanes.take(2, now=1000.0 + lanes.lease_s + 1)
    assert [t.task_id for t in again] == ["c1", "c2"]
    assert [len(t.message["items"]) for t in again] == [2, 2]


def test_a_chunk_counts_by_its_size_between_tenants(
    redis_client: redis.Redis, lanes: Lanes
) -> None:
    for i in range(4):
        chunk(lanes, f"big{i}", 10, "bulk", "big")
    for i in range(40):
        put(redis_client, lanes, f"s{i}", "bulk", "small")
    taken = lanes.take(30)
    # Equal weights, by messages: one chunk of 10, then the small tenant's next 10 singles.
    order = ["big" if t.chunk else "small" for t in taken]
    assert (
        order[:12] == ["big"] + ["small"] * 10 + ["big"]
        or order[:12] == ["small"] + ["big"] + ["small"] * 10
    )
    sent = Counter()
    for t in taken:
        sent[t.tenant] += len(t.message["items"]) if t.chunk else 1
    assert abs(sent["big"] - sent["small"]) <= 10


def test_a_bulk_chunk_counts_by_its_size_against_normal(
    redis_client: redis.Redis, lanes: Lanes
) -> None:
    for i in range(3):
        chunk(lanes, f"b{i}", 8, "bulk", "default")
    for i in range(60):
        put(redis_client, lanes, f"n{i}", "normal", "default")
    taken = lanes.take(34)
    messages = Counter()
    for t in taken:
        messages[t.priority] += len(t.message["items"]) if t.chunk else 1
    # normal=4, bulk=1 in messages: one chunk of 8 for every 32 normal ones.
    assert messages == {"normal": 32, "bulk": 16} or messages == {"normal": 33, "bulk": 8}


def test_a_high_single_overtakes_waiting_chunks(redis_client: redis.Redis, lanes: Lanes) -> None:
    for i in range(5):
        chunk(lanes, f"b{i}", 500, "bulk", "default")
    first = lanes.take(1)
    assert [t.task_id for t in first] == ["b0"]
    lanes.done(first)
    put(redis_client, lanes, "otp", "high", "default")
    assert [t.delivery_id for t in lanes.take(1)] == ["otp"]


def test_a_delivery_sent_back_keeps_its_place_and_its_lane_waits_until_due(
    redis_client: redis.Redis, lanes: Lanes
) -> None:
    for delivery_id, priority, tenant in (
        ("h1", "high", "acme"),
        ("h2", "high", "acme"),
        ("z1", "high", "zeta"),
        ("b1", "bulk", "acme"),
    ):
        put(redis_client, lanes, delivery_id, priority, tenant)
        provider = "postal" if delivery_id in ("h1", "h2", "a1") else "mailpartner"
        redis_client.hset(KEYS.delivery(delivery_id), "provider", provider)
    put(redis_client, lanes, "a1", "high", "another")
    redis_client.hset(KEYS.delivery("a1"), "provider", "postal")
    assert [t.delivery_id for t in lanes.take(1, now=1000.0)] == ["h1"]
    redis_client.delete(KEYS.lane_taken)
    # The limiter sent h1 (to postal) back, due at 1010: to the front of its lane, and high work
    # for postal waits (another tenant's too: one budget, one wait).
    assert lanes.send_back("h1", "high", "acme", 1010.0, now=1001.0)
    # Passed over until due (high for another provider first, then bulk); nothing taken from it.
    assert [t.delivery_id for t in lanes.take(5, now=1005.0)] == ["z1", "b1"]
    redis_client.delete(KEYS.lane_taken)
    assert lanes.take(5, now=1009.0) == []
    assert [(d.priority, d.tenant, d.depth) for d in lanes.depths()] == [
        ("high", "acme", 2),
        ("high", "another", 1),
    ]
    # Due: taken again, in its place (before h2), the other tenant's in turn.
    taken = lanes.take(5, now=1010.0)
    assert sorted(t.delivery_id for t in taken) == ["a1", "h1", "h2"]
    assert [t.delivery_id for t in taken if t.tenant == "acme"] == ["h1", "h2"]
    lanes.done(taken)
    assert lanes.depths() == []
    assert redis_client.exists(KEYS.lane_due) == 0  # passed: the take removed it


def test_send_back_puts_a_delivery_in_its_lane_due_later(redis_client: redis.Redis) -> None:
    from types import SimpleNamespace

    from worker.lanes import send_back
    from worker.stores import RedisLedger

    redis_client.flushdb()
    ledger = RedisLedger(redis_client, keys=KEYS)
    on = SimpleNamespace(lanes=True, lane_weights="normal=4,bulk=1", tenant_weights="")
    before = time.time()
    assert send_back(ledger, on, "d1", {**EMAIL, "priority": "bulk", "tenant": "acme"}, 2.0)
    assert redis_client.zscore(KEYS.lane("bulk", "acme"), "d1") is not None
    due = float(redis_client.hget(KEYS.lane_due, "bulk:") or 0)  # no record: no provider
    assert before + 2.0 <= due <= time.time() + 2.0
    off = SimpleNamespace(lanes=False)
    assert not send_back(RedisLedger(redis_client, keys=Keys("other")), off, "d2", EMAIL, 1.0)
    assert redis_client.zscore(Keys("other").lane("normal", "default"), "d2") is None


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"priority": "urgent"}, "priority"),
        ({"tenant": "a b"}, "tenant"),
        ({"tenant": "ada@example.com"}, "tenant"),
        ({"tenant": "t" * 65}, "tenant"),
    ],
)
def test_bad_priority_or_tenant_is_refused_naming_the_field(
    extra: dict[str, str], field: str
) -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_message("email", {**EMAIL, **extra})
    assert [e["field"] for e in info.value.errors] == [field]


def test_absent_fields_are_normal_and_the_default_tenant() -> None:
    message = parse_message("email", EMAIL)
    assert (message.lane, message.tenant_key) == ("normal", "default")


def test_weights_setting_is_checked() -> None:
    assert parse_weights("normal=4, bulk=1") == {"normal": 4, "bulk": 1}
    for bad in ("normal", "normal=0", "normal=x", "a b=1"):
        with pytest.raises(ValueError):
            parse_weights(bad)


def test_the_dispatcher_publishes_a_chunk_after_what_it_publishes_next(
    redis_client: redis.Redis, lanes: Lanes, redis_url: str
) -> None:
    from worker.app import client_app
    from worker.lanes.dispatcher import _lengths, broker_lists, dispatch_once

    app = client_app(redis_url + "/15", redis_url + "/15", name="lanetest")
    queue = str(app.conf.task_default_queue)
    lists = broker_lists(queue)

    def backlog() -> int:
        return _lengths(redis_client, lists)

    try:
        chunk(lanes, "c1", 2, "bulk", "default")
        assert dispatch_once(app, lanes, backlog, 2) == 1
        # The chunk waits in the step a worker reads last; the backlog counts it.
        assert [redis_client.llen(name) for name in lists] == [0, 1]
        assert backlog() == 1
        assert not redis_client.exists(KEYS.lane_chunk_prefix + "c1")
        put(redis_client, lanes, "otp", "high", "default")
        assert dispatch_once(app, lanes, backlog, 2) == 1
        assert [redis_client.llen(name) for name in lists] == [1, 1]
        # A consumer reads the queue's own list first: the code before the chunk.
        with app.connection_for_read() as conn:
            simple = conn.SimpleQueue(queue, no_ack=True)
            first = simple.get(timeout=5)
            second = simple.get(timeout=5)
            simple.close()
        assert first.headers["id"] == "otp"
        assert second.headers["id"] == "c1" and second.headers["task"] == "tasks.send_chunk"
        assert dispatch_once(app, lanes, backlog, 2) == 0  # nothing left in the lanes
    finally:
        app.close()


def test_only_a_task_from_the_lanes_queue_is_sent_back_into_a_lane() -> None:
    """A message published to a queue of its own (``queue=``) never waited in a lane: sent back
    into one, the dispatcher would publish it to the default queue, which its workers may not
    read. It retries through the broker on its own queue instead."""
    from types import SimpleNamespace

    from tasks import _from_the_lanes_queue
    from worker.app import app

    default = app.conf.task_default_queue

    def task(delivery_info: dict[str, str] | None) -> SimpleNamespace:
        return SimpleNamespace(app=app, request=SimpleNamespace(delivery_info=delivery_info))

    assert _from_the_lanes_queue(task({"exchange": "", "routing_key": default}))
    assert not _from_the_lanes_queue(task({"exchange": "", "routing_key": "reports"}))
    assert not _from_the_lanes_queue(task(None))  # run eagerly or by hand: no broker delivery
