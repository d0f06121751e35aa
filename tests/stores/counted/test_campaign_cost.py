"""A campaign's shared-state costs on a real redis-server: the chunk's records in one script
call (``Ledger.create_many``), and ``wait_many`` in one round trip per poll."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import redis

from worker.durable_wait import wait_for_results
from worker.stores import DeliveryRecord, RedisLedger
from worker.stores.ledger.base import NewRecord


def _calls(client: redis.Redis) -> Counter[str]:
    stats = client.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


def test_a_chunk_of_records_is_created_in_one_script_call(redis_client: redis.Redis) -> None:
    ledger = RedisLedger(redis_client)
    ledger.create("old", channel="sms", provider="smspartner", idempotency_key="k-old")
    records = [
        NewRecord(f"d{i}", "sms", "smspartner", idempotency_key=f"k{i}" if i < 2 else None)
        for i in range(50)
    ]
    records[3] = NewRecord("d3", "sms", "smspartner", idempotency_key="k-old")  # known key
    records[4] = NewRecord("d4", "sms", "smspartner", idempotency_key="k0")  # same as d0
    ledger.create_many([NewRecord("warm", "sms", "smspartner")])  # the script is loaded
    before = _calls(redis_client)
    answers = ledger.create_many(records)
    used = _calls(redis_client) - before
    assert used["evalsha"] + used["eval"] == 1  # one script call for the chunk
    assert used["zadd"] == 1  # the active set once for the chunk
    assert answers[0] == ("d0", True) and answers[1] == ("d1", True)
    assert answers[3] == ("old", False) and answers[4] == ("d0", False)
    assert all(answers[i] == (f"d{i}", True) for i in range(5, 50))
    assert ledger.create_many(records[5:6]) == [("d5", False)]  # a known id
    record = ledger.get("d7")
    assert record is not None and record.state == "queued"
    assert record.fields["channel"] == "sms" and record.fields["provider"] == "smspartner"
    assert redis_client.zscore(ledger.keys.active, "d7") is not None
    assert redis_client.ttl(ledger.key("d7")) > 0
    assert redis_client.get(ledger.idem_key("sms", "k1")) == b"d1"
    assert ledger.get("d3") is None and ledger.get("d4") is None  # nothing created for those


class CountingLedger(RedisLedger):
    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self.batches: list[int] = []

    def get(self, delivery_id: str) -> DeliveryRecord | None:
        raise AssertionError("wait_many reads each id in the poll's one pipeline")

    def get_many(self, delivery_ids: Sequence[str]) -> list[DeliveryRecord | None]:
        self.batches.append(len(delivery_ids))
        return super().get_many(delivery_ids)


def test_wait_many_reads_every_pending_id_in_one_round_trip_per_poll(
    redis_client: redis.Redis,
) -> None:
    ledger = CountingLedger(redis_client)
    ids = [f"w{i}" for i in range(200)]
    ledger.create_many([NewRecord(d, "sms", "smspartner") for d in ids])
    polls = [0]

    def sleep(_s: float) -> None:
        polls[0] += 1
        # Between polls half of what is pending settles.
        for d in ids[: 100 * polls[0]]:
            ledger.transition(d, "sent", result=f'{{"status": "sent", "delivery_id": "{d}"}}')

    got = wait_for_results(ledger, ids, timeout_s=60, sleep=sleep)
    assert {r["delivery_id"] for r in got.values()} == set(ids)
    assert ledger.batches == [200, 200, 100]  # one read of every pending id per poll
    assert len(ledger.batches) == polls[0] + 1


def test_a_chunks_results_publish_only_to_a_waiting_get(quiet_redis_url: str) -> None:
    """``store_results``: every result is stored (``SET``) in one script call; the ``PUBLISH``
    goes only to the keys an ``AsyncResult.get`` listens on, and a get that starts after the
    call reads the stored result."""
    from worker.app import client_app
    from worker.delivery.campaign import store_results

    url = quiet_redis_url + "/13"
    app = client_app(url, url, name="results-test")
    client = redis.Redis.from_url(url)
    client.flushdb()
    key = app.backend.get_key_for_task("waited")
    listener = client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(key)
    store_results(app, [("warm", {"status": "sent"}, "SUCCESS")])  # the script is loaded
    before = _calls(client)
    store_results(
        app,
        [
            ("waited", {"status": "sent", "delivery_id": "waited"}, "SUCCESS"),
            ("alone", {"status": "sent", "delivery_id": "alone"}, "SUCCESS"),
        ],
    )
    used = _calls(client) - before
    assert used["evalsha"] == 1 and used["set"] == 2 and used["publish"] == 1, used
    heard = None
    for _ in range(50):  # the subscribe confirmation first (skipped: None), then the PUBLISH
        heard = listener.get_message(timeout=0.1)
        if heard is not None:
            break
    assert heard is not None and b'"delivery_id": "waited"' in heard["data"]
    assert app.AsyncResult("alone").get(timeout=5)["delivery_id"] == "alone"
    assert app.AsyncResult("waited").get(timeout=5)["delivery_id"] == "waited"
    listener.close()
    client.flushdb()
    client.close()
