"""The parking contract, run against every implementation (parked times from a fake clock)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from worker.stores.parking import MemoryParking, ParkedMessage, Parking, RedisParking

from ._support import FakeClock

T0 = 1_700_000_000.0
SMS = {"provider": "smspartner", "to": ["+33612345678"], "text": "hi", "meta": {"n": [1, 2]}}


@dataclass
class Harness:
    parking: Parking
    clock: FakeClock


@pytest.fixture(params=["memory", "redis"])
def h(request: pytest.FixtureRequest) -> Iterator[Harness]:
    clock = FakeClock(T0)
    if request.param == "memory":
        yield Harness(MemoryParking(clock), clock)
    else:
        client: redis.Redis = request.getfixturevalue("redis_client")
        yield Harness(RedisParking(client, clock=clock), clock)


def park(h: Harness, *ids: str, provider: str = "smspartner") -> None:
    for delivery_id in ids:
        h.parking.park(provider, delivery_id, "tasks.send_sms", {**SMS, "text": delivery_id})
        h.clock.advance(1)


def test_parked_messages_are_listed_oldest_first_and_left_in_place(h: Harness) -> None:
    assert (h.parking.count("smspartner"), h.parking.entries("smspartner")) == (0, [])
    park(h, "d2", "d1", "d3")
    assert h.parking.count("smspartner") == 3
    entries = h.parking.entries("smspartner")
    assert [e.delivery_id for e in entries] == ["d2", "d1", "d3"]
    assert entries[0] == ParkedMessage(
        delivery_id="d2",
        task_name="tasks.send_sms",
        message={**SMS, "text": "d2"},
        parked_at=T0,
    )
    assert h.parking.count("smspartner") == 3


def test_providers_are_kept_apart(h: Harness) -> None:
    park(h, "d1", provider="smspartner")
    park(h, "d2", provider="mailpartner")
    assert [e.delivery_id for e in h.parking.take_all("mailpartner")] == ["d2"]
    assert h.parking.count("smspartner") == 1
    assert h.parking.count("mailpartner") == 0


def test_parking_a_delivery_again_replaces_its_entry(h: Harness) -> None:
    park(h, "d1", "d1")
    (entry,) = h.parking.entries("smspartner")
    assert entry.parked_at == T0 + 1


def test_take_all_empties_the_provider_oldest_first(h: Harness) -> None:
    park(h, "b", "a", "c")
    taken = h.parking.take_all("smspartner")
    assert [t.delivery_id for t in taken] == ["b", "a", "c"]
    assert [t.message["text"] for t in taken] == ["b", "a", "c"]
    assert h.parking.count("smspartner") == 0
    assert h.parking.take_all("smspartner") == []


def test_put_back_parks_again_what_could_not_be_requeued(h: Harness) -> None:
    park(h, "a", "b", "c")
    taken = h.parking.take_all("smspartner")
    h.parking.put_back("smspartner", taken[1:])
    entries = h.parking.entries("smspartner")
    # Parked again now: one time for both, so their order among themselves is not specified.
    assert sorted((e.delivery_id, e.task_name, e.message["text"]) for e in entries) == [
        ("b", "tasks.send_sms", "b"),
        ("c", "tasks.send_sms", "c"),
    ]
    assert {e.parked_at for e in entries} == {T0 + 3}
    assert all(e.message == {**SMS, "text": e.delivery_id} for e in entries)


def test_two_resumers_never_take_one_message_twice(h: Harness) -> None:
    park(h, *(f"d{n}" for n in range(50)))
    taken: list[list[ParkedMessage]] = []
    barrier = threading.Barrier(4)

    def resume() -> None:
        barrier.wait()
        taken.append(h.parking.take_all("smspartner"))

    threads = [threading.Thread(target=resume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [item.delivery_id for batch in taken for item in batch]
    assert sorted(ids) == sorted(f"d{n}" for n in range(50))
