"""The suppression contract, run against the in-memory stub and Redis (a real redis-server).

Both run on a fake clock (the Redis store takes its time from the caller, like the ledger).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from worker.stores.suppression import (
    Entry,
    MemorySuppressionStore,
    RecipientHasher,
    RedisSuppressionStore,
    SoftBouncePolicy,
    SuppressionStore,
    normalise,
)

from ._support import FakeClock

T0 = 1_700_000_000.0
POLICY = SoftBouncePolicy(threshold=3, window_s=100.0, suppress_s=50.0)
HASH = RecipientHasher(b"s" * 32)
JOHN = HASH.key("email", "John@Example.com")
MARY = HASH.key("email", "mary@example.com")


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[SuppressionStore]:
    if request.param == "memory":
        yield MemorySuppressionStore(clock, policy=POLICY)
    else:
        client: redis.Redis = request.getfixturevalue("redis_client")
        yield RedisSuppressionStore(client, policy=POLICY, clock=clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def _hard(key: str = JOHN, **kw: object) -> Entry:
    fields: dict[str, object] = {"reason": "hard_bounce", "source": "send", "provider": "postal"}
    fields.update(kw)
    return Entry("email", key, masked="j***@example.com", **fields)  # type: ignore[arg-type]


def test_keys_are_normalised_hashes_never_the_address() -> None:
    assert HASH.key("email", "John@Example.com") == HASH.key("email", " john@example.com")
    assert HASH.key("sms", "+33 6 12 34 56 78") == HASH.key("sms", "0033612345678")
    assert normalise("sms", "+33.6.12.34.56.78") == "+33612345678"
    assert HASH.key("email", "a@b.fr") != HASH.key("sms", "a@b.fr")  # one list per channel
    assert HASH.key("email", "a@b.fr") != RecipientHasher().key("email", "a@b.fr")  # HMAC
    assert RecipientHasher.is_key(JOHN) and "john" not in JOHN


def test_an_added_entry_is_found_with_what_caused_it(store: SuppressionStore) -> None:
    assert store.check("email", [JOHN, MARY]) == {}
    assert store.add(_hard())
    found = store.check("email", [JOHN, MARY])
    assert set(found) == {JOHN}
    entry = found[JOHN]
    assert (entry.reason, entry.source, entry.provider) == ("hard_bounce", "send", "postal")
    assert entry.at == T0 and entry.expires_at is None
    assert entry.masked == "j***@example.com"
    assert store.check("sms", [JOHN]) == {}  # the email list only


def test_remove_forgets_the_entry(store: SuppressionStore) -> None:
    store.add(_hard())
    assert store.remove("email", JOHN) is True
    assert store.check("email", [JOHN]) == {}
    assert store.remove("email", JOHN) is False


def test_an_entry_expires(store: SuppressionStore, clock: FakeClock) -> None:
    store.add(_hard(reason="manual", source="manual", expires_at=T0 + 10))
    assert JOHN in store.check("email", [JOHN])
    clock.advance(10.5)
    assert store.check("email", [JOHN]) == {}
    assert list(store.entries("email")) == []


def test_an_expiring_entry_never_shortens_a_permanent_one(
    store: SuppressionStore, clock: FakeClock
) -> None:
    store.add(_hard())
    assert store.add(_hard(reason="manual", expires_at=T0 + 5)) is False
    clock.advance(6)
    assert store.check("email", [JOHN])[JOHN].reason == "hard_bounce"
    # A permanent entry replaces an expiring one.
    store.add(_hard(MARY, reason="soft_bounce", expires_at=T0 + 100))
    assert store.add(_hard(MARY, reason="complaint"))
    assert store.check("email", [MARY])[MARY].expires_at is None


def test_soft_bounces_suppress_at_the_threshold_within_the_window_then_expire(
    store: SuppressionStore, clock: FakeClock
) -> None:
    assert store.soft_bounce("email", JOHN, source="tracking", provider="postal") is None
    clock.advance(60)
    assert store.soft_bounce("email", JOHN, source="tracking", provider="postal") is None
    clock.advance(60)  # the first is out of the window: two count
    assert store.soft_bounce("email", JOHN, source="tracking", provider="postal") is None
    assert store.check("email", [JOHN]) == {}
    clock.advance(1)
    entry = store.soft_bounce("email", JOHN, source="tracking", provider="postal")
    assert entry is not None and entry.reason == "soft_bounce"
    assert entry.expires_at == clock.now + POLICY.suppress_s
    assert store.check("email", [JOHN])[JOHN].reason == "soft_bounce"
    clock.advance(POLICY.suppress_s + 1)
    assert store.check("email", [JOHN]) == {}
    # The count started again after suppressing.
    assert store.soft_bounce("email", JOHN, source="tracking") is None


def test_soft_bounces_never_shorten_a_permanent_entry(store: SuppressionStore) -> None:
    store.add(_hard())
    for _ in range(POLICY.threshold):
        assert store.soft_bounce("email", JOHN, source="tracking") is None
    assert store.check("email", [JOHN])[JOHN].expires_at is None


def test_entries_lists_the_live_ones(store: SuppressionStore, clock: FakeClock) -> None:
    store.add(_hard())
    store.add(_hard(MARY, reason="unsubscribed", expires_at=T0 + 1))
    store.add(Entry("sms", JOHN, "stop", "send", "smspartner", masked="+336****78"))
    assert store.count("email") == 2
    assert {e.key for e in store.entries("email")} == {JOHN, MARY}
    clock.advance(2)
    assert [e.key for e in store.entries("email")] == [JOHN]
    assert store.count("email") == 1  # the expired one was dropped as met
    assert [e.reason for e in store.entries("sms")] == ["stop"]


def test_redis_keeps_no_plain_address(redis_client: redis.Redis, clock: FakeClock) -> None:
    store = RedisSuppressionStore(redis_client, policy=POLICY, clock=clock)
    store.add(_hard())
    store.soft_bounce("email", MARY, source="tracking")
    dump = b"".join(
        k + b"".join(redis_client.dump(k) or b"" for _ in [0]) for k in redis_client.keys("*")
    )
    assert b"john@example.com" not in dump.lower() and b"mary" not in dump
    assert redis_client.ttl(store.soft_key("email", MARY)) > 0  # the count expires
