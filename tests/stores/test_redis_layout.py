"""The Redis key layout of the ledger, parking and metrics: deployed data must still read.

Each test writes through a store and reads the raw keys, or writes raw data as earlier
releases did and reads it through the store.
"""

from __future__ import annotations

import json

import redis

from worker.stores.health import RedisHealthStore
from worker.stores.hotpath import Closing, RedisHotPath
from worker.stores.hotpath.base import TrackingArgs
from worker.stores.hotpath.redis import BEGIN_LUA, FINISH_LUA
from worker.stores.ledger import ACTIVE_KEY, DEAD_KEY, RedisLedger
from worker.stores.ledger.redis import SCHEDULE_KEY
from worker.stores.metrics import RedisMetrics
from worker.stores.parking import RedisParking
from worker.stores.tracking import RedisTrackingStore, Tracked

from ._support import FakeClock

T0 = 1_700_000_000.5


def test_ledger_keys(redis_client: redis.Redis) -> None:
    clock = FakeClock(T0)
    ledger = RedisLedger(redis_client, clock=clock)
    ledger.create("d1", channel="sms", provider="smspartner", idempotency_key="k")
    assert redis_client.hgetall("dw:delivery:d1") == {
        b"state": b"queued",
        b"created_at": repr(T0).encode(),
        b"updated_at": repr(T0).encode(),
        b"channel": b"sms",
        b"provider": b"smspartner",
        b"attempts": b"0",
        b"throttled": b"0",
        b"idempotency_key": b"k",
    }
    assert 14 * 24 * 3600 - 5 <= redis_client.ttl("dw:delivery:d1") <= 14 * 24 * 3600
    assert redis_client.get("dw:idem:sms:k") == b"d1"
    assert 0 < redis_client.ttl("dw:idem:sms:k") <= 14 * 24 * 3600
    assert redis_client.zrange(ACTIVE_KEY, 0, -1, withscores=True) == [(b"d1", T0)]
    assert ACTIVE_KEY == "dw:active"

    assert ledger.lock("d1", "tok", 5.0) == 0.0
    assert redis_client.get("dw:lock:d1") == b"tok"

    ledger.note_tag_use("smspartner", "promo", ["+33612345678"], "d1", T0)
    assert redis_client.zrange("dw:tag:smspartner:promo", 0, -1, withscores=True) == [
        (b"+33612345678|d1", T0)
    ]

    ledger.transition("d1", "sending")
    assert ledger.bury("d1", reason="r", task_name="tasks.send_sms", message={"a": 1})
    raw = redis_client.hget(DEAD_KEY, "d1")
    assert DEAD_KEY == "dw:dead"
    assert raw is not None
    assert json.loads(raw) == {
        "task_name": "tasks.send_sms",
        "message": {"a": 1},
        "reason": "r",
        "at": T0,
    }
    assert redis_client.zrange(ACTIVE_KEY, 0, -1) == []


def test_a_record_written_by_an_earlier_release_reads(redis_client: redis.Redis) -> None:
    redis_client.hset(
        "dw:delivery:old",
        mapping={
            "state": "sent",
            "created_at": "1700000000.25",
            "updated_at": "1700000001.5",
            "channel": "email",
            "provider": "postal",
            "attempts": "1",
            "throttled": "2",
            "result": json.dumps({"status": "sent"}),
        },
    )
    redis_client.set("dw:idem:email:order-9", "old")
    record = RedisLedger(redis_client).get("old")
    assert record is not None
    assert (record.state, record.final, record.created_at, record.attempts, record.throttled) == (
        "sent",
        True,
        1700000000.25,
        1,
        2,
    )
    assert record.result == {"status": "sent"}
    again = RedisLedger(redis_client).create(
        "new", channel="email", provider="postal", idempotency_key="order-9"
    )
    assert again == ("old", False)


def test_parking_keys(redis_client: redis.Redis) -> None:
    RedisParking(redis_client, clock=FakeClock(T0)).park(
        "postal", "d1", "tasks.send_email", {"a": 1}
    )
    raw = redis_client.hget("dw:parked:postal", "d1")
    assert raw is not None
    assert json.loads(raw) == {
        "task_name": "tasks.send_email",
        "message": {"a": 1},
        "parked_at": T0,
    }
    assert redis_client.ttl("dw:parked:postal") == -1  # waits for the resume, no expiry
    # An entry parked by an earlier release:
    redis_client.hset(
        "dw:parked:postal",
        "d0",
        json.dumps({"task_name": "tasks.send_email", "message": {"b": 2}, "parked_at": 1.0}),
    )
    taken = RedisParking(redis_client).take_all("postal")
    assert [(t.delivery_id, t.message) for t in taken] == [("d0", {"b": 2}), ("d1", {"a": 1})]
    assert redis_client.exists("dw:parked:postal") == 0


def test_metrics_keys(redis_client: redis.Redis) -> None:
    RedisMetrics(redis_client).incr("smspartner", "throttled_ms", 120)
    assert redis_client.hgetall("dw:metrics:smspartner") == {b"throttled_ms": b"120"}
    redis_client.hincrby("dw:metrics:smspartner", "sent", 4)  # as an earlier release wrote it
    assert RedisMetrics(redis_client).read("smspartner") == {"throttled_ms": 120, "sent": 4}


def test_balances_key(redis_client: redis.Redis) -> None:
    from worker.stores.balances import RecordedBalance, RedisBalances

    store = RedisBalances(redis_client)
    store.record(RecordedBalance("voicepartner", 19.0, "money", "€", T0))
    raw = redis_client.hget("dw:balances", "voicepartner")
    assert raw is not None
    assert json.loads(raw) == {"amount": 19.0, "unit": "money", "currency": "€", "checked_at": T0}
    # As this release writes it, a later one must read it.
    redis_client.hset(
        "dw:balances",
        "smspartner",
        '{"amount": 120, "unit": "credits", "currency": "", "checked_at": 1700000000.5}',
    )
    assert store.read_all()["smspartner"] == RecordedBalance("smspartner", 120.0, "credits", "", T0)


def test_tracking_keys(redis_client: redis.Redis) -> None:
    from worker.stores.tracking import OUTBOX_KEY, POLL_KEY
    from worker.tracking import DeliveryEvent, EventType

    store = RedisTrackingStore(redis_client, clock=FakeClock(T0))
    store.register(
        "d1",
        "smspartner",
        [Tracked("+3361****78", "77", "+33612345678")],
        at=T0,
        poll_at=T0 + 30,
        notify=True,
    )
    assert redis_client.hgetall("dw:track:msg:smspartner:77") == {b"+3361****78": b"d1"}
    state = redis_client.hgetall("dw:track:state:d1")
    assert state[b"~provider"] == b"smspartner"
    assert json.loads(state[b"+3361****78"])["state"] == "sent"
    assert redis_client.smembers("dw:track:seen:d1") == {b"send:d1:+3361****78"}
    assert json.loads(redis_client.lrange("dw:track:hist:d1", 0, -1)[0])["type"] == "sent"
    (entry,) = redis_client.lrange("dw:track:out:d1", 0, -1)
    assert entry[:6] == b"sent\n{"
    assert (OUTBOX_KEY, POLL_KEY) == ("dw:track:outbox", "dw:track:poll")
    assert redis_client.zrange(OUTBOX_KEY, 0, -1, withscores=True) == [(b"d1", T0)]
    assert redis_client.zrange(POLL_KEY, 0, -1, withscores=True) == [(b"d1", T0 + 30)]
    watch = redis_client.hgetall("dw:track:watch:d1")
    assert watch[b"provider"] == b"smspartner" and watch[b"polls"] == b"0"
    assert json.loads(watch[b"recipients"]) == [
        {"recipient": "+3361****78", "provider_message_id": "77", "lookup": "+33612345678"}
    ]
    for key in ("msg:smspartner:77", "state:d1", "hist:d1", "seen:d1", "out:d1", "watch:d1"):
        assert 14 * 24 * 3600 - 5 <= redis_client.ttl(f"dw:track:{key}") <= 14 * 24 * 3600
    store.apply(
        [
            DeliveryEvent(
                event_id="e",
                type=EventType.DELIVERED,
                provider="smspartner",
                provider_message_id="99",
                occurred_at=T0,
                source="webhook",
            )
        ],
        notify=True,
    )
    assert redis_client.llen("dw:track:orphan:smspartner:99") == 1
    assert 0 < redis_client.ttl("dw:track:orphan:smspartner:99") <= 600
    assert store.outbox_lock("d1", "tok", 5)
    assert redis_client.get("dw:track:outlock:d1") == b"tok"


def test_schedule_keys(redis_client: redis.Redis) -> None:
    ledger = RedisLedger(redis_client, clock=FakeClock(T0))
    ledger.create(
        "d1", channel="sms", provider="smspartner", extra={"task_name": "t", "message": "{}"}
    )
    ledger.hold("d1", T0 + 30.25)
    assert SCHEDULE_KEY == "dw:scheduled"
    assert redis_client.zrange("dw:scheduled", 0, -1, withscores=True) == [(b"d1", T0 + 30.25)]
    assert redis_client.hget("dw:delivery:d1", "state") == b"scheduled"
    assert redis_client.zscore("dw:active", "d1") is None
    ledger.claim_due(T0 + 31, 10.0)
    assert redis_client.hgetall("dw:scheduled:claims") == {b"d1": b"1"}
    assert redis_client.zscore("dw:scheduled", "d1") == T0 + 41  # leased
    ledger.cancel("d1", result="{}")
    assert redis_client.exists("dw:scheduled", "dw:scheduled:claims") == 0
    assert redis_client.hget("dw:delivery:d1", "state") == b"cancelled"


def test_hot_path_writes_only_the_stores_keys(redis_client: redis.Redis) -> None:
    """``begin.lua`` and ``finish.lua`` (worker.stores.hotpath) own no key: a run through them
    leaves exactly the keys the ledger, metrics, tracking and guard stores define."""
    clock = FakeClock(T0)
    ledger = RedisLedger(redis_client, clock=clock)
    health = RedisHealthStore(redis_client)
    tracking = RedisTrackingStore(redis_client, clock=clock)
    hot = RedisHotPath(
        redis_client, health=health, metrics=RedisMetrics(redis_client), tracking=tracking
    )
    ledger.create("d1", channel="sms", provider="smspartner")
    redis_client.hset("dw:main:d1", "w1", 1)
    begun = hot.begin("d1", "tok", 5.0, providers=["smspartner"], mark=("dw:main:d1", "w1"))
    assert begun.status == "run"
    assert redis_client.get("dw:lock:d1") == b"tok"
    assert redis_client.hget("dw:delivery:d1", "runs_unfinished") == b"1"
    assert redis_client.exists("dw:main:d1") == 0
    closing = Closing(
        "sent",
        {"sent_at": repr(T0), "attempts": "1", "result": "{}"},
        "smspartner",
        "sent",
        True,
        TrackingArgs("smspartner", [Tracked("+3361****78", "77", None)], T0, T0 + 60, False),
    )
    hot.finish("d1", "tok", reset_runs=True, closing=closing)
    assert sorted(k.decode() for k in redis_client.keys("*")) == [
        "dw:delivery:d1",
        "dw:metrics:smspartner",
        "dw:track:hist:d1",
        "dw:track:msg:smspartner:77",
        "dw:track:poll",
        "dw:track:seen:d1",
        "dw:track:state:d1",
        "dw:track:watch:d1",
    ]
    assert redis_client.hget("dw:delivery:d1", "state") == b"sent"
    assert redis_client.hget("dw:delivery:d1", "runs_unfinished") == b"0"
    assert redis_client.hgetall("dw:metrics:smspartner") == {b"sent": b"1"}
    assert redis_client.hgetall("dw:track:msg:smspartner:77") == {b"+3361****78": b"d1"}


def test_hot_path_scripts_ship_with_the_store() -> None:
    assert "HDEL" in BEGIN_LUA and "runs_unfinished" in BEGIN_LUA
    # finish.lua runs the stores' own scripts, composed in unchanged.
    for name in ("transition", "register", "apply"):
        assert f"local function {name}(KEYS, ARGV)" in FINISH_LUA
    # release.lua's compare-and-delete: the compare is finish.lua's first step, then the delete.
    assert "redis.call('GET', KEYS[3]) ~= ARGV[1]" in FINISH_LUA
    assert "redis.call('DEL', KEYS[3])" in FINISH_LUA
