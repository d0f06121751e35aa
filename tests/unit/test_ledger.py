"""The ledger against a real redis-server: forward-only states, idempotency index."""

from __future__ import annotations

import redis

from worker.ledger import Ledger


def test_create_then_get(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    delivery_id, created = ledger.create("d1", channel="sms", provider="smspartner")
    assert (delivery_id, created) == ("d1", True)
    record = ledger.get("d1")
    assert record is not None
    assert (record.state, record.channel, record.provider, record.attempts) == (
        "queued",
        "sms",
        "smspartner",
        0,
    )
    assert record.created_at > 0


def test_same_idempotency_key_returns_first_delivery(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    first = ledger.create("d1", channel="email", provider="postal", idempotency_key="order-1")
    second = ledger.create("d2", channel="email", provider="postal", idempotency_key="order-1")
    assert first == ("d1", True)
    assert second == ("d1", False)
    assert ledger.get("d2") is None


def test_idempotency_keys_are_per_channel(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    ledger.create("d1", channel="email", provider="postal", idempotency_key="k")
    assert ledger.create("d2", channel="sms", provider="smspartner", idempotency_key="k") == (
        "d2",
        True,
    )


def test_transitions_only_move_forward(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    ledger.create("d1", channel="sms", provider="smspartner")
    assert ledger.transition("d1", "sending")
    assert ledger.transition("d1", "waiting")
    assert ledger.transition("d1", "sending")
    assert not ledger.transition("d1", "queued")
    assert ledger.transition("d1", "sent", sent_at="1")
    assert not ledger.transition("d1", "failed")
    assert not ledger.transition("d1", "sending")
    record = ledger.get("d1")
    assert record is not None
    assert record.state == "sent"
    assert record.final


def test_transition_of_unknown_delivery_changes_nothing(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    assert not ledger.transition("missing", "sending")
    assert ledger.get("missing") is None


def test_forget_releases_the_idempotency_key(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    ledger.create("d1", channel="sms", provider="smspartner", idempotency_key="k")
    ledger.forget("d1", channel="sms", idempotency_key="k")
    assert ledger.create("d2", channel="sms", provider="smspartner", idempotency_key="k") == (
        "d2",
        True,
    )


def test_counters(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    ledger.create("d1", channel="sms", provider="smspartner")
    assert ledger.incr("d1", "attempts") == 1
    assert ledger.incr("d1", "attempts") == 2
    assert ledger.incr("d1", "throttled") == 1
    record = ledger.get("d1")
    assert record is not None
    assert (record.attempts, record.throttled) == (2, 1)
