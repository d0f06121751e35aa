"""Campaigns (``worker.producer.send_many``, ``tasks.send_chunk``, ``tasks.send_many``) over real
processes: a real ``celery worker``, redis-server and the sandbox's SMS Partner (``/send``,
``/bulk-send``, status by tag; ``…0014`` is STOP-listed)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from worker.campaign import SendManyResult
from worker.models import InvalidMessage
from worker.stores import FINAL_STATES
from worker.stores.keys import Keys

from .test_batching import STOP, soak

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(redis_url: str, sandbox_url: str, stack_env: dict[str, str], tmp_path: Path) -> Any:
    env = {
        **stack_env,
        **soak.FAST_ENV,
        "DELIVERY_BROKER_URL": f"{redis_url}/10",
        "DELIVERY_RESULT_BACKEND": f"{redis_url}/11",
    }
    return soak.Stack(env=env, sandbox_url=sandbox_url, workdir=tmp_path)


def _sms(number: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"provider": "smspartner", "to": [number], "text": text, **extra}


def _numbers(block: int, n: int) -> list[str]:
    return [f"+3361{block:03d}{i:04d}" for i in range(101, 101 + 2 * n, 2)]


def _records(run: Any) -> int:
    return sum(1 for _ in run.redis.scan_iter(match=Keys().delivery("*")))


def _queued(run: Any) -> int:
    """Chunks waiting: Celery messages in the default queue (each priority's list) and lane
    entries (with lanes on, a chunk waits in its lane until a dispatcher publishes it)."""
    published = sum(
        int(run.redis.llen(k)) for k in run.redis.scan_iter(match="delivery*", _type="list")
    )
    return published + _in_lanes(run)


def _in_lanes(run: Any) -> int:
    return sum(int(run.redis.zcard(k)) for k in run.redis.scan_iter(match=Keys().lane("*", "*")))


def _copies(run: Any) -> Counter[str]:
    return Counter(n for m in run.admin.messages("smspartner") for n in m["recipients"])


def test_send_many_validates_everything_first_and_skip_enqueues_the_valid_ones(
    stack: Any,
) -> None:
    with soak.Run(stack, "campaign-validate") as run:
        numbers = _numbers(1, 4)
        messages: list[Any] = [_sms(n, f"Code {i}") for i, n in enumerate(numbers)]
        messages[1] = {"provider": "smspartner", "to": ["not a number"], "text": "x"}
        messages[3] = {"provider": "smspartner", "to": [numbers[3]]}  # no text
        with pytest.raises(InvalidMessage) as raised:
            run.producer.send_many("sms", messages)
        fields = [e["field"] for e in raised.value.errors]
        assert any(f.startswith("[1].to") for f in fields), fields
        assert any(f.startswith("[3].") for f in fields), fields
        assert not any(f.startswith(("[0]", "[2]")) for f in fields), fields
        assert _queued(run) == 0 and _records(run) == 0  # nothing enqueued

        result = run.producer.send_many("sms", messages, on_invalid="skip")
        assert isinstance(result, SendManyResult)
        assert sorted(result.errors) == [1, 3]
        assert result.ids[1] is None and result.ids[3] is None
        assert len(result.enqueued) == 2 and _records(run) == 2
        assert _queued(run) == 1  # one Celery message for the chunk

        run.start_workers(1, 2)
        assert set(run.wait_final(result.enqueued, 30).values()) == {"sent"}
        assert [r["route"] for r in run.admin.requests("smspartner")] == ["/bulk-send"]
        assert _copies(run) == Counter([numbers[0], numbers[2]])


def test_idempotency_keys_answer_the_earlier_delivery(stack: Any) -> None:
    with soak.Run(stack, "campaign-idem") as run:
        numbers = _numbers(2, 3)
        messages = [_sms(n, f"Code {i}", idempotency_key=f"k{i}") for i, n in enumerate(numbers)]
        first = run.producer.send_many("sms", messages)
        again = run.producer.send_many(
            "sms", [messages[1], _sms(numbers[0], "new", idempotency_key="k9")]
        )
        assert again[0] == first[1] and again[1] not in first
        assert _queued(run) == 2  # the second chunk holds only the new message
        run.start_workers(1, 2)
        assert set(run.wait_final([*first, again[1]], 30).values()) == {"sent"}
        assert sum(_copies(run).values()) == 4


def test_a_refused_item_fails_only_its_message_and_each_result_is_its_own(stack: Any) -> None:
    with soak.Run(stack, "campaign-refusal") as run:
        run.start_workers(1, 2)
        good = _numbers(3, 5)
        ids = run.producer.send_many(
            "sms", [_sms(n, f"Code {i}") for i, n in enumerate([*good, STOP])]
        )
        results = run.producer.wait_many(ids, 30)
        assert [results[d]["status"] for d in ids] == ["sent"] * 5 + ["failed"]
        assert results[ids[5]]["error"]["kind"] == "recipient_rejected"
        assert [r["route"] for r in run.admin.requests("smspartner")] == ["/bulk-send"]
        (accepted,) = run.admin.messages("smspartner")
        assert sorted(accepted["recipients"]) == sorted(good)
        for delivery_id in ids:
            result = run.client.AsyncResult(delivery_id).get(timeout=10)
            assert result["delivery_id"] == delivery_id
            ledger_result = results[delivery_id]
            assert {k: v for k, v in ledger_result.items() if v is not None} == result
            record = run.ledger.get(delivery_id)
            assert record is not None and record.attempts == 1


def test_a_lost_answer_is_reconciled_per_message(stack: Any) -> None:
    with soak.Run(stack, "campaign-lost") as run:
        run.start_workers(1, 2)
        rule = {"provider": "smspartner", "path": "/bulk-send", "action": "accept_then_drop"}
        run.admin.set_faults([{**rule, "first_n": 1}])
        good = _numbers(4, 5)
        ids = run.producer.send_many(
            "sms", [_sms(n, f"Code {i}") for i, n in enumerate([*good, STOP])]
        )
        states = run.wait_final(ids, 45)
        assert list(states.values()) == ["sent"] * 5 + ["failed"]
        routes = Counter(r["route"] for r in run.admin.requests("smspartner"))
        assert routes["/bulk-send"] == 1, routes
        assert routes["/bulk-status-by-tag"] >= 1, routes
        assert _copies(run) == Counter(good)  # each accepted exactly once
        for delivery_id in ids[:5]:
            assert run.client.AsyncResult(delivery_id).get(timeout=10)["status"] == "sent"


def test_cancelling_one_message_of_a_chunk_before_it_leaves(stack: Any) -> None:
    with soak.Run(stack, "campaign-cancel") as run:
        numbers = _numbers(5, 4)
        ids = run.producer.send_many("sms", [_sms(n, "Rappel") for n in numbers])
        assert run.producer.cancel(ids[2]).answer == "cancelled"
        run.start_workers(1, 2)
        states = run.wait_final(ids, 30)
        assert list(states.values()) == ["sent", "sent", "cancelled", "sent"]
        assert _copies(run) == Counter([numbers[0], numbers[1], numbers[3]])
        assert run.client.AsyncResult(ids[2]).get(timeout=10)["status"] == "cancelled"


def test_a_scheduled_chunk_is_held_until_its_time(stack: Any) -> None:
    t = datetime.now(UTC) + timedelta(minutes=10)
    when = t.replace(second=0, microsecond=0) + timedelta(minutes=(5 - t.minute % 5) % 5)
    schedule = {"send_at": when.isoformat(), "deadline": (when + timedelta(hours=1)).isoformat()}
    with soak.Run(stack, "campaign-scheduled") as run:
        run.start_workers(1, 2)
        ids = run.producer.send_many("sms", [_sms(n, "Rappel", **schedule) for n in _numbers(6, 3)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if set(run.states(ids).values()) == {"scheduled"}:
                break
            time.sleep(0.2)
        assert set(run.states(ids).values()) == {"scheduled"}
        for delivery_id in ids:
            assert run.client.AsyncResult(delivery_id).state == "SCHEDULED"
        for m in run.admin.messages("smspartner"):  # any request made carries the schedule
            assert m["fields"].get("minute") == when.minute


def test_send_many_by_name(stack: Any) -> None:
    with soak.Run(stack, "campaign-byname") as run:
        run.start_workers(1, 2)
        numbers = _numbers(7, 3)
        bad = {"provider": "smspartner", "to": ["nope"], "text": "x"}
        payload = {
            "channel": "sms",
            "messages": [_sms(numbers[0], "a"), bad, _sms(numbers[2], "b")],
        }
        answer = run.client.send_task("tasks.send_many", args=[payload]).get(timeout=60)
        ids = answer["delivery_ids"]
        assert len(ids) == 3 and list(answer["errors"]) == ["1"]
        assert "to" in answer["errors"]["1"]
        states = run.wait_final(ids, 30)
        assert list(states.values()) == ["sent", "failed", "sent"]
        failed = run.client.AsyncResult(ids[1]).get(timeout=10)
        assert failed["error"]["kind"] == "invalid_message"
        assert _copies(run) == Counter([numbers[0], numbers[2]])
        refused = run.client.send_task("tasks.send_many", args=[{"channel": "fax"}]).get(timeout=30)
        assert "channel" in refused["refused"]


def test_sigkill_mid_chunk_loses_and_duplicates_nothing(stack: Any) -> None:
    with soak.Run(stack, "campaign-sigkill") as run:
        procs = run.start_workers(1, 2)
        run.admin.set_faults([{"provider": "*", "action": "latency", "delay_ms": 600}])
        numbers = _numbers(8, 60)
        ids = run.producer.send_many("sms", [_sms(n, f"Code {i}") for i, n in enumerate(numbers)])
        kills = 0
        deadline = time.monotonic() + 60
        while kills < 2 and time.monotonic() < deadline:
            states = Counter(run.states(ids).values())
            if sum(states[s] for s in FINAL_STATES) == len(ids):
                break
            if states["sending"] == 0:
                time.sleep(0.05)
                continue
            for child in soak.pool_children(procs[0]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            kills += 1
            time.sleep(0.6)
        assert kills >= 1
        states = run.wait_final(ids, 120)
        assert set(states.values()) == {"sent"}, Counter(states.values())
        assert _copies(run) == Counter(numbers)  # 0 lost, 0 duplicated
        assert procs[0].alive()


def test_a_one_time_code_overtakes_a_draining_campaign(stack: Any) -> None:
    """With lanes on, a campaign's chunks wait in the ``bulk`` lane (one entry each) and a
    ``high`` code enqueued while it drains passes every chunk still waiting there."""
    with soak.Run(stack, "campaign-otp") as run:
        numbers = [n for block in (9, 10, 11) for n in _numbers(block, 2000)]
        ids = run.producer.send_many("sms", [_sms(n, "Soldes") for n in numbers])
        chunks = len(numbers) // 500
        assert _in_lanes(run) == chunks  # one lane entry per chunk, none published yet
        run.start_workers(1, 2)
        deadline = time.monotonic() + 120
        while not run.admin.messages("smspartner") and time.monotonic() < deadline:
            time.sleep(0.05)
        sent_before = sum(_copies(run).values())
        assert 0 < sent_before < len(numbers)  # the campaign is draining
        code = "+33699990101"
        otp = run.producer.enqueue("sms", _sms(code, "Code 4821", priority="high")).id
        states = run.wait_final([*ids, otp], 300)
        assert set(states.values()) == {"sent"}, Counter(states.values())
        assert _copies(run) == Counter([*numbers, code])  # each once
        order = sorted(run.admin.messages("smspartner"), key=lambda m: m["seq"])
        at = next(i for i, m in enumerate(order) if code in m["recipients"])
        ahead = sum(len(m["recipients"]) for m in order[:at])
        after = sum(len(m["recipients"]) for m in order[at + 1 :])
        # What the code waited behind: the chunks already published (the worker's 2 pool
        # processes and a broker buffer of 2), at most 5 chunks past those already sent.
        # One FIFO line would have put it behind the whole campaign (after == 0).
        assert ahead - sent_before <= 5 * 500, (sent_before, ahead, after)
        assert after >= 2 * 500, (sent_before, ahead, after)
