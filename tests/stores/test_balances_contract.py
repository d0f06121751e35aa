"""The balances contract (last ``/me`` reading per provider), run against every implementation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from worker.stores.balances import Balances, MemoryBalances, RecordedBalance, RedisBalances


@pytest.fixture(params=["memory", "redis"])
def balances(request: pytest.FixtureRequest) -> Iterator[Balances]:
    if request.param == "memory":
        yield MemoryBalances()
    else:
        client: redis.Redis = request.getfixturevalue("redis_client")
        yield RedisBalances(client)


def test_nothing_checked_reads_empty(balances: Balances) -> None:
    assert balances.read_all() == {}


def test_a_reading_replaces_the_previous_one_per_provider(balances: Balances) -> None:
    first = RecordedBalance("smspartner", 120.0, "credits", "", 1_700_000_000.0)
    balances.record(first)
    balances.record(RecordedBalance("voicepartner", 19.5, "money", "€", 1_700_000_001.0))
    later = RecordedBalance("smspartner", 3.0, "credits", "", 1_700_000_060.0)
    balances.record(later)
    assert balances.read_all() == {
        "smspartner": later,
        "voicepartner": RecordedBalance("voicepartner", 19.5, "money", "€", 1_700_000_001.0),
    }


def test_a_read_is_a_copy(balances: Balances) -> None:
    balances.record(RecordedBalance("mailpartner", 1.0, "credits", "", 1.0))
    balances.read_all().clear()
    assert set(balances.read_all()) == {"mailpartner"}


def test_readings_are_checked() -> None:
    with pytest.raises(ValueError):
        RecordedBalance("smspartner", float("nan"), "credits", "", 1.0)
    with pytest.raises(ValueError):
        RecordedBalance("smspartner", 1.0, "coins", "", 1.0)  # type: ignore[arg-type]


def test_an_unreadable_stored_entry_is_skipped(redis_client: redis.Redis) -> None:
    store = RedisBalances(redis_client)
    store.record(RecordedBalance("smspartner", 7.0, "credits", "", 2.0))
    redis_client.hset("dw:balances", "mailpartner", "{not json")
    redis_client.hset("dw:balances", "voicepartner", '{"amount": "x", "unit": "money"}')
    assert set(store.read_all()) == {"smspartner"}
