"""Scheduling per chunk (``send_at``, quiet hours): a campaign's chunk is cut by due time at
enqueue, held on the ledger's schedule as a whole, and published again as one chunk task by the
schedule mover; one held message can still be cancelled on its own."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from worker.campaign import CHUNK_FIELD, Validated, new_record, plan_chunks
from worker.config import Settings
from worker.delivery import Done
from worker.delivery.batch import BatchEntry, process_batch
from worker.producer import Producer
from worker.providers import parse_message
from worker.providers.partner import next_marketing_slot
from worker.runtime import Runtime
from worker.scheduling.enqueue import campaign_due
from worker.scheduling.mover import move_due
from worker.stores.ledger.memory import MemoryLedger
from worker.tasknames import SEND_CHUNK_TASK

from .driver_support import mock_client
from .test_scheduling import Published


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _sms(i: int, **extra: Any) -> dict[str, Any]:
    return {"provider": "smspartner", "to": [f"+3361200{i:04d}"], "text": f"Code {i}", **extra}


def test_chunks_are_cut_where_the_due_time_changes() -> None:
    a, b = time.time() + 600, time.time() + 1200
    whens = [a, a, a, b, b, a]
    models = [
        Validated.of(i, parse_message("sms", _sms(i, send_at=iso(w))), due=w)
        for i, w in enumerate(whens)
    ]
    chunks = list(plan_chunks("sms", models))
    assert [[v.index for v in c] for c in chunks] == [[0, 1, 2], [3, 4], [5]]
    # One due time for all: the provider's batch size still cuts (500 for SMS Partner).
    same = [
        Validated.of(i, parse_message("sms", _sms(i, send_at=iso(a))), due=a) for i in range(1203)
    ]
    sizes = [len(c) for c in plan_chunks("sms", same)]
    assert sizes == [500, 500, 203]


def test_a_campaign_message_is_due_at_its_send_at_or_the_next_quiet_hours_opening() -> None:
    now = time.time()
    ahead = parse_message("sms", _sms(1, send_at=iso(now + 600)))
    assert campaign_due(ahead, now) == pytest.approx(now + 600, abs=1e-3)
    assert campaign_due(parse_message("sms", _sms(2)), now) is None  # no time: at once
    past = parse_message("sms", _sms(3, send_at=iso(now - 30)))
    assert campaign_due(past, now) is None
    # Quiet hours closed every day but one: due at that day's opening, in the sender's zone.
    today = datetime.fromtimestamp(now, UTC).weekday()
    names = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    closed = [d for i, d in enumerate(names) if i != (today + 1) % 7]
    quiet = json.dumps({"sms": {"window": "09:00-10:00", "tz": "UTC", "closed_days": closed}})
    due = campaign_due(parse_message("sms", _sms(5)), now, quiet_hours=quiet)
    tomorrow = datetime.fromtimestamp(now, UTC).date() + timedelta(days=1)
    opening = datetime(tomorrow.year, tomorrow.month, tomorrow.day, 9, tzinfo=UTC)
    assert due == opening.timestamp()
    # Quiet hours moving it beyond its deadline: not held (a worker expires it).
    late = parse_message("sms", _sms(4, deadline=iso(now + 600)))
    assert campaign_due(late, now, quiet_hours=quiet) is None


def test_a_scheduled_campaign_is_held_per_chunk_and_published_as_chunks_when_due() -> None:
    app, ledger = Published(), MemoryLedger()
    producer = Producer(app=app, ledger=ledger, lanes=False)  # type: ignore[arg-type]
    at = time.time() + 600
    ids = producer.send_many("sms", [_sms(i, send_at=iso(at)) for i in range(7)])
    assert app.tasks == []  # nothing published before its time
    for delivery_id in ids:
        record = ledger.get(delivery_id)
        assert record is not None and record.state == "scheduled"
        assert record.fields[CHUNK_FIELD] == "500"
        assert app.stored[delivery_id]["status"] == "SCHEDULED"
    assert ledger.schedule_size() == 7
    assert move_due(app, ledger, at - 1) == 0  # type: ignore[arg-type]
    assert producer.cancel(ids[3]).answer == "cancelled"  # one of the held chunk
    assert move_due(app, ledger, at + 0.01) == 6  # type: ignore[arg-type]
    ((name, args, options),) = app.tasks  # one chunk task, not six single sends
    assert name == SEND_CHUNK_TASK and options["task_id"] not in ids
    assert options["argsrepr"] == "({'channel': 'sms', 'messages': 6},)"  # no content
    payload = args[0]
    assert payload["channel"] == "sms"
    # Every held message but the cancelled one, each with its own message (schedule order).
    by_id = {item["id"]: item["message"]["to"] for item in payload["items"]}
    assert by_id == {ids[i]: [f"+3361200{i:04d}"] for i in range(7) if i != 3}


def test_quiet_hours_hold_a_campaign_and_a_later_send_at_makes_another_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = datetime.now(UTC)
    closed = [
        d
        for i, d in enumerate(("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
        if i == now.weekday()
    ]
    quiet = {"sms": {"window": "00:00-23:59", "tz": "UTC", "closed_days": closed}}
    settings = Settings(quiet_hours=json.dumps(quiet))
    monkeypatch.setattr("worker.producer.get_settings", lambda: settings)
    app, ledger = Published(), MemoryLedger()
    producer = Producer(app=app, ledger=ledger, lanes=False)  # type: ignore[arg-type]
    later = (now + timedelta(days=2)).replace(hour=12, minute=0, second=0, microsecond=0)
    messages = [_sms(0), _sms(1), _sms(2, send_at=later.isoformat())]
    ids = producer.send_many("sms", messages)
    assert app.tasks == []  # closed today: nothing leaves
    due = {i: ledger.get(i).fields["scheduled_for"] for i in ids}  # type: ignore[union-attr]
    tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    assert float(due[ids[0]]) == float(due[ids[1]]) == tomorrow.timestamp()
    assert float(due[ids[2]]) == later.timestamp()
    assert move_due(app, ledger, tomorrow.timestamp() + 1) == 2  # type: ignore[arg-type]
    ((name, args, _),) = app.tasks
    assert name == SEND_CHUNK_TASK
    assert sorted(item["id"] for item in args[0]["items"]) == sorted(ids[:2])


def test_a_chunk_refused_for_the_legal_window_waits_and_leaves_together_again() -> None:
    """SMS Partner refuses marketing SMS outside its window (docs/providers/smspartner.md §1.3
    codes 22/23): every message of the chunk waits for the same next slot, and the mover
    publishes them as one chunk task again."""
    refusals: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        refusals.append(request.url.path)
        return httpx.Response(200, json={"success": False, "code": 22, "message": "heure"})

    settings = Settings(
        smspartner_api_key="sms-secret-key", smspartner_base_url="http://p.test/sms/v1"
    )
    rt = Runtime.in_memory(settings, client=mock_client(handler))
    try:
        entries = []
        for i in range(3):
            message = _sms(i)
            model = parse_message("sms", message)
            body = model.model_dump(mode="json", by_alias=True, exclude_none=True)
            (record,) = [new_record("sms", f"d{i}", model, body, "", chunk=500)]
            rt.ledger.create_many([record])
            entries.append(BatchEntry("sms", message, f"d{i}", "tasks.send_sms"))
        outcomes = process_batch(entries, rt)
        assert [o.result.status for o in outcomes if isinstance(o, Done)] == ["scheduled"] * 3
        slot = next_marketing_slot(time.time(), 22)
        for i in range(3):
            record = rt.ledger.get(f"d{i}")
            assert record is not None and record.state == "scheduled"
            assert float(record.fields["scheduled_for"]) == slot
        app = Published()
        assert move_due(app, rt.ledger, slot - 1) == 0  # type: ignore[arg-type]
        assert move_due(app, rt.ledger, slot + 1) == 3  # type: ignore[arg-type]
        ((name, args, _),) = app.tasks
        assert name == SEND_CHUNK_TASK
        assert sorted(item["id"] for item in args[0]["items"]) == ["d0", "d1", "d2"]
    finally:
        rt.close()


def test_a_chunk_message_the_provider_could_schedule_waits_in_our_schedule() -> None:
    """By name (``tasks.send_many``), a worker holds a chunk's messages itself: handed to SMS
    Partner with its schedule fields, each would be its own request, out of its chunk."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"success": True, "code": 200, "message_id": 1})

    settings = Settings(
        smspartner_api_key="sms-secret-key", smspartner_base_url="http://p.test/sms/v1"
    )
    mark = datetime.now(UTC) + timedelta(minutes=20)
    mark = mark.replace(second=0, microsecond=0) - timedelta(minutes=mark.minute % 5)
    rt = Runtime.in_memory(settings, client=mock_client(handler))
    try:
        entries = []
        for i in range(2):
            message = _sms(i, send_at=mark.isoformat())
            model = parse_message("sms", message)
            body = model.model_dump(mode="json", by_alias=True, exclude_none=True)
            rt.ledger.create_many([new_record("sms", f"n{i}", model, body, "", chunk=500)])
            entries.append(BatchEntry("sms", message, f"n{i}", "tasks.send_sms"))
        outcomes = process_batch(entries, rt)
        assert [o.result.status for o in outcomes if isinstance(o, Done)] == ["scheduled"] * 2
        assert seen == []  # nothing handed to the provider
        for i in range(2):
            record = rt.ledger.get(f"n{i}")
            assert record is not None and record.state == "scheduled"
            assert "provider_scheduled" not in record.fields
            assert float(record.fields["scheduled_for"]) == mark.timestamp()
        assert rt.ledger.schedule_size() == 2
    finally:
        rt.close()
