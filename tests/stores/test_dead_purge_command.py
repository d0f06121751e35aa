"""``delivery-worker dead purge`` over a real redis-server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from worker.config import get_settings
from worker.ops.cli import main
from worker.stores import RedisLedger


@pytest.fixture
def shared(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{redis_url}/13")
    client.flushdb()
    monkeypatch.setenv("DELIVERY_REDIS_URL", f"{redis_url}/13")
    get_settings.cache_clear()
    yield client
    get_settings.cache_clear()
    client.flushdb()
    client.close()


def test_dead_purge_drops_old_letters_then_all(
    shared: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    for delivery_id, age_s in (("old-1", 40 * 86400), ("old-2", 31 * 86400), ("new", 60)):
        ledger = RedisLedger(shared, clock=lambda age_s=age_s: now - age_s)
        ledger.set_aside(delivery_id, reason="r", task_name="tasks.send_sms", outline={})

    assert main(["dead", "purge", "--older-than", "30d"]) == 0
    assert (
        capsys.readouterr().out.strip() == "purged 2 dead letters (set aside over 30d ago); 1 left"
    )
    assert list(RedisLedger(shared).dead_letters()) == ["new"]

    assert main(["dead", "purge", "--all"]) == 0
    assert capsys.readouterr().out.strip() == "purged 1 dead letter (all); 0 left"
    assert shared.exists("dw:dead") == 0


def test_dead_purge_needs_a_scope_and_a_valid_duration(
    shared: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    RedisLedger(shared).set_aside("d1", reason="r", task_name="tasks.send_sms", outline={})
    assert main(["dead", "purge"]) == 1
    assert "--older-than DURATION or --all" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["dead", "purge", "--older-than", "soon"])
    assert "not a duration" in capsys.readouterr().err
    assert list(RedisLedger(shared).dead_letters()) == ["d1"]
