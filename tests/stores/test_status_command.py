"""``delivery-worker status ID`` and ``worker.delivery_status`` over a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from worker.config import get_settings
from worker.ops.cli import main
from worker.stores import RedisLedger
from worker.stores.tracking import RedisTrackingStore, Tracked
from worker.tracking import DeliveryEvent, EventType


@pytest.fixture
def shared(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{redis_url}/14")
    client.flushdb()
    monkeypatch.setenv("DELIVERY_REDIS_URL", f"{redis_url}/14")
    get_settings.cache_clear()
    yield client
    get_settings.cache_clear()
    client.flushdb()
    client.close()


def test_status_shows_the_record_then_each_recipient_and_the_history(
    shared: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    RedisLedger(shared).create("d-9", channel="sms", provider="smspartner")
    store = RedisTrackingStore(shared)
    store.register(
        "d-9",
        "smspartner",
        [Tracked("+3361*****78", "1001", "+33612345678")],
        at=1_700_000_000.0,
        poll_at=None,
        notify=False,
    )
    store.apply(
        [
            DeliveryEvent(
                event_id="p1", type=EventType.FAILED, provider="smspartner",
                provider_message_id="1001", recipient="+3361*****78",
                occurred_at=1_700_000_005.0, reason="Not delivered", source="poll",
            )
        ],
        notify=False,
    )  # fmt: skip
    assert main(["status", "d-9"]) == 0
    out = capsys.readouterr().out
    assert '"state": "queued"' in out  # the ledger record comes first
    assert "+3361*****78" in out and "failed" in out and "Not delivered" in out
    lines = out.splitlines()
    history = lines[lines.index("history") + 1 :]
    assert [line.split()[1] for line in history] == ["sent", "failed"]
    assert "+33612345678" not in out


def test_the_python_api(shared: redis.Redis) -> None:
    from worker import delivery_status
    from worker.runtime import reset_runtime

    RedisTrackingStore(shared).register(
        "d-8", "postal", [Tracked("a***@example.com", "37")], at=1.0, poll_at=5.0, notify=False
    )
    reset_runtime()
    try:
        found = delivery_status("d-8")
        assert delivery_status("never") is None
    finally:
        reset_runtime()
    assert found is not None
    assert (found["provider"], found["polling"]) == ("postal", True)
    assert found["recipients"]["a***@example.com"]["state"] == "sent"
    assert [e["source"] for e in found["history"]] == ["send"]


@pytest.fixture
def paris_tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import time

    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_status_shows_iso_times_in_the_local_zone_and_history_in_event_order(
    shared: redis.Redis, capsys: pytest.CaptureFixture[str], paris_tz: None
) -> None:
    RedisLedger(shared).create("d-7", channel="sms", provider="smspartner")
    store = RedisTrackingStore(shared)
    store.register(
        "d-7", "smspartner", [Tracked("+3361*****78", "1001", "+33612345678")],
        at=1_700_000_000.0, poll_at=None, notify=False,
    )  # fmt: skip
    # A later report applied first (a push overtaking a poll): the history is shown by time.
    late = DeliveryEvent(
        event_id="d", type=EventType.DELIVERED, provider="smspartner",
        provider_message_id="1001", recipient="+3361*****78",
        occurred_at=1_700_000_060.0, source="poll",
    )  # fmt: skip
    early = late.model_copy(update={"event_id": "q", "type": EventType.QUEUED,
                                    "occurred_at": 1_700_000_030.0})  # fmt: skip
    store.apply([late], notify=False)
    store.apply([early], notify=False)

    assert main(["status", "d-7"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    history = lines[lines.index("history") + 1 :]
    assert [line.split()[:2] for line in history] == [
        ["2023-11-14T23:13:20.000+01:00", "sent"],
        ["2023-11-14T23:13:50.000+01:00", "queued"],
        ["2023-11-14T23:14:20.000+01:00", "delivered"],
    ]
    assert '"created_at": "20' in out and "+01:00" in out.split("tracking:")[0]

    assert main(["status", "--utc", "d-7"]) == 0
    out = capsys.readouterr().out
    assert "2023-11-14T22:13:20.000+00:00  sent" in out
