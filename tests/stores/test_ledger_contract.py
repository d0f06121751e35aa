"""The ledger contract, run against every implementation.

Record times come from an injected clock in both (the Redis ledger stamps records with the
host's clock, as the service compares them with its own), so the sweeper's notion of age is
exact on both. What Redis times itself (expiry of records and locks) runs on real time there:
``sleep`` advances the fake clock and, for Redis, also sleeps.
"""

from __future__ import annotations

import ast
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from worker.stores.ledger import (
    FINAL_STATES,
    GAVE_UP,
    NOT_BEFORE,
    OUTCOME_UNKNOWN,
    DeadLetters,
    Ledger,
    MemoryLedger,
    Records,
    RedisLedger,
    RunLocks,
    Schedule,
    TagIndex,
)
from worker.stores.ledger.base import DEAD_LETTER_TTL_S, TAG_MEMORY_S, NewRecord

from ._support import FakeClock

T0 = 1_700_000_000.0
SMS = {"provider": "smspartner", "to": ["+33612345678"], "text": "hi"}


@dataclass
class Harness:
    ledger: Ledger
    clock: FakeClock
    sleep: Callable[[float], None]
    make: Callable[..., Ledger]
    """Another ledger on the same data (a second worker), with its own options."""


@pytest.fixture(params=["memory", "redis"])
def h(request: pytest.FixtureRequest) -> Iterator[Harness]:
    clock = FakeClock(T0)
    if request.param == "memory":
        memory = MemoryLedger(clock)

        def make_memory(**options: int) -> Ledger:
            return MemoryLedger(clock, **options)

        yield Harness(memory, clock, clock.advance, make_memory)
    else:
        client: redis.Redis = request.getfixturevalue("redis_client")

        def sleep(seconds: float) -> None:
            clock.advance(seconds)
            time.sleep(seconds)

        def make_redis(**options: int) -> Ledger:
            return RedisLedger(client, clock=clock, **options)

        yield Harness(RedisLedger(client, clock=clock), clock, sleep, make_redis)


def new(ledger: Ledger, delivery_id: str, extra: dict[str, str] | None = None) -> None:
    ledger.create(delivery_id, channel="sms", provider="smspartner", extra=extra)


# -- records, idempotency, forward-only states (from the former tests/unit/test_ledger.py) ------


def test_create_then_get(h: Harness) -> None:
    delivery_id, created = h.ledger.create("d1", channel="sms", provider="smspartner")
    assert (delivery_id, created) == ("d1", True)
    record = h.ledger.get("d1")
    assert record is not None
    assert (record.state, record.channel, record.provider, record.attempts) == (
        "queued",
        "sms",
        "smspartner",
        0,
    )
    assert record.created_at > 0
    assert record.created_at == record.updated_at == T0
    assert (record.throttled, record.final, record.result) == (0, False, None)


def test_create_many_answers_each_record_in_order_and_get_many_reads_them(h: Harness) -> None:
    """A campaign's chunk: one call creates every record, an idempotency key already known (or
    repeated inside the chunk) answers the first delivery, and ``get_many`` reads them back in
    order (``None`` for an unknown id)."""
    h.ledger.create("old", channel="sms", provider="smspartner", idempotency_key="k-old")
    answers = h.ledger.create_many(
        [
            NewRecord("c1", "sms", "smspartner", extra={"message": "{}"}),
            NewRecord("c2", "sms", "smspartner", idempotency_key="k-old"),
            NewRecord("c3", "sms", "smspartner", idempotency_key="k-new"),
            NewRecord("c4", "sms", "smspartner", idempotency_key="k-new"),
        ]
    )
    assert answers == [("c1", True), ("old", False), ("c3", True), ("c3", False)]
    got = h.ledger.get_many(["c3", "nope", "c1", "old"])
    assert [r.delivery_id if r else None for r in got] == ["c3", None, "c1", "old"]
    first = got[2]
    assert first is not None and first.state == "queued" and first.fields["message"] == "{}"
    assert h.ledger.get("c2") is None and h.ledger.get("c4") is None
    assert h.ledger.create_many([NewRecord("c1", "sms", "smspartner")]) == [("c1", False)]


def test_same_idempotency_key_returns_first_delivery(h: Harness) -> None:
    first = h.ledger.create("d1", channel="email", provider="postal", idempotency_key="order-1")
    second = h.ledger.create("d2", channel="email", provider="postal", idempotency_key="order-1")
    assert first == ("d1", True)
    assert second == ("d1", False)
    assert h.ledger.get("d2") is None
    record = h.ledger.get("d1")
    assert record is not None and record.fields["idempotency_key"] == "order-1"


def test_idempotency_keys_are_per_channel(h: Harness) -> None:
    h.ledger.create("d1", channel="email", provider="postal", idempotency_key="k")
    assert h.ledger.create("d2", channel="sms", provider="smspartner", idempotency_key="k") == (
        "d2",
        True,
    )


def test_creating_a_known_id_keeps_the_record(h: Harness) -> None:
    h.ledger.create("d1", channel="sms", provider="smspartner", extra={"task_name": "a"})
    h.ledger.transition("d1", "sending")
    again = h.ledger.create("d1", channel="email", provider="postal", extra={"task_name": "b"})
    assert again == ("d1", False)
    record = h.ledger.get("d1")
    assert record is not None
    assert (record.state, record.channel, record.fields["task_name"]) == ("sending", "sms", "a")


def test_extra_fields_are_kept_as_text(h: Harness) -> None:
    h.ledger.create(
        "d1",
        channel="sms",
        provider="auto",
        extra={"task_name": "tasks.send_sms", "message": '{"a": 1}'},
    )
    record = h.ledger.get("d1")
    assert record is not None
    assert record.fields["task_name"] == "tasks.send_sms"
    assert record.fields["message"] == '{"a": 1}'
    assert record.to_dict()["task_name"] == "tasks.send_sms"


def test_transitions_only_move_forward(h: Harness) -> None:
    ledger = h.ledger
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
    assert record.fields["sent_at"] == "1"


def test_a_final_state_may_be_written_again_with_new_fields(h: Harness) -> None:
    new(h.ledger, "d1")
    assert h.ledger.transition("d1", "failed", error_kind="transient")
    h.clock.advance(5)
    assert h.ledger.transition("d1", "failed", error_kind="unknown_outcome")
    record = h.ledger.get("d1")
    assert record is not None
    assert (record.fields["error_kind"], record.updated_at) == ("unknown_outcome", T0 + 5)


def test_every_final_state_is_final(h: Harness) -> None:
    for state in sorted(FINAL_STATES):
        new(h.ledger, state)
        assert h.ledger.transition(state, state)
        assert not h.ledger.transition(state, "waiting")
        record = h.ledger.get(state)
        assert record is not None and record.final and record.state == state


def test_transition_of_unknown_delivery_changes_nothing(h: Harness) -> None:
    assert not h.ledger.transition("missing", "sending")
    assert h.ledger.get("missing") is None


def test_forget_releases_the_idempotency_key(h: Harness) -> None:
    h.ledger.create("d1", channel="sms", provider="smspartner", idempotency_key="k")
    h.ledger.forget("d1", channel="sms", idempotency_key="k")
    assert h.ledger.get("d1") is None
    assert h.ledger.create("d2", channel="sms", provider="smspartner", idempotency_key="k") == (
        "d2",
        True,
    )


def test_counters(h: Harness) -> None:
    new(h.ledger, "d1")
    assert h.ledger.incr("d1", "attempts") == 1
    assert h.ledger.incr("d1", "attempts") == 2
    assert h.ledger.incr("d1", "throttled") == 1
    assert h.ledger.incr("d1", "runs_unfinished") == 1
    record = h.ledger.get("d1")
    assert record is not None
    assert (record.attempts, record.throttled) == (2, 1)


def test_set_fields_and_the_stored_result(h: Harness) -> None:
    new(h.ledger, "d1")
    h.ledger.set_fields("d1")  # nothing to set: nothing changes
    h.ledger.set_fields("d1", runs_unfinished="0", result='{"status": "sent"}')
    record = h.ledger.get("d1")
    assert record is not None
    assert record.fields["runs_unfinished"] == "0"
    assert record.result == {"status": "sent"}
    assert record.to_dict()["result"] == {"status": "sent"}


def test_typed_marks_name_what_happened(h: Harness) -> None:
    """The flow's marks (``record_provider``, ``record_result``, ``record_send_at``,
    ``mark_outcome_unknown``/``known``) write the record's fields on both backends."""
    new(h.ledger, "d1")
    h.ledger.record_provider("d1", "voicepartner")
    h.ledger.record_send_at("d1", T0 + 60)
    h.ledger.mark_outcome_unknown("d1", ask_at=T0 + 5, gave_up='{"kind": "transient"}')
    record = h.ledger.get("d1")
    assert record is not None
    assert record.provider == "voicepartner"
    assert float(record.fields["send_at"]) == T0 + 60
    assert record.fields[OUTCOME_UNKNOWN] == "1"
    assert float(record.fields[NOT_BEFORE]) == T0 + 5
    assert record.fields[GAVE_UP] == '{"kind": "transient"}'
    h.ledger.mark_outcome_known("d1")
    record = h.ledger.get("d1")
    assert record is not None and record.fields[OUTCOME_UNKNOWN] == "0"
    assert record.state == "queued"  # marks never move the state
    assert h.ledger.bury("d1", reason="r", task_name="tasks.send_sms", message=SMS)
    h.ledger.record_result("d1", '{"status": "dead"}')
    record = h.ledger.get("d1")
    assert record is not None and record.state == "dead"
    assert record.result == {"status": "dead"}


def test_a_mark_on_an_unknown_delivery_creates_nothing(h: Harness) -> None:
    h.ledger.record_provider("nope", "smspartner")
    h.ledger.mark_outcome_unknown("nope", ask_at=T0)
    h.ledger.mark_outcome_known("nope")
    h.ledger.record_result("nope", "{}")
    h.ledger.record_send_at("nope", T0)
    assert h.ledger.get("nope") is None


def test_records_and_idempotency_keys_expire(h: Harness) -> None:
    ledger = h.make(ttl_s=1)
    ledger.create("d1", channel="sms", provider="smspartner", idempotency_key="k")
    h.sleep(1.2)
    assert ledger.get("d1") is None
    assert ledger.create("d2", channel="sms", provider="smspartner", idempotency_key="k") == (
        "d2",
        True,
    )


# -- the send lock -------------------------------------------------------------------------------


def test_the_send_lock_admits_one_holder_until_released(h: Harness) -> None:
    assert h.ledger.lock("d1", "run-a", 5.0) == 0.0
    wait = h.ledger.lock("d1", "run-b", 5.0)
    assert 4.0 < wait <= 5.0
    h.ledger.unlock("d1", "run-b")  # not its lock: nothing happens
    assert h.ledger.lock("d1", "run-b", 5.0) > 0
    h.ledger.unlock("d1", "run-a")
    assert h.ledger.lock("d1", "run-b", 5.0) == 0.0
    assert h.ledger.lock("other", "run-a", 5.0) == 0.0  # per delivery


def test_the_send_lock_frees_itself_when_its_holder_died(h: Harness) -> None:
    assert h.ledger.lock("d1", "dead-run", 0.2) == 0.0
    assert 0 < h.ledger.lock("d1", "run-b", 0.2) <= 0.2
    h.sleep(0.3)
    assert h.ledger.lock("d1", "run-b", 0.2) == 0.0


# -- what the sweeper sees -----------------------------------------------------------------------


def test_stale_lists_unfinished_deliveries_oldest_first(h: Harness) -> None:
    for name in ("old", "older", "young", "done", "parked"):
        new(h.ledger, name)
        h.clock.advance(1)
    h.ledger.touch("old")  # updated at T0 + 5
    h.ledger.transition("done", "sent")
    h.ledger.transition("parked", "parked")
    h.clock.advance(100)
    assert h.ledger.stale(101) == ["older", "young"]
    assert h.ledger.stale(0) == ["older", "young", "old"]
    assert h.ledger.stale(0, limit=1) == ["older"]
    assert h.ledger.stale(1000) == []


def test_a_transition_refreshes_the_place_in_the_active_set(h: Harness) -> None:
    new(h.ledger, "d1")
    h.clock.advance(60)
    assert h.ledger.stale(30) == ["d1"]
    h.ledger.transition("d1", "waiting", waiting_reason="throttled")
    assert h.ledger.stale(30) == []
    record = h.ledger.get("d1")
    assert record is not None and record.updated_at == T0 + 60


def test_touch_and_untrack(h: Harness) -> None:
    new(h.ledger, "d1")
    new(h.ledger, "d2")
    h.clock.advance(60)
    h.ledger.touch("d1")
    record = h.ledger.get("d1")
    assert record is not None and record.updated_at == T0 + 60
    assert h.ledger.stale(30) == ["d2"]
    h.ledger.untrack("d2")
    assert h.ledger.stale(0) == ["d1"]
    assert h.ledger.get("d2") is not None  # the record stays; only the sweeper forgets it
    h.ledger.touch("d2")  # touching an untracked delivery does not track it again
    assert h.ledger.stale(0) == ["d1"]


def test_forget_leaves_nothing_to_sweep(h: Harness) -> None:
    new(h.ledger, "d1")
    h.ledger.forget("d1", channel="sms", idempotency_key=None)
    assert h.ledger.stale(0) == []


# -- dead letters --------------------------------------------------------------------------------


def test_bury_then_revive_for_a_replay(h: Harness) -> None:
    new(h.ledger, "poison", extra={"task_name": "tasks.send_sms"})
    h.ledger.transition("poison", "sending")
    h.ledger.incr("poison", "attempts")
    h.ledger.set_fields("poison", runs_unfinished="3", result='{"status": "dead"}')
    assert h.ledger.bury(
        "poison", reason="worker died 3 times", task_name="tasks.send_sms", message=SMS
    )
    record = h.ledger.get("poison")
    assert record is not None and record.state == "dead"
    assert (record.fields["error_kind"], record.fields["dead_reason"]) == (
        "dead_letter",
        "worker died 3 times",
    )
    assert h.ledger.stale(0) == []
    letters = h.ledger.dead_letters()
    assert list(letters) == ["poison"]
    assert letters["poison"] == {
        "task_name": "tasks.send_sms",
        "message": SMS,
        "reason": "worker died 3 times",
        "at": T0,
    }

    h.clock.advance(10)
    entry = h.ledger.revive("poison")
    assert entry == letters["poison"]
    record = h.ledger.get("poison")
    assert record is not None
    assert (record.state, record.attempts, record.updated_at) == ("queued", 0, T0 + 10)
    assert record.fields["runs_unfinished"] == "0"
    assert record.result is None
    assert h.ledger.stale(0) == ["poison"]
    assert h.ledger.dead_letters() == {}
    assert h.ledger.revive("poison") is None


def test_a_finished_delivery_is_not_buried(h: Harness) -> None:
    new(h.ledger, "d1")
    h.ledger.transition("d1", "sent")
    assert not h.ledger.bury("d1", reason="late", task_name="tasks.send_sms", message=SMS)
    assert h.ledger.dead_letters() == {}
    assert h.ledger.revive("unknown") is None


def test_a_message_set_aside_is_kept_redacted_and_never_replayed(h: Harness) -> None:
    outline = {"to": ["str"], "text": "str"}
    h.ledger.set_aside("bad", reason="too deep", task_name="tasks.send_sms", outline=outline)
    letters = h.ledger.dead_letters()
    assert letters == {
        "bad": {
            "task_name": "tasks.send_sms",
            "message": None,
            "outline": outline,
            "reason": "too deep",
            "redacted": True,
            "at": T0,
        }
    }
    assert h.ledger.revive("bad") is None
    assert list(h.ledger.dead_letters()) == ["bad"]


# -- caller-chosen tags (SMS Partner reconciliation, docs/providers/smspartner.md §1.5) ------------


def test_a_tag_used_by_another_delivery_to_the_same_number_is_seen(h: Harness) -> None:
    a, b = "+33612345678", "+33698765432"
    h.ledger.note_tag_use("smspartner", "promo", [a], "d1", T0)
    h.ledger.note_tag_use("smspartner", "promo", [a, b], "d2", T0 + 5)
    used = h.ledger.tag_used_by_others
    assert used("smspartner", "promo", [a], "d1", T0)
    assert used("smspartner", "promo", [b], "d1", T0)
    assert not used("smspartner", "promo", [b], "d2", T0)  # only its own use
    assert not used("smspartner", "promo", ["+33600000000"], "d1", T0)  # another number
    assert not used("smspartner", "promo", [a], "d1", T0 + 6)  # before the window
    assert used("smspartner", "promo", [a], "d1", T0 + 5)  # the window's start counts
    assert not used("smspartner", "other", [a], "d1", T0)  # another tag
    assert not used("mailpartner", "promo", [a], "d1", T0)  # another provider


def test_tag_uses_are_forgotten_after_a_day(h: Harness) -> None:
    a = "+33612345678"
    h.ledger.note_tag_use("smspartner", "promo", [a], "old", T0)
    later = T0 + TAG_MEMORY_S + 1
    h.ledger.note_tag_use("smspartner", "promo", [a], "new", later)
    assert not h.ledger.tag_used_by_others("smspartner", "promo", [a], "new", 0.0)


# -- concurrency -----------------------------------------------------------------------------------


def test_one_creation_wins_a_race_on_an_idempotency_key(h: Harness) -> None:
    results: list[tuple[str, bool]] = []
    barrier = threading.Barrier(8)

    def create(n: int) -> None:
        barrier.wait()
        results.append(
            h.ledger.create(f"d{n}", channel="sms", provider="smspartner", idempotency_key="k")
        )

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r[1]]
    assert len(winners) == 1
    assert {r[0] for r in results} == {winners[0][0]}


# -- the schedule and cancellation (worker.scheduling) -------------------------------------------

MESSAGE = {"task_name": "tasks.send_sms", "message": '{"text": "hi"}', "queue": "delivery"}


def test_hold_puts_a_delivery_on_the_schedule_and_out_of_the_sweepers_sight(h: Harness) -> None:
    new(h.ledger, "d1", MESSAGE)
    assert h.ledger.hold("d1", T0 + 60, result='{"status": "scheduled"}')
    record = h.ledger.get("d1")
    assert record is not None and record.state == "scheduled" and not record.final
    assert record.fields["result"] == '{"status": "scheduled"}'
    assert h.ledger.next_due() == T0 + 60 and h.ledger.schedule_size() == 1
    h.clock.advance(4000)
    assert h.ledger.stale(0) == []  # the mover watches it, not the sweeper
    assert not h.ledger.hold("missing", T0)


def test_claim_due_leases_each_entry_to_one_mover(h: Harness) -> None:
    for i in range(3):
        new(h.ledger, f"d{i}", MESSAGE)
        h.ledger.hold(f"d{i}", T0 + 10 * i)
    assert h.ledger.claim_due(T0 - 1, 5.0) == []
    first = h.ledger.claim_due(T0 + 10, 5.0)
    assert [e.delivery_id for e in first] == ["d0", "d1"]
    assert (first[0].task_name, first[0].message, first[0].queue) == (
        "tasks.send_sms",
        '{"text": "hi"}',
        "delivery",
    )
    # Another mover's pass (the claim is one atomic step; Redis: another connection would do
    # the same script) finds nothing until the lease ends.
    assert h.ledger.claim_due(T0 + 12, 5.0) == []  # leased until T0 + 15
    again = h.ledger.claim_due(T0 + 15, 5.0)  # the lease ended: its run never started
    assert [e.delivery_id for e in again] == ["d0", "d1"]
    assert [e.claimed_before for e in first] == [0, 0]
    assert [e.claimed_before for e in again] == [1, 1]
    h.ledger.hold("d0", T0 + 100)  # held again (an early copy): a new first claim
    later = {e.delivery_id: e.claimed_before for e in h.ledger.claim_due(T0 + 100, 5.0)}
    assert later == {"d0": 0, "d1": 2, "d2": 0}


def test_hold_many_holds_each_in_one_call_and_skips_a_final_one(h: Harness) -> None:
    for i in range(3):
        new(h.ledger, f"c{i}", MESSAGE)
    h.ledger.transition("c1", "cancelled")
    holds = [(f"c{i}", T0 + 60, {"scheduled_for": repr(T0 + 60)}) for i in range(3)]
    holds.append(("missing", T0 + 60, {}))
    assert h.ledger.hold_many(holds) == [True, False, True, False]
    assert h.ledger.hold_many([]) == []
    for i in (0, 2):
        record = h.ledger.get(f"c{i}")
        assert record is not None and record.state == "scheduled"
        assert record.fields["scheduled_for"] == repr(T0 + 60)
    cancelled = h.ledger.get("c1")
    assert cancelled is not None and cancelled.state == "cancelled"
    assert h.ledger.schedule_size() == 2 and h.ledger.next_due() == T0 + 60


def test_claim_due_answers_a_campaign_messages_chunk_size(h: Harness) -> None:
    new(h.ledger, "single", MESSAGE)
    new(h.ledger, "campaign", {**MESSAGE, "chunk": "500"})
    h.ledger.hold("single", T0)
    h.ledger.hold("campaign", T0)
    chunks = {e.delivery_id: e.chunk for e in h.ledger.claim_due(T0 + 1, 5.0)}
    assert chunks == {"single": "", "campaign": "500"}


def test_leaving_scheduled_takes_the_delivery_off_the_schedule(h: Harness) -> None:
    new(h.ledger, "d1", MESSAGE)
    h.ledger.hold("d1", T0)
    assert h.ledger.transition("d1", "sending")
    assert h.ledger.schedule_size() == 0
    assert h.ledger.claim_due(T0 + 100, 5.0) == []
    assert h.ledger.stale(0) == ["d1"]  # in flight: the sweeper's again


def test_an_entry_whose_record_is_no_longer_scheduled_is_dropped(h: Harness) -> None:
    new(h.ledger, "d1", MESSAGE)
    h.ledger.hold("d1", T0)
    h.ledger.set_fields("d1", state="sent")  # as if written by an older release
    assert h.ledger.claim_due(T0 + 1, 5.0) == []
    assert h.ledger.schedule_size() == 0


def test_cancel_is_final_and_refused_once_sending_or_finished(h: Harness) -> None:
    for name in ("queued", "waiting", "scheduled", "sending", "sent"):
        new(h.ledger, name, MESSAGE)
        if name == "scheduled":
            h.ledger.hold(name, T0 + 60)
        elif name != "queued":
            h.ledger.transition(name, name)
    answers = {
        n: h.ledger.cancel(n, result='{"status": "cancelled"}')
        for n in ("queued", "waiting", "scheduled", "sending", "sent", "nope")
    }
    assert {n: (a.outcome, a.state) for n, a in answers.items()} == {
        "queued": ("cancelled", "queued"),
        "waiting": ("cancelled", "waiting"),
        "scheduled": ("cancelled", "scheduled"),
        "sending": ("sending", "sending"),
        "sent": ("final", "sent"),
        "nope": ("unknown", ""),
    }
    record = h.ledger.get("scheduled")
    assert record is not None and record.state == "cancelled" and record.final
    assert record.fields["result"] == '{"status": "cancelled"}' and "cancelled_at" in record.fields
    assert h.ledger.schedule_size() == 0 and "cancelled" in FINAL_STATES
    # Final: no send gate can move it on, and a second cancel says so.
    assert not h.ledger.transition("scheduled", "sending")
    assert not h.ledger.hold("scheduled", T0)
    assert h.ledger.cancel("scheduled", result="{}").outcome == "final"


def test_a_delivery_scheduled_at_its_provider_is_cancelled_there_first(h: Harness) -> None:
    new(h.ledger, "d1", MESSAGE)
    h.ledger.hold("d1", T0 + 600, provider_scheduled="1")
    assert h.ledger.cancel("d1", result="{}").outcome == "provider"
    assert h.ledger.get("d1").state == "scheduled"  # type: ignore[union-attr]
    assert h.ledger.cancel("d1", result="{}", at_provider=True).outcome == "cancelled"


def _race(ledger: Ledger, delivery_id: str) -> dict[str, bool]:
    """A send's gate and a cancel started together on one scheduled delivery."""
    won: dict[str, bool] = {}
    barrier = threading.Barrier(2)

    def gate() -> None:
        barrier.wait()
        won["send"] = ledger.transition(delivery_id, "sending")

    def cancel() -> None:
        barrier.wait()
        won["cancel"] = ledger.cancel(delivery_id, result="{}").outcome == "cancelled"

    threads = [threading.Thread(target=gate), threading.Thread(target=cancel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def test_cancel_and_send_gate_race_to_exactly_one_winner(h: Harness) -> None:
    for round_ in range(30):
        delivery_id = f"r{round_}"
        new(h.ledger, delivery_id, MESSAGE)
        h.ledger.hold(delivery_id, T0)
        won = _race(h.ledger, delivery_id)
        assert won["send"] != won["cancel"], won
        state = h.ledger.get(delivery_id).state  # type: ignore[union-attr]
        assert state == ("sending" if won["send"] else "cancelled")


# -- nothing grows forever -----------------------------------------------------------------------


def test_writes_to_an_expired_record_never_bring_it_back(h: Harness) -> None:
    """``touch``, ``incr`` and ``set_fields`` after the record expired would recreate it with no
    TTL (HSET, HINCRBY): a key that never goes away."""
    ledger = h.make(ttl_s=1)
    new(ledger, "d1")
    h.sleep(1.2)
    ledger.touch("d1")
    assert ledger.incr("d1", "attempts") == 0
    ledger.set_fields("d1", runs_unfinished="0")
    assert ledger.get("d1") is None


def test_a_revived_record_that_had_expired_expires_again(h: Harness) -> None:
    ledger = h.make(ttl_s=1)
    new(ledger, "d1")
    assert ledger.bury("d1", reason="r", task_name="tasks.send_sms", message=SMS)
    h.sleep(1.2)
    assert ledger.get("d1") is None
    assert ledger.revive("d1") is not None
    revived = ledger.get("d1")
    assert revived is not None and revived.state == "queued"
    h.sleep(1.2)
    assert ledger.get("d1") is None


def test_dead_letters_are_capped_oldest_first(h: Harness) -> None:
    h.ledger.dead_letter_cap = 3  # type: ignore[attr-defined]
    for i in range(5):
        h.ledger.set_aside(f"d{i}", reason="r", task_name="tasks.send_sms", outline={})
        h.clock.advance(1)
    assert sorted(h.ledger.dead_letters()) == ["d2", "d3", "d4"]


def test_dead_letters_are_purged_by_age_or_all(h: Harness) -> None:
    for i in range(3):
        h.ledger.set_aside(f"d{i}", reason="r", task_name="tasks.send_sms", outline={})
        h.clock.advance(3600)
    # Set aside at T0, T0+1h, T0+2h; now T0+3h.
    assert h.ledger.purge_dead(older_than_s=2 * 3600) == 2
    assert sorted(h.ledger.dead_letters()) == ["d2"]
    assert h.ledger.purge_dead(older_than_s=2 * 3600) == 0
    assert h.ledger.purge_dead() == 1
    assert h.ledger.dead_letters() == {}


def test_the_dead_letters_key_expires_in_redis(redis_client: redis.Redis) -> None:
    ledger = RedisLedger(redis_client)
    ledger.set_aside("d1", reason="r", task_name="tasks.send_sms", outline={})
    assert 0 < redis_client.ttl("dw:dead") <= DEAD_LETTER_TTL_S
    ledger.set_fields("gone", state="x")
    ledger.touch("gone")
    assert redis_client.exists(ledger.key("gone")) == 0


# -- a run's first and last ledger steps (open_run, close_run) -----------------------------------


def test_open_run_takes_the_lock_and_counts_the_run_and_close_run_gives_both_back(
    h: Harness,
) -> None:
    led = h.ledger
    assert led.open_run("nope", "t1", 30) == (None, 0.0, 0)
    led.create("d1", channel="sms", provider="smspartner")
    record, busy_s, runs = led.open_run("d1", "t1", 30)
    assert record is not None and record.state == "queued"
    assert (busy_s, runs) == (0.0, 1)
    assert record.fields["runs_unfinished"] == "1"
    assert led.holds("d1", "t1")
    # A second run meanwhile: busy, nothing counted.
    record, busy_s, runs = led.open_run("d1", "t2", 30)
    assert record is not None and busy_s > 0 and runs == 0
    assert led.close_run("d1", "t1", reset_runs=True, state="sent", fields={"sent_at": "1"}) == (
        True,
        True,
    )
    got = led.get("d1")
    assert got is not None
    assert (got.state, got.fields["sent_at"], got.fields["runs_unfinished"]) == ("sent", "1", "0")
    assert not led.holds("d1", "t1")
    # Final: no lock taken, no run counted.
    record, busy_s, runs = led.open_run("d1", "t3", 30)
    assert record is not None and record.final and (busy_s, runs) == (0.0, 0)
    assert not led.holds("d1", "t3")


def test_close_run_without_the_lock_writes_only_the_late_outcome(h: Harness) -> None:
    led = h.ledger
    led.create("d1", channel="sms", provider="smspartner")
    led.open_run("d1", "t1", 30)
    held, changed = led.close_run(
        "d1", "other", reset_runs=True, state="sent", late={"late_outcome": "seen"}
    )
    assert (held, changed) == (False, False)
    got = led.get("d1")
    assert got is not None
    assert got.state == "queued"
    assert got.fields["late_outcome"] == "seen"
    assert got.fields["runs_unfinished"] == "1"
    assert led.holds("d1", "t1")
    # Nothing is written on a record that does not exist.
    assert led.close_run("gone", "t1", reset_runs=False, late={"late_outcome": "x"}) == (
        False,
        False,
    )
    assert led.get("gone") is None


# -- the roles -----------------------------------------------------------------------------------


def test_the_ledger_is_its_roles_and_this_suite_covers_every_method_of_each() -> None:
    """``Ledger`` is the union of its roles (records, run locks, schedule, dead letters, tag
    index), no method in two; both backends are each role; every method of every role is
    called by this contract suite, so each role's contract runs on both backends."""
    roles = (Records, RunLocks, Schedule, DeadLetters, TagIndex)
    methods = {
        role.__name__: {n for n, v in vars(role).items() if callable(v) and not n.startswith("_")}
        for role in roles
    }
    every = [m for ms in methods.values() for m in ms]
    assert len(every) == len(set(every)), methods
    whole = {n for n in dir(Ledger) if not n.startswith("_") and callable(getattr(Ledger, n))}
    assert whole == set(every), whole ^ set(every)
    for impl in (MemoryLedger, RedisLedger):
        assert all(role in impl.__mro__ for role in roles), impl
    called = {
        node.func.attr
        for node in ast.walk(ast.parse(Path(__file__).read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    for role, ms in methods.items():
        assert ms <= called, (role, ms - called)
