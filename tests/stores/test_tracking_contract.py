"""The tracking store contract, run against the memory and the Redis implementation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.stores.tracking import (
    HISTORY_CAP,
    MemoryTrackingStore,
    RedisTrackingStore,
    Tracked,
    TrackingStore,
    notification,
)
from worker.tracking import DeliveryEvent, EventType, advances

from ._support import FakeClock

T0 = 1_700_000_000.0


@dataclass
class Harness:
    store: TrackingStore
    clock: FakeClock
    fresh: object


@pytest.fixture(params=["memory", "redis"])
def h(request: pytest.FixtureRequest) -> Iterator[Harness]:
    clock = FakeClock(T0)
    if request.param == "memory":
        yield Harness(MemoryTrackingStore(clock), clock, lambda: MemoryTrackingStore(clock))
    else:
        client: redis.Redis = request.getfixturevalue("redis_client")

        def fresh() -> TrackingStore:
            client.flushdb()
            return RedisTrackingStore(client, clock=clock)

        yield Harness(RedisTrackingStore(client, clock=clock), clock, fresh)


def ev(
    kind: EventType,
    event_id: str,
    *,
    pmid: str = "m1",
    recipient: str | None = None,
    delivery_id: str | None = None,
    provider: str = "postal",
    at: float = T0,
) -> DeliveryEvent:
    return DeliveryEvent(
        event_id=event_id,
        type=kind,
        provider=provider,
        provider_message_id=pmid,
        delivery_id=delivery_id,
        recipient=recipient,
        occurred_at=at,
        source="webhook",
    )


def register(
    store: TrackingStore,
    delivery_id: str = "d1",
    recipients: list[Tracked] | None = None,
    poll_at: float | None = None,
) -> None:
    tracked = recipients or [Tracked("a***@example.com", "m1")]
    store.register(delivery_id, "postal", tracked, at=T0, poll_at=poll_at, notify=True)


def state(
    store: TrackingStore, delivery_id: str = "d1", recipient: str = "a***@example.com"
) -> str:
    found = store.status(delivery_id)
    assert found is not None
    return found.recipients[recipient].state.value


def test_register_records_sent_and_a_history(h: Harness) -> None:
    register(h.store)
    found = h.store.status("d1")
    assert found is not None
    assert found.provider == "postal"
    assert state(h.store) == "sent"
    assert [e["type"] for e in found.history] == ["sent"]
    assert found.history[0]["source"] == "send"
    assert h.store.status("nope") is None


def test_forward_only_and_dedupe(h: Harness) -> None:
    register(h.store)
    done = h.store.apply(
        [ev(EventType.DELIVERED, "e1"), ev(EventType.DELIVERED, "e1")], notify=True
    )
    assert (len(done.new), done.duplicates, done.moved) == (1, 1, 1)
    late = h.store.apply([ev(EventType.SENT, "e0")], notify=True)
    assert (len(late.new), late.moved) == (1, 0)
    assert state(h.store) == "delivered"
    bounce = h.store.apply([ev(EventType.BOUNCED, "e2")], notify=True)
    assert bounce.moved == 1
    assert state(h.store) == "bounced"
    found = h.store.status("d1")
    assert found is not None
    assert [e["type"] for e in found.history] == ["sent", "delivered", "sent", "bounced"]


def test_outbox_in_order_with_state_after(h: Harness) -> None:
    register(h.store)
    h.store.apply([ev(EventType.DELIVERED, "e1"), ev(EventType.SENT, "e0")], notify=True)
    h.store.apply([ev(EventType.UNKNOWN, "e9")], notify=True)  # history only
    entries = h.store.outbox("d1", 10)
    out = [notification(e) for e in entries]
    assert [(n["type"], n["current_state"]) for n in out if n] == [
        ("sent", "sent"),
        ("delivered", "delivered"),
        ("sent", "delivered"),
    ]
    assert h.store.outbox_pending(T0, 10) == ["d1"]
    h.store.outbox_done("d1", 2)
    assert len(h.store.outbox("d1", 10)) == 1
    h.store.outbox_done("d1", 1)
    assert h.store.outbox("d1", 10) == []
    assert h.store.outbox_pending(T0 + 100, 10) == []


def test_without_notify_nothing_is_queued(h: Harness) -> None:
    h.store.register(
        "d1", "postal", [Tracked("a***@example.com", "m1")], at=T0, poll_at=None, notify=False
    )
    h.store.apply([ev(EventType.DELIVERED, "e1")], notify=False)
    assert h.store.outbox("d1", 10) == []
    assert state(h.store) == "delivered"


def test_orphans_wait_for_the_index(h: Harness) -> None:
    done = h.store.apply([ev(EventType.DELIVERED, "early", pmid="m7")], notify=True)
    assert done.orphaned == 1 and not done.new
    h.clock.advance(5)
    replayed = h.store.register(
        "d7", "postal", [Tracked("b***@example.com", "m7")], at=T0, poll_at=None, notify=True
    )
    assert [e.type for e in replayed.new] == [EventType.SENT, EventType.DELIVERED]
    assert state(h.store, "d7", "b***@example.com") == "delivered"


def test_expired_orphans_are_gone() -> None:
    # Redis expires them on real time: their TTL is pinned in test_redis_layout.
    clock = FakeClock(T0)
    store = MemoryTrackingStore(clock)
    store.apply([ev(EventType.DELIVERED, "early", pmid="m8")], notify=True)
    clock.advance(601)
    replayed = store.register(
        "d8", "postal", [Tracked("b***@example.com", "m8")], at=T0, poll_at=None, notify=True
    )
    assert [e.type for e in replayed.new] == [EventType.SENT]


def test_an_event_naming_another_delivery_is_refused(h: Harness) -> None:
    register(h.store)
    done = h.store.apply([ev(EventType.BOUNCED, "x", delivery_id="other")], notify=True)
    assert done.refused == 1 and not done.new
    assert state(h.store) == "sent"


def test_one_id_for_many_recipients_splits(h: Harness) -> None:
    recipients = [
        Tracked("+3361****01", "s1", "+33611000001"),
        Tracked("+3361****02", "s1", "+33611000002"),
    ]
    h.store.register("d2", "smspartner", recipients, at=T0, poll_at=T0 + 1, notify=True)
    wide = DeliveryEvent(
        event_id="w",
        type=EventType.DELIVERED,
        provider="smspartner",
        provider_message_id="s1",
        occurred_at=T0,
        source="webhook",
    )
    done = h.store.apply([wide, wide], notify=True)
    assert len(done.new) == 2 and done.duplicates == 2
    assert {e.event_id for e in done.new} == {"w#+3361****01", "w#+3361****02"}
    one = DeliveryEvent(
        event_id="f",
        type=EventType.FAILED,
        provider="smspartner",
        provider_message_id="s1",
        recipient="+3361****02",
        occurred_at=T0,
        source="poll",
    )
    h.store.apply([one], notify=True)
    assert state(h.store, "d2", "+3361****01") == "delivered"
    assert state(h.store, "d2", "+3361****02") == "failed"


def test_history_is_bounded(h: Harness) -> None:
    register(h.store)
    h.store.apply([ev(EventType.OPENED, f"o{i}") for i in range(HISTORY_CAP + 20)], notify=False)
    found = h.store.status("d1")
    assert found is not None
    assert len(found.history) == HISTORY_CAP
    assert found.history[-1]["event_id"] == f"o{HISTORY_CAP + 19}"


def test_watches_are_claimed_rescheduled_and_dropped(h: Harness) -> None:
    recipients = [Tracked("+3361****01", "s1", "+33611000001")]
    h.store.register("d3", "smspartner", recipients, at=T0, poll_at=T0 + 10, notify=False)
    assert h.store.claim_due(T0 + 5, 10, 30) == []
    (w,) = h.store.claim_due(T0 + 10, 10, 30)
    assert (w.delivery_id, w.provider, w.polls, w.recipients) == (
        "d3",
        "smspartner",
        0,
        tuple(recipients),
    )
    assert h.store.claim_due(T0 + 11, 10, 30) == []  # leased
    assert [x.delivery_id for x in h.store.claim_due(T0 + 41, 10, 30)] == ["d3"]
    h.store.reschedule("d3", T0 + 100, polled=True)
    watch = h.store.watch("d3")
    assert watch is not None and watch.polls == 1
    assert h.store.claim_due(T0 + 99, 10, 30) == []
    assert h.store.watching() == 1
    found = h.store.status("d3")
    assert found is not None and found.polling
    h.store.unwatch("d3")
    assert h.store.watch("d3") is None and h.store.watching() == 0
    assert h.store.claim_due(T0 + 1000, 10, 30) == []
    # registering again (a redelivered task) does not restart the watch
    h.store.register("d3", "smspartner", recipients, at=T0, poll_at=T0 + 10, notify=False)


def test_outbox_lock(h: Harness) -> None:
    assert h.store.outbox_lock("d1", "a", 5)
    assert not h.store.outbox_lock("d1", "b", 5)
    h.store.outbox_unlock("d1", "b")
    assert not h.store.outbox_lock("d1", "b", 5)
    h.store.outbox_unlock("d1", "a")
    assert h.store.outbox_lock("d1", "b", 5)


KINDS = st.sampled_from(list(EventType))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kinds=st.lists(KINDS, max_size=12))
def test_the_state_is_the_fold_of_advances(h: Harness, kinds: list[EventType]) -> None:
    store = h.fresh()  # type: ignore[operator]
    register(store)
    store.apply([ev(k, f"e{i}") for i, k in enumerate(kinds)], notify=True)
    expected = EventType.SENT
    for k in kinds:
        if advances(expected, k):
            expected = k
    assert state(store) == expected.value
    # every notification carries the state after its event
    notes = [notification(e) for e in store.outbox("d1", 100)]
    assert len(notes) == 1 + sum(1 for k in kinds if k is not EventType.UNKNOWN)
    assert notes[-1] is not None
    if kinds and kinds[-1] is not EventType.UNKNOWN:
        assert notes[-1]["current_state"] == expected.value
    assert json.dumps(notes)  # plain JSON for the application's task


def test_an_outbox_whose_list_expired_is_no_longer_indexed(redis_client: redis.Redis) -> None:
    """The list expires with the delivery's tracking keys; its id in the index must not stay
    there (and be asked about) forever."""
    from worker.stores.tracking import RedisTrackingStore
    from worker.stores.tracking.redis import OUTBOX_KEY

    store = RedisTrackingStore(redis_client)
    redis_client.rpush("dw:track:out:live", "delivered\n{}")
    redis_client.zadd(OUTBOX_KEY, {"live": 1.0, "expired": 1.0})  # expired: its list is gone
    assert store.outbox_pending(older_than=10.0, limit=10) == ["live"]
    assert [m.decode() for m in redis_client.zrange(OUTBOX_KEY, 0, -1)] == ["live"]
