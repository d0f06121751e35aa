"""The hot path contract: a run's first and last step do what the stores' own calls do.

Run against :class:`ComposedHotPath` on the in-memory stores (the stores' calls one by one, the
reference) and :class:`RedisHotPath` (one script each), then read back through the stores.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from worker.stores import (
    HealthStore,
    Ledger,
    MemoryHealthStore,
    MemoryLedger,
    MemoryMetrics,
    Metrics,
    RedisHealthStore,
    RedisLedger,
    RedisMetrics,
)
from worker.stores.hotpath import (
    Begin,
    Closing,
    ComposedHotPath,
    Finish,
    HotPath,
    RedisHotPath,
)
from worker.stores.hotpath.base import LATE_OUTCOME, TrackingArgs
from worker.stores.suppression import (
    Entry,
    MemorySuppressionStore,
    RecipientHasher,
    RedisSuppressionStore,
    SuppressionStore,
)
from worker.stores.tracking import (
    MemoryTrackingStore,
    RedisTrackingStore,
    Tracked,
    TrackingStore,
)
from worker.tracking import DeliveryEvent, EventType

from ._support import FakeClock

T0 = 1_700_000_000.0


@dataclass
class H:
    hot: HotPath
    ledger: Ledger
    health: HealthStore
    metrics: Metrics
    tracking: TrackingStore
    redis: redis.Redis | None
    suppression: SuppressionStore


@pytest.fixture(params=["memory", "redis"])
def h(request: pytest.FixtureRequest) -> Iterator[H]:
    clock = FakeClock(T0)
    if request.param == "memory":
        ledger, health = MemoryLedger(clock), MemoryHealthStore(clock)
        metrics, tracking = MemoryMetrics(), MemoryTrackingStore(clock)
        supp = MemorySuppressionStore(clock)
        yield H(ComposedHotPath(ledger, health, metrics, tracking, supp), ledger, health, metrics,
                tracking, None, supp)  # fmt: skip
    else:
        yield _on_redis(request.getfixturevalue("redis_client"), clock)


def _on_redis(client: redis.Redis, clock: FakeClock) -> H:
    ledger = RedisLedger(client, clock=clock)
    health, metrics = RedisHealthStore(client), RedisMetrics(client)
    tracking = RedisTrackingStore(client, clock=clock)
    supp = RedisSuppressionStore(client, clock=clock)
    hot = RedisHotPath(client, health=health, metrics=metrics, tracking=tracking,
                       suppression=supp, clock=clock)  # fmt: skip
    return H(hot, ledger, health, metrics, tracking, client, supp)


def _sent(provider: str = "smspartner", poll: bool = True) -> Closing:
    tracking = TrackingArgs(
        provider, [Tracked("+336****78", "pm-1", "+33612345678")], T0, T0 + 60 if poll else None,
        notify=False,
    )  # fmt: skip
    fields = {"sent_at": repr(T0), "attempts": "1", "result": '{"status": "sent"}'}
    return Closing("sent", fields, provider, "sent", True, tracking)


def test_begin_on_a_missing_record_finds_it_missing(h: H) -> None:
    begun = h.hot.begin("d1", "tok", 5.0, providers=["smspartner"])
    assert begun.status == "missing"
    assert begun.record is None
    assert h.ledger.lock("d1", "other", 5.0) == 0.0  # no lock taken


def test_begin_locks_counts_the_run_and_reads_health(h: H) -> None:
    h.ledger.create("d1", channel="sms", provider="auto")
    h.health.pause("postal", "no credit", "w1")
    h.health.record_failure("voicepartner")
    providers = ["smspartner", "postal", "voicepartner"]
    begun = h.hot.begin("d1", "tok", 5.0, providers=providers)
    assert begun.status == "run"
    assert begun.record is not None and begun.record.state == "queued"
    assert begun.runs == 1
    assert begun.record.fields["runs_unfinished"] == "1"
    assert set(begun.paused) == {"postal"}
    assert begun.paused["postal"].reason == "no credit"
    assert "voicepartner" in begun.breaker_state  # a breaker with state is asked
    assert begun.asked == frozenset(providers)
    assert 0 < h.ledger.lock("d1", "other", 5.0) <= 5.0  # locked for this run
    again = h.hot.begin("d1", "tok2", 5.0)
    assert again.status == "busy"
    assert 0 < again.busy_s <= 5.0
    assert again.record is not None and again.record.fields["runs_unfinished"] == "1"


def test_begin_answers_which_recipients_are_suppressed(h: H) -> None:
    hasher = RecipientHasher(b"k" * 32)
    a, b, c = (hasher.key("sms", n) for n in ("+33612345678", "+33612345679", "+33612345670"))
    h.suppression.add(Entry("sms", a, "stop", "send", "smspartner", masked="+336****78"))
    h.suppression.add(Entry("sms", c, "manual", "manual", expires_at=T0 - 1))  # expired
    h.suppression.add(Entry("email", b, "hard_bounce", "tracking"))  # another channel
    h.ledger.create("d1", channel="sms", provider="auto")
    h.health.pause("postal", "no credit", "w1")
    begun = h.hot.begin("d1", "tok", 5.0, providers=["smspartner", "postal"],
                        suppress=("sms", [a, b, c]))  # fmt: skip
    assert begun.status == "run"
    assert set(begun.suppressed) == {a}
    assert begun.suppressed[a].reason == "stop"
    assert begun.suppressed[a].masked == "+336****78"
    assert set(begun.paused) == {"postal"}  # the providers' health still read alongside
    h.hot.finish("d1", "tok", reset_runs=True)
    assert h.hot.begin("d1", "tok", 5.0, suppress=("sms", [b])).suppressed == {}


def test_redis_asks_only_breakers_with_state(redis_client: redis.Redis) -> None:
    """A breaker without state allows everything and ignores a success: not asked (the
    composed path asks every one)."""
    h = _on_redis(redis_client, FakeClock(T0))
    h.ledger.create("d1", channel="sms", provider="auto")
    h.health.record_failure("voicepartner")
    begun = h.hot.begin("d1", "tok", 5.0, providers=["smspartner", "voicepartner"])
    assert begun.breaker_state == frozenset({"voicepartner"})


def test_finish_writes_sent_resets_unlocks_counts_and_registers(h: H) -> None:
    h.ledger.create("d1", channel="sms", provider="smspartner")
    h.hot.begin("d1", "tok", 5.0, providers=["smspartner"])
    h.ledger.transition("d1", "sending")
    done = h.hot.finish("d1", "tok", reset_runs=True, closing=_sent())
    assert done.changed
    record = h.ledger.get("d1")
    assert record is not None
    assert record.state == "sent"
    assert record.attempts == 1
    assert record.fields["sent_at"] == repr(T0)
    assert record.result == {"status": "sent"}
    assert record.fields["runs_unfinished"] == "0"
    assert h.ledger.stale(-1e9) == []  # out of the active set
    assert h.ledger.lock("d1", "other", 5.0) == 0.0  # unlocked
    assert h.metrics.read("smspartner") == {"sent": 1}
    assert done.tracking is not None and len(done.tracking.new) == 1
    status = h.tracking.status("d1")
    assert status is not None
    assert status.provider == "smspartner"
    assert status.recipients["+336****78"].state == EventType.SENT
    assert status.polling
    watch = h.tracking.watch("d1")
    assert watch is not None and watch.recipients[0].lookup == "+33612345678"


def test_finish_is_forward_only_and_keeps_another_runs_lock(h: H) -> None:
    h.ledger.create("d1", channel="sms", provider="smspartner")
    h.ledger.transition("d1", "failed", error_kind="x")
    assert h.ledger.lock("d1", "theirs", 5.0) == 0.0
    done = h.hot.finish("d1", "mine", reset_runs=False, closing=_sent(poll=False))
    assert not done.changed
    record = h.ledger.get("d1")
    assert record is not None and record.state == "failed"
    assert "runs_unfinished" not in record.fields
    assert h.ledger.lock("d1", "other", 5.0) > 0  # their lock stands


def test_begin_on_a_final_record_takes_no_lock(h: H) -> None:
    h.ledger.create("d1", channel="sms", provider="smspartner")
    h.ledger.transition("d1", "sent")
    begun = h.hot.begin("d1", "tok", 5.0, providers=["smspartner"])
    assert begun.status == "final"
    assert begun.record is not None and begun.record.state == "sent"
    assert h.ledger.lock("d1", "other", 5.0) == 0.0
    record = h.ledger.get("d1")
    assert record is not None and "runs_unfinished" not in record.fields


def test_finish_without_closing_resets_and_unlocks_only(h: H) -> None:
    h.ledger.create("d1", channel="sms", provider="smspartner")
    h.hot.begin("d1", "tok", 5.0)
    h.ledger.transition("d1", "waiting", waiting_reason="throttled")
    done = h.hot.finish("d1", "tok", reset_runs=True)
    assert not done.changed and done.tracking is None
    record = h.ledger.get("d1")
    assert record is not None
    assert record.state == "waiting" and record.fields["runs_unfinished"] == "0"
    assert h.ledger.lock("d1", "other", 5.0) == 0.0
    assert h.metrics.read("smspartner") == {}


def test_finish_applies_the_events_kept_for_the_sends_ids(h: H) -> None:
    early = DeliveryEvent(
        event_id="e1",
        type=EventType.DELIVERED,
        provider="smspartner",
        provider_message_id="pm-1",
        occurred_at=T0,
        source="webhook",
    )
    assert h.tracking.apply([early], notify=False).orphaned == 1
    h.ledger.create("d1", channel="sms", provider="smspartner")
    h.hot.begin("d1", "tok", 5.0)
    done = h.hot.finish("d1", "tok", reset_runs=True, closing=_sent())
    assert done.tracking is not None
    assert [e.type for e in done.tracking.new] == [EventType.SENT, EventType.DELIVERED]
    status = h.tracking.status("d1")
    assert status is not None
    assert status.recipients["+336****78"].state == EventType.DELIVERED


def test_registering_twice_is_idempotent(h: H) -> None:
    for _ in range(2):
        h.ledger.create("d1", channel="sms", provider="smspartner")
        h.hot.begin("d1", "tok", 5.0)
        h.ledger.lock("d1", "tok", 5.0)  # the second begin finds it final and takes no lock
        done = h.hot.finish("d1", "tok", reset_runs=True, closing=_sent())
    assert done.tracking is not None
    assert done.tracking.new == [] and done.tracking.duplicates == 1
    status = h.tracking.status("d1")
    assert status is not None and len(status.history) == 1


def test_redis_clears_the_guards_mark(redis_client: redis.Redis) -> None:
    h = _on_redis(redis_client, FakeClock(T0))
    assert h.redis is not None
    h.redis.hset("dw:main:d1", mapping={"w1": 1, "w2": 1})
    assert h.hot.begin("d1", "tok", 5.0, mark=("dw:main:d1", "w1")).status == "missing"
    assert h.redis.hkeys("dw:main:d1") == [b"w2"]  # only this holder's mark
    h.hot.clear_mark(("dw:main:d1", "w2"))
    assert h.redis.exists("dw:main:d1") == 0


def test_a_chunk_begins_and_finishes_each_delivery_as_one_call_would(h: H) -> None:
    """``begin_chunk``/``finish_chunk``: one answer per delivery, in order, each what ``begin``
    and ``finish`` answer for it alone (missing, final, busy and run in one chunk)."""
    h.ledger.create("run", channel="sms", provider="smspartner")
    h.ledger.create("final", channel="sms", provider="smspartner")
    h.ledger.transition("final", "failed", error_kind="x")
    h.ledger.create("busy", channel="sms", provider="smspartner")
    assert h.ledger.lock("busy", "theirs", 5.0) == 0.0
    h.health.pause("smspartner", "no credit", "w1")
    ids = ["missing", "final", "busy", "run"]
    begun = h.hot.begin_chunk([Begin(i, "tok", 5.0, ["smspartner"]) for i in ids])
    assert [b.status for b in begun] == ["missing", "final", "busy", "run"]
    assert begun[3].runs == 1 and set(begun[3].paused) == {"smspartner"}
    assert begun[3].record is not None and begun[3].record.delivery_id == "run"
    assert 0 < begun[2].busy_s <= 5.0
    assert h.ledger.lock("run", "other", 5.0) > 0  # locked for this run
    done = h.hot.finish_chunk(
        [Finish("busy", "tok", reset_runs=True), Finish("run", "tok", True, _sent())]
    )
    assert [d.changed for d in done] == [False, True]
    assert [d.lock_lost for d in done] == [True, False]  # "tok" never held busy's lock
    assert done[1].tracking is not None and len(done[1].tracking.new) == 1
    run, busy = h.ledger.get("run"), h.ledger.get("busy")
    assert run is not None and run.state == "sent" and run.fields["runs_unfinished"] == "0"
    assert busy is not None and busy.state == "queued"
    assert h.ledger.lock("run", "other", 5.0) == 0.0  # unlocked
    assert h.ledger.lock("busy", "other", 5.0) > 0  # their lock stands
    assert h.metrics.read("smspartner") == {"sent": 1}


def test_finish_with_a_stale_token_keeps_its_observation_and_overwrites_nothing(h: H) -> None:
    """A run that outlived its lock: another run took the lock (and may be resending). The late
    run's ``sent`` is kept aside on the record, not written over the other run's state."""
    h.ledger.create("d1", channel="sms", provider="smspartner")
    h.hot.begin("d1", "late", 5.0, providers=["smspartner"])
    h.ledger.transition("d1", "sending")
    h.ledger.unlock("d1", "late")  # the lock expired...
    assert h.ledger.lock("d1", "next", 5.0) == 0.0  # ...and the next run holds it
    assert not h.ledger.holds("d1", "late") and h.ledger.holds("d1", "next")
    done = h.hot.finish("d1", "late", reset_runs=True, closing=_sent())
    assert done.lock_lost and not done.changed and done.tracking is None
    record = h.ledger.get("d1")
    assert record is not None
    assert record.state == "sending"  # not overwritten
    assert record.fields["runs_unfinished"] == "1"  # not reset by the late run
    seen = json.loads(record.fields[LATE_OUTCOME])
    assert seen["state"] == "sent"
    assert seen["fields"]["result"] == '{"status": "sent"}'
    assert h.ledger.holds("d1", "next")  # the next run's lock stands
    assert h.metrics.read("smspartner") == {}
    assert h.tracking.status("d1") is None


def test_finish_after_the_lock_expired_unheld_writes_nothing(h: H) -> None:
    h.ledger.create("d1", channel="sms", provider="smspartner")
    h.hot.begin("d1", "late", 5.0)
    h.ledger.transition("d1", "sending")
    h.ledger.unlock("d1", "late")
    done = h.hot.finish("d1", "late", reset_runs=True, closing=_sent())
    assert done.lock_lost
    record = h.ledger.get("d1")
    assert record is not None and record.state == "sending"
    assert LATE_OUTCOME in record.fields


def _script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def _calls(client: redis.Redis) -> Counter[str]:
    stats = client.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


def test_redis_runs_a_chunk_in_one_script_call_per_phase(quiet_redis_url: str) -> None:
    """``chunk.lua``: a chunk of three begins in one script call and finishes in one (counted
    on a redis-server of this module's own: the count is server-wide)."""
    redis_client = redis.Redis.from_url(quiet_redis_url + "/15")
    h = _on_redis(redis_client, FakeClock(T0))
    ids = ["c1", "c2", "c3"]
    for i in ["warm", *ids]:
        h.ledger.create(i, channel="sms", provider="smspartner")
    warm = [Begin("warm", "t", 5.0, ["smspartner"]), Begin("missing", "t", 5.0, ["smspartner"])]
    h.hot.begin_chunk(warm)  # script loaded
    before = _script_calls(redis_client)
    calls = _calls(redis_client)
    begun = h.hot.begin_chunk([Begin(i, "tok", 5.0, ["smspartner"]) for i in ids])
    assert [b.status for b in begun] == ["run"] * 3
    assert _script_calls(redis_client) - before == 1
    used = _calls(redis_client) - calls
    # The chunk's deliveries share their provider: its pause and breaker are read once.
    assert (used["hget"], used["exists"]) == (1, 1), used
    assert all(b.asked == frozenset({"smspartner"}) for b in begun)
    h.hot.finish_chunk([Finish("warm", "t", True), Finish("missing", "t", True)])
    before = _script_calls(redis_client)
    done = h.hot.finish_chunk([Finish(i, "tok", True, _sent(poll=False)) for i in ids])
    assert [d.changed for d in done] == [True] * 3
    assert _script_calls(redis_client) - before == 1
    assert all(h.ledger.lock(i, "other", 5.0) == 0.0 for i in ids)  # each unlocked
    redis_client.close()


def test_redis_writes_a_chunks_shared_keys_once_per_chunk(quiet_redis_url: str) -> None:
    """``deferred.lua``: the active set, the poll schedule and the provider's counter are
    written once per chunk (not once per delivery), with what each delivery's own script would
    have left there; a delivery whose run lost its lock adds nothing."""
    redis_client = redis.Redis.from_url(quiet_redis_url + "/14")
    redis_client.flushdb()
    h = _on_redis(redis_client, FakeClock(T0))
    ids = ["k1", "k2", "k3", "k4"]
    for i in ["warm", *ids]:
        h.ledger.create(i, channel="sms", provider="smspartner")
    h.hot.sending_chunk([("warm", {}), ("missing", {})])  # scripts loaded
    h.hot.finish_chunk([Finish("warm", "t", True), Finish("missing", "t", True)])
    h.hot.begin_chunk([Begin(i, "tok", 5.0, ["smspartner"]) for i in ids])
    calls = _calls(redis_client)
    assert h.hot.sending_chunk([(i, {"batch_tags": "dwb1"}) for i in ids]) == [True] * 4
    used = _calls(redis_client) - calls
    assert used["zadd"] == 1, used  # the active set, once for the chunk
    assert all(redis_client.zscore(h.ledger.keys.active, i) is not None for i in ids)
    h.ledger.unlock("k4", "tok")
    h.ledger.lock("k4", "other-run", 5.0)  # k4's run lost its lock: it writes nothing shared
    calls = _calls(redis_client)
    done = h.hot.finish_chunk([Finish(i, "tok", True, _sent()) for i in ids])
    used = _calls(redis_client) - calls
    assert [d.changed for d in done] == [True, True, True, False]
    assert done[3].lock_lost
    assert (used["zrem"], used["hincrby"], used["zadd"]) == (1, 1, 1), used
    assert used["lpop"] == 0, used  # no orphan list: one EXISTS for the chunk, no LPOP
    assert [redis_client.zscore(h.ledger.keys.active, i) for i in ids[:3]] == [None] * 3
    assert redis_client.zscore(h.ledger.keys.active, "k4") is not None  # still sending
    poll = h.tracking.keys.track_poll
    assert [redis_client.zscore(poll, i) for i in ids] == [T0 + 60] * 3 + [None]
    assert h.metrics.read("smspartner") == {"sent": 3}
    # An orphan list waiting for a chunk's provider message id is still taken.
    orphan = h.tracking.orphan_key("smspartner", "pm-1")
    redis_client.rpush(orphan, "not an event")
    for i in ("k5", "k6"):
        h.ledger.create(i, channel="sms", provider="smspartner")
    h.hot.begin_chunk([Begin(i, "tok", 5.0, ["smspartner"]) for i in ("k5", "k6")])
    calls = _calls(redis_client)
    h.hot.finish_chunk([Finish(i, "tok", True, _sent()) for i in ("k5", "k6")])
    assert (_calls(redis_client) - calls)["lpop"] >= 1
    assert redis_client.exists(orphan) == 0
    redis_client.close()


def test_a_chunk_goes_sending_in_one_step_forward_only(h: H) -> None:
    """``sending_chunk``: each delivery ``sending`` with its own fields, as the ledger's
    ``transition`` does it; a final one (a cancel won) is left as it is and answers False."""
    for i in ("s1", "s2", "done"):
        h.ledger.create(i, channel="sms", provider="smspartner")
    h.ledger.transition("done", "cancelled")
    before = _script_calls(h.redis) if h.redis is not None else 0
    changed = h.hot.sending_chunk(
        [("s1", {"batch_tags": "dwb1"}), ("done", {"batch_tags": "dwb1"}), ("s2", {"a": "1"})]
    )
    assert changed == [True, False, True]
    if h.redis is not None:
        assert _script_calls(h.redis) - before <= 2  # one call (and a load on first use)
    s1, s2, done = h.ledger.get("s1"), h.ledger.get("s2"), h.ledger.get("done")
    assert s1 is not None and s1.state == "sending" and s1.fields["batch_tags"] == "dwb1"
    assert s2 is not None and s2.state == "sending" and s2.fields["a"] == "1"
    assert done is not None and done.state == "cancelled" and "batch_tags" not in done.fields


def test_a_chunk_looks_up_each_deliverys_own_recipients(h: H) -> None:
    """``begin_chunk``: each delivery's suppression key and recipient keys travel with it."""
    hasher = RecipientHasher(b"k" * 32)
    a, b = (hasher.key("sms", n) for n in ("+33612345678", "+33612345679"))
    mail = hasher.key("email", "j@example.com")
    h.suppression.add(Entry("sms", a, "stop", "send", "smspartner"))
    h.suppression.add(Entry("email", mail, "hard_bounce", "tracking", "postal"))
    for i in ("c1", "c2", "c3", "c4"):
        h.ledger.create(i, channel="sms", provider="auto")
    begun = h.hot.begin_chunk(
        [
            Begin("c1", "t", 5.0, ["smspartner"], suppress=("sms", [b, a])),
            Begin("c2", "t", 5.0, ["smspartner"], suppress=("sms", [b])),
            Begin("c3", "t", 5.0, ["postal"], suppress=("email", [mail, a])),
            Begin("c4", "t", 5.0, ["smspartner"]),
        ]
    )
    assert [x.status for x in begun] == ["run"] * 4
    assert [set(x.suppressed) for x in begun] == [{a}, set(), {mail}, set()]
    assert begun[2].suppressed[mail].reason == "hard_bounce"
